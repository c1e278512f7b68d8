"""The leakage check's engines: finding copies of one cell within and across image sets.

- duplicates.py  hashes (8 dihedral orientations), blocked exact nearest search, cross-class
                 nulls and calibrated thresholds, `Matches` for one comparison
- neighbors.py   nearest-neighbour search: exact below a size, a FAISS index above it
- pairing.py     one comparison, image by image: thresholds tightened against the null, each
                 image's nearest reference, its near-copy, the comparison's summary
- set_level.py   one comparison as a whole: the share of copies too altered to match one by one
- accuracy.py    what copies do to accuracy: with/without a copy, share of a gap explained

The registered check (`audit.checks.leakage`) runs these per pair of sets and turns their
numbers into a status, findings and a summary.
"""
