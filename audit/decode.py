"""Decoding one image file: open it, refuse it from its header when oversized, convert to RGB
and resize it the model's way, or say in one line why it cannot be read.

`load_image` is the one decoding step shared by training, audit, explanations and
prediction; `check_file` is the full decode the dataset scan runs on every file.
"""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from audit.errors import InputError

__all__ = ["RESIZE_MODES", "MAX_IMAGE_PIXELS", "load_image", "load_image_with_size",
           "tf_bilinear", "check_file", "unreadable_reason", "oversize_reason"]

RESIZE_MODES = ("crop", "stretch", "pad")
# Images over this many pixels are refused from their header, before decoding: far larger than
# any microscope field, and a decompression bomb (a small file that decodes to gigabytes) is
# stopped before it takes the memory. A setting: CELLAUDIT_MAX_IMAGE_PIXELS.
MAX_IMAGE_PIXELS = int(float(os.environ.get("CELLAUDIT_MAX_IMAGE_PIXELS", 100e6)))
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def load_image(path: str | os.PathLike, size: int, *, resize: str) -> np.ndarray:
    """`load_image_with_size` without the size on disk."""
    return load_image_with_size(path, size, resize=resize)[0]


def load_image_with_size(path: str | os.PathLike, size: int, *, resize: str
                         ) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode one image to a (size, size, 3) uint8 RGB array, resized the model's way.

    The one decoding step shared by training, audit, explanations and prediction: convert to
    RGB (grayscale is replicated; transparency is composited onto white, the colour of an
    empty slide; 16-bit is scaled, not clipped), then bring it to the model's input size as
    its input contract says (`model.contract`):

        crop     centre square crop, then Pillow's antialiased bilinear resize (CellAudit's
                 own models)
        stretch  the whole image resized to size x size (aspect ratio lost), exactly as Keras'
                 `image_dataset_from_directory` does by default: TensorFlow's bilinear filter
                 (half-pixel centres, no antialiasing) on the fully decoded image
        pad      resized to fit inside size x size with that filter, then padded with black,
                 as `tf.image.resize_with_pad` (Keras' `pad_to_aspect_ratio=True`)

    Keras' loaders keep float pixels; here they are rounded to uint8 (at most half a grey
    level). Also returns the file's (width, height) as stored, read from its header in the
    same open before any reduced-scale decoding (what the dataset scan records as
    `Dataset.sizes`). Raises `InputError` naming the file when it cannot be decoded.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, received {resize!r}")
    try:
        with Image.open(path) as im:
            stored = im.size
            too_large = oversize_reason(*stored)
            if too_large:
                raise InputError(f"cannot read image '{path}': {too_large}")
            if resize == "crop":
                im.draft("RGB", (size, size))  # JPEG: decode at reduced scale when much larger
            image = _to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read image '{path}': {unreadable_reason(path, exc)}") from exc
    width, height = image.size
    if resize == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        if side != size:
            image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(image, dtype=np.uint8), stored
    pixels = np.asarray(image, dtype=np.float32)
    if resize == "stretch":
        return _to_uint8(tf_bilinear(pixels, size, size)), stored
    # pad: tf.image.resize_with_pad's arithmetic (floor sizes and offsets)
    ratio = max(width / size, height / size)
    inner_h, inner_w = max(1, int(height / ratio)), max(1, int(width / ratio))
    canvas = np.zeros((size, size, 3), np.float32)
    top, left = (size - inner_h) // 2, (size - inner_w) // 2
    canvas[top:top + inner_h, left:left + inner_w] = tf_bilinear(pixels, inner_h, inner_w)
    return _to_uint8(canvas), stored


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TensorFlow's bilinear sampling along one axis (half-pixel centres, no antialiasing)."""
    coord = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    low = np.floor(coord)
    frac = (coord - low).astype(np.float32)
    lower = np.clip(low, 0, n_in - 1).astype(np.int64)
    upper = np.clip(np.ceil(coord), 0, n_in - 1).astype(np.int64)
    return lower, upper, frac


def tf_bilinear(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """`tf.image.resize(pixels, (height, width), "bilinear")` in NumPy (float32)."""
    if pixels.shape[:2] == (height, width):
        return pixels.astype(np.float32)
    top, bottom, fy = _bilinear_axis(pixels.shape[0], height)
    left, right, fx = _bilinear_axis(pixels.shape[1], width)
    rows = pixels[top] * (1 - fy)[:, None, None] + pixels[bottom] * fy[:, None, None]
    return rows[:, left] * (1 - fx)[None, :, None] + rows[:, right] * fx[None, :, None]


def _to_rgb(im: Image.Image) -> Image.Image:
    im.load()
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grayscale TIFF/PNG: scale, don't clip
        arr = np.asarray(im, dtype=np.float64)
        arr = 255.0 * arr / max(float(arr.max()), 1.0)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def unreadable_reason(path: str | os.PathLike, exc: BaseException) -> str:
    if isinstance(exc, Image.DecompressionBombError):  # Pillow's own check, at twice our limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)) / 1e6:g} megapixels" if found else "too many pixels"
        return (f"{pixels} is over the limit of {MAX_IMAGE_PIXELS / 1e6:g} megapixels, far "
                "larger than a microscope field (set CELLAUDIT_MAX_IMAGE_PIXELS to raise it)")
    try:
        n_bytes = os.path.getsize(path)
    except OSError:
        return f"cannot open ({exc.__class__.__name__}: {exc})"
    if n_bytes == 0:
        return "empty file (received 0 bytes)"
    if isinstance(exc, UnidentifiedImageError):
        return f"not a JPEG/PNG/BMP/TIFF image ({n_bytes} bytes)"
    message = str(exc) or exc.__class__.__name__
    if "truncated" in message.lower():
        return f"truncated image ({n_bytes} bytes)"
    return f"{message} ({n_bytes} bytes)"


def oversize_reason(width: int, height: int) -> str | None:
    if width * height > MAX_IMAGE_PIXELS:
        return (f"{width} x {height} pixels is over the limit of {MAX_IMAGE_PIXELS / 1e6:g} "
                "megapixels, far larger than a microscope field (set CELLAUDIT_MAX_IMAGE_PIXELS "
                "to raise it)")
    return None


def check_file(path: str) -> tuple[str | None, tuple[int, int] | None]:
    """Fully decode a file to find corrupt or truncated images: (reason or None, (w, h))."""
    try:
        with Image.open(path) as im:
            size = im.size
            too_large = oversize_reason(*size)  # from the header: refused before any decoding
            if too_large:
                return too_large, size
            im.draft("RGB", (64, 64))  # full entropy decode, reduced output: catches truncation
            im.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is unusable
        return unreadable_reason(path, exc), None
    return None, size
