"""The leakage check's engines: finding copies of one cell within and across image sets.

- duplicates.py  hashes (8 dihedral orientations), file digests, blocked exact nearest
                 search, near-duplicate clusters, `Matches` for one comparison
- nulls.py       what unrelated images look like (nearest of another class) and the
                 thresholds that allow; the class-matched null of the set level
- neighbors.py   nearest-neighbour search: exact below a size, a FAISS index above it
- pairing.py     one comparison, image by image: thresholds tightened against the null, each
                 image's nearest reference, its near-copy, the comparison's summary
- set_level.py   one comparison as a whole: the share of copies too altered to match one by one
- accuracy.py    what copies do to accuracy: with/without a copy, share of a gap explained

The registered check (`audit.checks.leakage`) runs these per pair of sets and turns their
numbers into a status, findings and a summary.
"""
