"""audit.prediction: every image file opened once, its size on disk read in that same open."""

from __future__ import annotations

from collections import Counter

import keras
import numpy as np
import pytest
from PIL import Image

from audit.imaging import source_sizes
from audit.prediction import SafetyRules, predict_rows
from model.loaded import ContractOptions, from_keras_model


def _tiny_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="logits")(x))


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    # A JPEG much larger than the input: under `crop` it is decoded at reduced scale (draft),
    # which changes the size Pillow reports; the size on disk must still be the header's.
    Image.fromarray(rng.integers(0, 256, (400, 300, 3), dtype=np.uint8)).save(
        tmp_path / "big.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "cell.png")
    Image.fromarray(np.full((3, 3, 3), 200, np.uint8)).save(tmp_path / "tiny.png")
    Image.fromarray(rng.integers(0, 256, (33, 70), dtype=np.uint8)).save(tmp_path / "gray.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    return sorted(str(p) for p in tmp_path.iterdir())


@pytest.mark.parametrize("resize", ["crop", "stretch", "pad"])
def test_each_file_is_opened_once_and_sizes_are_the_headers(resize, tmp_path, monkeypatch):
    paths = _folder(tmp_path)
    readable = [p for p in paths if not p.endswith("broken.png")]
    expected = np.stack(source_sizes(readable), axis=1)
    loaded = from_keras_model(_tiny_model(), ContractOptions(classes=("a", "b"),
                                                             preprocess="none", resize=resize))
    opened: Counter = Counter()
    real_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened[str(fp)] += 1
        return real_open(fp, *args, **kwargs)

    seen = []
    real_flags = SafetyRules.flags

    def recording_flags(self, images, sizes, embeddings, *, input_size):
        seen.append(np.stack(sizes, axis=1))
        return real_flags(self, images, sizes, embeddings, input_size=input_size)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(SafetyRules, "flags", recording_flags)
    rows = list(predict_rows(loaded, paths, batch_size=3))
    assert opened == Counter(paths)  # once each, the unreadable one included
    np.testing.assert_array_equal(np.concatenate(seen), expected)
    assert expected[[p.endswith("big.jpg") for p in readable]].tolist() == [[300, 400]]
    by_name = {row["path"].rsplit("/", 1)[-1]: row for row in rows}
    assert by_name["broken.png"]["status"].startswith("unreadable")
    assert "far smaller than the model input" in by_name["tiny.png"]["refer_reason"]
    assert "far smaller" not in by_name["big.jpg"]["refer_reason"]
