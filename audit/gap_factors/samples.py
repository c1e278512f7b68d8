"""What the gap factors measure on a seeded sample of one set: sharpness, the files' pixel size
and JPEG quality, and the sample itself (`SetSample`: images at the model's size, cell masks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from audit.cell_mask import white_cell_mask

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# IJG's standard luminance quantisation table (quality 50), natural order.
_IJG_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
                      14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
                      18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
                      49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])



# ---- measurements -------------------------------------------------------------------------------

def sharpness(images: np.ndarray) -> np.ndarray:
    """Per image: `audit.imaging.image_properties`'s sharpness (variance of the 4-neighbour
    Laplacian of luminance over the variance of luminance, + (1/255)^2) measured at half
    resolution (2x2 means), where sensor noise weighs much less than edges: at full resolution
    the Laplacian of a noisy, blurred crop is mostly noise, and blurring a clean crop to match
    it would undershoot the real blur (on `audit.synthetic` sites, a 1.5 px blur is matched
    by sigma 1.46 at half resolution against 0.96 at full)."""
    return luminance_sharpness(images.astype(np.float32) @ (LUMA / 255.0))


def luminance_sharpness(lum: np.ndarray) -> np.ndarray:
    n, h, w = lum.shape
    if min(h, w) >= 16:
        lum = lum[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    lap = ndimage.correlate1d(lum, [1.0, -2.0, 1.0], axis=1, mode="reflect")
    lap += ndimage.correlate1d(lum, [1.0, -2.0, 1.0], axis=2, mode="reflect")
    lum_var = lum.reshape(n, -1).astype(np.float64).var(axis=1)
    return lap.reshape(n, -1).astype(np.float64).var(axis=1) / (lum_var + (1.0 / 255.0) ** 2)


def estimate_jpeg_quality(path: str) -> int:
    """IJG quality (1-100) of a JPEG from its luminance quantisation table; 100 for other
    formats (lossless) and for files that cannot be read."""
    try:
        with Image.open(path) as im:
            tables = getattr(im, "quantization", None) if im.format == "JPEG" else None
    except OSError:
        return 100
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return 100
    scale = 100.0 * float(np.mean(np.asarray(tables[0], float) / _IJG_LUMA))
    quality = (200.0 - scale) / 2.0 if scale <= 100 else 5000.0 / scale
    return int(np.clip(round(quality), 1, 100))


def native_side(path: str) -> int:
    """The side of the centre square `audit.data.load_image` crops from a file (0 if
    unreadable)."""
    try:
        with Image.open(path) as im:
            return int(min(im.size))
    except OSError:
        return 0


@dataclass(frozen=True, eq=False)
class SetSample:
    """A seeded sample of one set at the model's input size: images, their cell masks and what
    the files say about acquisition (native crop side, JPEG quality; empty when unknown)."""

    images: np.ndarray
    masks: np.ndarray | None   # None: not segmented in its own colours (see `from_images`)
    native_sides: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    jpeg_qualities: np.ndarray = field(default_factory=lambda: np.zeros(0, int))

    @classmethod
    def from_images(cls, images: np.ndarray, *, paths: Sequence[str] = (),
                    masks: np.ndarray | None = None, segment: bool = True) -> SetSample:
        """`masks`: the images' white-cell masks when already computed (the pixel store);
        `segment=False` leaves them None, for a sample whose cells are only ever segmented
        after its colours are matched to the other set's (`fitting.fit_factors`)."""
        if masks is None and segment:
            masks = white_cell_mask(images)
        return cls(images, masks,
                   np.array([native_side(p) for p in paths], int),
                   np.array([estimate_jpeg_quality(p) for p in paths], int))

    @property
    def size(self) -> int:
        return int(self.images.shape[1])

