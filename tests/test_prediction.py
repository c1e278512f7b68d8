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


# ---- images per model call ([audit] forward_batch) ---------------------------------------------

def test_forward_batch_rule_holds_about_2_18_pixels_and_is_capped():
    from audit.inference import resolve_forward_batch

    picked = {size: resolve_forward_batch(0, size, 64) for size in (32, 64, 96, 224, 448, 2048)}
    assert picked[32] == picked[64] == 64          # small inputs: the whole batch
    assert picked[96] < 64 and picked[224] < picked[96]
    for size in (96, 224, 448):                    # within a factor 2 of 2^18 pixels per call
        assert 2 ** 17 <= picked[size] * size ** 2 <= 2 ** 19
    assert picked[2048] == 1                       # never zero
    assert resolve_forward_batch(0, 224, 3) == 3   # batch_size bounds a call's memory
    assert resolve_forward_batch(7, 224, 64) == 7  # an explicit setting is taken as is
    assert resolve_forward_batch(100, 224, 64) == 64


def test_predictor_calls_the_model_in_forward_batch_chunks():
    from audit.inference import Predictor

    model = from_keras_model(_tiny_model(), ContractOptions(classes=("a", "b"), preprocess="unit"))
    images = np.random.default_rng(1).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    whole = Predictor(model, batch_size=64, forward_batch=64)
    chunked = Predictor(model, batch_size=64, forward_batch=3)
    calls = []
    run = chunked._run
    chunked._run = lambda x: calls.append(int(x.shape[0])) or run(x)
    logits, embeddings = chunked.outputs(images)
    assert calls == [3, 3, 1]
    assert chunked.n_images == 7 and logits.shape == (7, 2) and embeddings.shape[0] == 7
    np.testing.assert_allclose(logits, whole.outputs(images)[0], rtol=0, atol=1e-5)
