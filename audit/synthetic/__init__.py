"""Procedural Wright/Giemsa-style blood-smear crops, so demos and tests need no downloaded data.

Each image is one white cell, centred with a little jitter, on a pale pink background of red cells
and platelets. The classes differ the way they do under the microscope (nucleus shape, cytoplasm
colour, granules, cell size), so a classifier has real morphology to learn and an attribution
method has a real cell to focus on. A `SiteDomain` describes one lab's look; two domains with a
known difference give a controlled distribution shift.

Image `i` of a run with seed `s` is drawn from `np.random.default_rng([s, i])`, so an image does not
depend on how many others are generated or in which order.

- domain.py  `SiteDomain`: how one lab's images look (stain, focus, noise, cell size, case mix),
             the reference and shifted sites, and the five classes
- shapes.py  signed-distance geometry: discs, segments, ellipses and each class's nucleus
- cell.py    drawing one crop: background, red cells, platelets, the white cell and its mask
- sites.py   many crops: `generate` in memory, `write_site` as a class-per-folder dataset
"""

from audit.synthetic.cell import render_cell
from audit.synthetic.domain import CLASSES, REFERENCE_SITE, SHIFTED_SITE, SiteDomain
from audit.synthetic.sites import generate, write_site

__all__ = [
    "CLASSES", "SiteDomain", "REFERENCE_SITE", "SHIFTED_SITE",
    "render_cell", "generate", "write_site",
]
