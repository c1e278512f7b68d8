"""The run's pixel store: each image decoded once, the model's way; masks computed once."""

from __future__ import annotations

import numpy as np
from PIL import Image

from audit.cell_mask import white_cell_mask
from audit.data import Dataset, iter_batches, read_images
from audit.pixels import PixelStore


def _files(tmp_path, n=6, side=20):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = tmp_path / f"im_{i}.png"
        Image.fromarray(rng.integers(0, 256, (side, side + 4, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_images_are_decoded_once_and_match_the_decoder(tmp_path):
    paths = _files(tmp_path)
    store = PixelStore(16, "crop")
    first = store.images(paths[:4])
    again = store.images([paths[3], paths[0], paths[5], paths[5]])
    assert store.decoded == 5 and store.requested == 8
    expected = read_images(paths, 16, resize="crop")
    assert np.array_equal(first, expected[:4])
    assert np.array_equal(again, expected[[3, 0, 5, 5]])


def test_masks_are_computed_once_from_the_stored_pixels(tmp_path):
    paths = _files(tmp_path)
    store = PixelStore(16, "pad")
    masks = store.masks(paths[:3])
    store.masks(paths[1:4])
    assert store.masked == 4
    assert np.array_equal(masks, white_cell_mask(read_images(paths[:3], 16, resize="pad")))
    assert store.masks([]).shape == (0, 16, 16)


def test_over_budget_the_oldest_images_are_dropped_and_decoded_again(tmp_path):
    paths = _files(tmp_path)
    one_image_mb = 16 * 16 * 3 / 2 ** 20
    store = PixelStore(16, "crop", budget_mb=2.5 * one_image_mb)
    store.images(paths[:3])           # the first is dropped to stay within 2.5 images
    assert store.summary()["held"] == 2
    out = store.images(paths[:1])
    assert store.decoded == 4
    assert np.array_equal(out, read_images(paths[:1], 16, resize="crop"))


def test_batches_follow_iter_batches(tmp_path):
    paths = _files(tmp_path, n=5)
    dataset = Dataset("toy", str(tmp_path), tuple(paths), np.zeros(5, np.int64), ("a",))
    store = PixelStore(12, "stretch")
    ours = list(store.batches(dataset, batch_size=2))
    theirs = list(iter_batches(dataset, image_size=12, resize="stretch", batch_size=2))
    assert len(ours) == len(theirs) == 3
    for (a, ia), (b, ib) in zip(ours, theirs, strict=True):
        assert np.array_equal(a, b) and np.array_equal(ia, ib)
