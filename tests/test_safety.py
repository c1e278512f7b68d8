"""Safety flags: usability on images, the safety and label-issues checks on tiny fixtures, and on
real PBC cells with ImageNet MobileNetV2 features (blank, noise, tiny and non-cell images flagged
>= 95%, reference cells at about the false-alarm rate)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from conftest import data_root, make_context, make_view
from PIL import Image

from audit.checks.label_issues import LabelIssuesCheck
from audit.checks.safety import SafetyCheck
from audit.imaging import image_properties, image_usability, source_sizes
from audit.safety import OOD_BIT, REASONS, OODModel, usability_flags
from audit.synthetic import SHIFTED_SITE, generate, render_cell


def _properties(images: np.ndarray, sizes=None) -> dict:
    props = {**image_properties(images, cell_size=False), **image_usability(images)}
    if sizes is not None:
        props["source_width"], props["source_height"] = sizes
    return props


def _background_only(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Synthetic smear crops with the white cell painted over in background colour."""
    out = []
    for i in range(n):
        image, mask = render_cell("neutrophil", size=size, rng=np.random.default_rng([seed, i]))
        image = image.copy()
        image[mask] = np.median(image[~mask], axis=0)
        out.append(image)
    return np.stack(out)


def _bad_images(n: int, size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    padded = np.zeros((n, size, size, 3), np.uint8)
    cells = generate(n, size=size // 2, seed=5)[0]
    padded[:, :size // 2, :size // 2] = cells                  # a small crop on black padding
    return {
        "black": np.zeros((n, size, size, 3), np.uint8),
        "white": np.full((n, size, size, 3), 255, np.uint8),
        "uniform colour": np.broadcast_to(rng.integers(0, 256, (n, 1, 1, 3)),
                                          (n, size, size, 3)).astype(np.uint8),
        "uniform noise": rng.integers(0, 256, (n, size, size, 3)).astype(np.uint8),
        "gaussian noise": np.clip(rng.normal(128, 40, (n, size, size, 3)), 0, 255).astype(np.uint8),
        "black padding": padded,
    }


def test_usability_flags_blank_noise_and_padding_but_not_cells():
    rng = np.random.default_rng(0)
    for name, images in _bad_images(40, 64, rng).items():
        flags = usability_flags(_properties(images), input_size=64)
        assert np.mean(flags != 0) >= 0.95, name
    for domain in (None, SHIFTED_SITE):
        cells = generate(200, size=64, seed=1, **({} if domain is None else {"domain": domain}))[0]
        flags = usability_flags(_properties(cells), input_size=64)
        assert np.mean(flags != 0) <= 0.02


def test_tiny_files_are_flagged_from_their_size_on_disk(tmp_path):
    cell = generate(1, size=64, seed=2)[0][0]
    paths = []
    for side in (3, 12, 64, 224):
        path = tmp_path / f"cell_{side}.png"
        Image.fromarray(cell).resize((side, side)).save(path)
        paths.append(str(path))
    widths, heights = source_sizes(paths + [str(tmp_path / "missing.png")])
    assert widths.tolist() == [3, 12, 64, 224, -1]
    images = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224)))
                       for p in paths])
    flags = usability_flags(_properties(images, (widths[:4], heights[:4])), input_size=224)
    assert [bool(f & 2) for f in flags] == [True, True, False, False]   # < 56 px: too small


def _views_with_embeddings(rng):
    """Reference and a shifted set whose far-off images (in embedding) are the ones it gets wrong,
    plus two blank images in the shifted set."""
    n, dim = 400, 16
    labels = rng.integers(0, 2, n)
    ref_emb = rng.normal(0, 1, (n, dim)) + labels[:, None] * 2.0
    logits = np.zeros((n, 2))
    logits[np.arange(n), labels] = 3.0
    sh_labels = rng.integers(0, 2, n)
    far = np.arange(n) < n // 4
    sh_emb = rng.normal(0, 1, (n, dim)) + sh_labels[:, None] * 2.0 + far[:, None] * 6.0
    sh_pred = np.where(far & (rng.random(n) < 0.7), 1 - sh_labels, sh_labels)
    sh_logits = np.zeros((n, 2))
    sh_logits[np.arange(n), sh_pred] = 3.0
    ok = {"contrast": np.full(n, 0.2), "dark_fraction": np.zeros(n),
          "nucleus_contrast": np.full(n, 0.8), "nucleus_concentration": np.ones(n),
          "source_width": np.full(n, 360), "source_height": np.full(n, 360)}
    shifted_props = {k: v.copy() for k, v in ok.items()}
    shifted_props["contrast"][-2:] = 0.0
    ref = make_view("heldout", "heldout", labels, logits, embeddings=ref_emb, properties=ok)
    shifted = make_view("site_b", "shifted", sh_labels, sh_logits, embeddings=sh_emb,
                        properties=shifted_props)
    return ref, shifted, far


def test_safety_check_flags_far_images_and_reports_accuracy_flagged_vs_not(tmp_path):
    ref, shifted, far = _views_with_embeddings(np.random.default_rng(4))
    ctx = make_context([ref, shifted], tmp_path=tmp_path)
    result = SafetyCheck().run(ctx)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    m = data["metrics"]
    r, s = m["datasets"]["heldout"], m["datasets"]["site_b"]
    assert r["ood_basis"] == "out_of_fold" and 0.02 <= r["n_unlike_reference"] / r["n"] <= 0.09
    assert s["n_unlike_reference"] >= 0.95 * far.sum()
    assert s["by_reason"][REASONS[0]] == 2 and s["n_unusable"] == 2
    assert s["accuracy_flagged"]["high"] < s["accuracy_unflagged"]["low"]
    kinds = {f["kind"]: f for f in data["findings"]}
    assert "flags_useful" in kinds and "unusable_images" in kinds
    assert f"n={s['accuracy_flagged']['n']}" in kinds["flags_useful"]["text"]
    assert result.status.value == "WARN"           # unusable images in an evaluated set
    # What ships to `audit predict`: the same scores and flags from the stored arrays.
    with np.load(tmp_path / "artifacts" / "safety_model.npz") as npz:
        model = OODModel.from_arrays({k: npz[k] for k in npz.files})
    with np.load(tmp_path / "artifacts" / "safety_flags.npz") as npz:
        flags = npz["site_b__flags"]
    assert model.threshold == pytest.approx(m["ood"]["threshold"])
    np.testing.assert_array_equal(model.flags(shifted.outputs.embeddings),
                                  flags & OOD_BIT != 0)


def test_label_issues_check_finds_flips_and_words_shifted_sets_carefully(tmp_path):
    rng = np.random.default_rng(8)
    n, k = 500, 3
    truth = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), truth] += 4.0
    flipped = rng.choice(n, 50, replace=False)
    given = truth.copy()
    given[flipped] = (truth[flipped] + 1) % k
    names = ("a", "b", "c")
    ref = make_view("heldout", "heldout", given, logits, class_names=names)
    shifted = make_view("site_b", "shifted", given, logits, class_names=names)
    result = LabelIssuesCheck().run(make_context([ref, shifted], tmp_path=tmp_path))
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    r = data["metrics"]["datasets"]["heldout"]
    assert r["n_issues"] >= 40 and r["accuracy_without"]["value"] > r["accuracy"]["value"]
    assert len(r["issues"]) == 24 and {"path", "given", "suggested"} <= set(r["issues"][0])
    assert result.status.value == "WARN"
    texts = {f["dataset"]: f["text"] for f in data["findings"]}
    assert "mixes shift with label noise" in texts["site_b"]
    assert "mixes shift" not in texts["heldout"]


@pytest.mark.realdata
@pytest.mark.slow
def test_real_cells_pass_and_blank_noise_tiny_and_non_cell_images_are_flagged(tmp_path):
    """PBC cells as the reference, ImageNet MobileNetV2 features as the embedding (96 px to
    keep it quick): >= 95% of bad inputs flagged, held-out PBC cells at about 5%."""
    import keras
    import skimage.data

    from audit.data import read_images
    from audit.safety import crossfit_ood
    from audit.stats import crossfit_folds

    size = 96
    backbone = keras.applications.MobileNetV2(include_top=False, weights=os.environ.get(
        "CELLAUDIT_WEIGHTS", str(data_root().parent / "weights" /
                                 "mobilenet_v2_1.0_no_top.weights.h5")),
        input_shape=(size, size, 3), pooling="avg")

    def embed(images):
        return backbone.predict(keras.applications.mobilenet_v2.preprocess_input(
            images.astype("float32")), batch_size=64, verbose=0)

    classes = sorted(p.name for p in (data_root() / "pbc").iterdir() if p.is_dir())
    paths, labels = [], []
    for c, name in enumerate(classes):
        files = sorted((data_root() / "pbc" / name).glob("*.jpg"))[:60]
        paths += [str(p) for p in files]
        labels += [c] * len(files)
    labels = np.array(labels)
    order = np.random.default_rng(0).permutation(len(paths))
    fit, held = order[:360], order[360:]
    cells = read_images([paths[i] for i in order], size, resize="crop")
    emb = embed(cells)
    model, _ = crossfit_ood(emb[:360], labels[fit], crossfit_folds(labels[fit], k=5, seed=0),
                            false_alarm=0.05, n_components=32)
    sizes = source_sizes([paths[i] for i in held])
    held_flags = usability_flags(_properties(cells[360:], sizes), input_size=224) | \
        model.flags(emb[360:]).astype(int) * OOD_BIT

    rng = np.random.default_rng(1)
    crops = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "grass", "brick", "camera",
                 "immunohistochemistry", "retina", "hubble_deep_field"):
        image = getattr(skimage.data, name)()
        image = np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]
        for _ in range(6):
            side = min(image.shape[:2]) // 3
            y, x = rng.integers(0, image.shape[0] - side), rng.integers(0, image.shape[1] - side)
            crops.append(np.asarray(Image.fromarray(image[y:y + side, x:x + side])
                                    .resize((size, size))))
    bad = {**_bad_images(30, size, rng), "synthetic background": _background_only(30, size),
           "non-blood crops": np.stack(crops)}
    rates = {}
    for name, images in bad.items():
        flags = usability_flags(_properties(images), input_size=size) | \
            model.flags(embed(images)).astype(int) * OOD_BIT
        rates[name] = float(np.mean(flags != 0))
    tiny = usability_flags({"source_width": np.full(10, 8), "source_height": np.full(10, 8)},
                           input_size=224)
    rates["8-px files"] = float(np.mean(tiny != 0))
    held_rate = float(np.mean(held_flags != 0))
    print(f"flagged: {rates}; held-out PBC cells: {held_rate:.3f}")
    assert all(rate >= 0.95 for rate in rates.values()), rates
    assert held_rate <= 0.10


def test_too_few_reference_images_give_an_infinite_threshold_that_round_trips():
    """With 6 images no score is the 95th percentile of 7: nothing can be called unlike them."""
    from audit.safety import crossfit_ood

    x = np.random.default_rng(0).normal(size=(6, 4))
    model, _ = crossfit_ood(x, np.array([0, 0, 0, 1, 1, 1]), None, false_alarm=0.05)
    again = OODModel.from_arrays(model.to_arrays())
    assert model.threshold == again.threshold == float("inf")
    assert not again.flags(x + 100.0).any()
