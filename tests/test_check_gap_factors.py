"""Gap-factors check: the Shapley game on hand-computed cases, the depth-first subset walk with a
fake model, and the synthetic proof with a small trained model: a site with one injected factor
gives that factor the largest share, a null site gives every factor almost nothing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
from conftest import make_context, make_view
from PIL import Image

from audit.checks.gap_factors import GapFactorsCheck
from audit.data import Dataset, load_dataset
from audit.gap_factors import Factor, FactorSet
from audit.gap_factors.shapley import (
    gap_factor_values,
    reweighted_accuracy,
    shapley_matrix,
    subset_label,
)
from audit.gap_factors.subsets import subset_predictions
from audit.pixels import PixelStore
from audit.results import Status

# ---- the game -----------------------------------------------------------------------------------


def test_shapley_matrix_on_known_games():
    two = shapley_matrix(2)
    assert two @ np.array([0.0, 1.0, 2.0, 3.0]) == pytest.approx([1.0, 2.0])  # additive
    assert two @ np.array([0.0, 0.0, 0.0, 1.0]) == pytest.approx([0.5, 0.5])  # interaction
    v = np.random.default_rng(0).normal(size=8)
    phi = shapley_matrix(3) @ v
    assert phi.sum() == pytest.approx(v[7] - v[0])  # efficiency
    # player 2 only matters together with player 0: v = 1 on {0, 2} and {0, 1, 2}
    game = np.array([0, 0, 0, 0, 0, 1, 0, 1], float)
    assert shapley_matrix(3) @ game == pytest.approx([0.5, 0.0, 0.5])


def test_reweighted_accuracy_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 2])
    correct = np.array([1, 0, 1, 1, 0, 1], bool)  # per class 1/2, 2/3, 1
    assert reweighted_accuracy(correct, labels, None, 3) == pytest.approx([4 / 6])
    weights = np.array([0.5, 0.25, 0.25])
    assert reweighted_accuracy(correct, labels, weights, 3) == pytest.approx([0.25 + 1 / 6 + 0.25])
    # a class absent from the set carries no weight: the others are renormalised
    assert reweighted_accuracy(correct[:5], labels[:5], weights, 3) == pytest.approx(
        [(0.5 * 0.5 + 0.25 * 2 / 3) / 0.75])


def test_gap_factor_values_with_priors_by_hand():
    ref_labels, sh_labels = np.array([0, 1, 1, 1]), np.array([0, 0, 0, 1])
    ref = np.array([[1, 1, 1, 0], [1, 0, 1, 0]], bool)  # rows: untransformed, after colour
    sh = np.array([[0, 0, 1, 1], [1, 0, 1, 1]], bool)
    out = gap_factor_values(ref, sh, ref_labels, sh_labels, n_classes=2, priors=True)
    assert out["gap"] == pytest.approx(0.25)
    # undo: accuracy 0.5, 0.75; reweighted to the reference's 1/4 : 3/4 -> 5/6, 11/12
    assert out["undo"] == pytest.approx([0, 0.25, 1 / 3, 5 / 12])
    # reproduce: 0.75, 0.5; reweighted to the shifted set's 3/4 : 1/4 -> 11/12, 5/6
    assert out["reproduce"] == pytest.approx([0, 0.25, -1 / 6, -1 / 12])
    phi = shapley_matrix(2) @ out["undo"]
    assert phi == pytest.approx([1 / 6, 1 / 4])  # colour, priors
    only_undo = gap_factor_values(ref[:1], sh, ref_labels, sh_labels, n_classes=2,
                                   priors=False, directions=("undo",))
    assert set(only_undo) == {"gap", "undo"} and only_undo["undo"] == pytest.approx([0, 0.25])
    assert subset_label(0, ["color", "priors"]) == "none"
    assert subset_label(3, ["color", "priors"]) == "color+priors"


# ---- the subset walk ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Add(Factor):
    name: ClassVar[str] = "color"
    amount: int = 0

    def apply(self, images, *, masks=None, seed=0):
        return images + np.uint8(self.amount)


@dataclass(frozen=True, eq=False)
class _AddSharp(_Add):
    name: ClassVar[str] = "sharpness"


@dataclass(frozen=True, eq=False)
class _Nothing(Factor):
    name: ClassVar[str] = "scale"

    @property
    def identity(self):
        return True

    def apply(self, images, *, masks=None, seed=0):
        return images.copy()


class _MeanPredictor:
    """Predicts class (mean pixel // 10) % 4: each added amount shifts the class."""

    def __init__(self):
        self.n_images = 0

    def outputs(self, images):
        self.n_images += len(images)
        classes = (images.reshape(len(images), -1).mean(axis=1) // 10).astype(int) % 4
        return np.eye(4)[classes], np.zeros((len(images), 2), np.float32)


def test_subset_walk_predicts_every_combination_once(tmp_path):
    values = [0, 10, 20, 30, 40]
    paths = []
    for i, v in enumerate(values):
        paths.append(tmp_path / f"a_{i}.png")
        Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(paths[-1])
    dataset = Dataset("toy", str(tmp_path), tuple(map(str, paths)), np.zeros(5, np.int64), ("a",))
    factors = FactorSet((_Nothing(), _Add(amount=10), _AddSharp(amount=20)))
    predictor = _MeanPredictor()
    base = np.array([9, 9, 9, 9, 9])
    out, n_forward = subset_predictions(dataset, factors, predictor, pixels=PixelStore(8, "crop"), batch_size=2,
                                        seed=0, base_predictions=base)
    assert n_forward == predictor.n_images == 3 * 5  # 4 distinct subsets, the base is cached
    expected = {0b000: base, 0b010: [1, 2, 3, 0, 1], 0b100: [2, 3, 0, 1, 2],
                0b110: [3, 0, 1, 2, 3]}
    for subset, want in expected.items():
        assert out[subset].tolist() == list(want)
        assert out[subset | 1].tolist() == list(want)  # the identity factor copies


# ---- the check ----------------------------------------------------------------------------------

def test_skips_without_shifted_set_or_model(tmp_path):
    ref = make_view("heldout", "heldout", [0, 1], [[2.0, 0.0], [0.0, 2.0]])
    shifted = make_view("site_b", "shifted", [0, 1], [[2.0, 0.0], [2.0, 0.0]])
    assert GapFactorsCheck().run(make_context([ref], tmp_path=tmp_path,
                                               predictor=object())).status == Status.SKIP
    assert GapFactorsCheck().run(make_context([ref, shifted],
                                               tmp_path=tmp_path)).status == Status.SKIP
    for bad in ('checks.gap_factors.factors=["hue"]', 'checks.gap_factors.directions=["up"]',
                'checks.gap_factors.color_method="histogram"', 'checks.gap_factors.factors=[]'):
        with pytest.raises(ValueError, match="checks.gap_factors"):   # refused on reading
            make_context([ref, shifted], tmp_path=tmp_path, predictor=object(), overrides=[bad])


CLASSES = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")


@pytest.fixture(scope="module")
def synthetic_audit(tmp_path_factory):
    """A small MobileNetV2 trained on the reference synthetic site, and six 64-px sites:
    heldout, a null site (new seed) and sites with colour, scale, blur, or scale and blur
    changed."""
    import keras

    from audit.checks.base import DatasetView
    from audit.inference import Predictor, compute_outputs
    from audit.synthetic import SiteDomain, generate, write_site
    from model.build import build_classifier
    from model.train import seed_everything

    # Deterministic ops, as `audit train` uses: otherwise the model depends on whether an
    # earlier test in the session switched them on (they cannot be switched off again).
    seed_everything(0)
    images, labels, _ = generate(800, size=64, seed=100)
    model = build_classifier(5, input_size=64, alpha=0.35, weights=None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=8, batch_size=32, verbose=0)
    predictor = Predictor(model, batch_size=64)
    colour = {"stain_hue_shift": -60.0, "stain_saturation": 1.4}
    sites = {"heldout": ({}, 11), "null": ({}, 13), "colour": (colour, 12),
             "scale": ({"cell_scale": 0.7}, 12), "blur": ({"blur_sigma": 1.5}, 12),
             "two": ({"cell_scale": 0.7, "blur_sigma": 1.0}, 12)}
    root = tmp_path_factory.mktemp("gap_factors_sites")
    views = []
    for name, (domain, seed) in sites.items():
        write_site(root / name, n_images=120, size=64, domain=SiteDomain(**domain), seed=seed,
                   site_name=name)
        dataset = load_dataset(root / name, name=name, class_names=CLASSES)
        outputs = compute_outputs(dataset, predictor=predictor, cache_dir=None)
        views.append(DatasetView(name, "heldout" if name == "heldout" else "shifted", dataset,
                                 outputs))
    out = tmp_path_factory.mktemp("gap_factors_out")
    ctx = make_context(views, tmp_path=out, predictor=predictor, image_size=64,
                       overrides=["checks.gap_factors.n_boot=200"])
    return GapFactorsCheck().run(ctx), views, predictor, out


def _points(result, site, direction):
    factors = result.metrics["datasets"][site]["directions"][direction]["factors"]
    return {name: f["points"]["value"] for name, f in factors.items()}


@pytest.mark.parametrize("site, factor", [("colour", "color"), ("scale", "scale"),
                                          ("blur", "sharpness")])
def test_one_injected_factor_gets_the_largest_share(synthetic_audit, site, factor):
    result = synthetic_audit[0]
    m = result.metrics["datasets"][site]
    assert m["gap_defined"] and m["gap"]["low"] > 0.05
    for direction in ("undo", "reproduce"):
        points = _points(result, site, direction)
        if site == "blur" and direction == "undo":  # a blurrier set is not sharpened by default
            assert m["directions"]["undo"]["fitted"]["sharpness"]["identity"]
            assert points["sharpness"] == pytest.approx(0.0, abs=1e-12)
            continue
        if site == "colour" and direction == "undo":
            # Known limit: Macenko normalisation of a 60-degree hue rotation back to the
            # reference recovers little for some models (this deterministic one: -0.4 points,
            # while making the reference look like the site costs 40); it must not hurt.
            assert points["color"] > -0.02
            continue
        assert max(points, key=points.get) == factor, (direction, points)
    assert m["combined"]["top"] == factor
    assert m["combined"]["factors"][factor]["share"]["value"] > 0.5
    finding = next(f for f in result.findings if f.dataset == site
                   and f.kind == f"gap_factors_{factor}")
    assert finding.gap_share > 0.5 and "points" in finding.text


def test_blurrier_set_is_sharpened_only_when_allowed(synthetic_audit, tmp_path):
    _, views, predictor, _ = synthetic_audit
    chosen = [v for v in views if v.name in ("heldout", "blur")]
    ctx = make_context(chosen, tmp_path=tmp_path, predictor=predictor, image_size=64, overrides=[
        'checks.gap_factors.factors=["sharpness"]', "checks.gap_factors.n_boot=100",
        "checks.gap_factors.allow_sharpen=true", 'checks.gap_factors.directions=["undo"]'])
    result = GapFactorsCheck().run(ctx)
    fitted = result.metrics["datasets"]["blur"]["directions"]["undo"]["fitted"]["sharpness"]
    assert fitted["mode"] == "sharpen" and not fitted["identity"]
    assert result.metrics["n_forward_passes"] == result.metrics["datasets"]["blur"]["n_shifted"]


def test_two_injected_factors_of_known_size(synthetic_audit):
    # Alone, cell scale 0.7 costs this model about three times what blur 1.0 costs.
    m = synthetic_audit[0].metrics["datasets"]["two"]
    points = _points(synthetic_audit[0], "two", "reproduce")
    ranked = sorted(points, key=lambda f: -points[f])
    assert ranked[:2] == ["scale", "sharpness"], points
    assert points["scale"] > 2 * points["sharpness"] > 0
    assert m["directions"]["reproduce"]["explained"]["value"] > 0.7
    shares = m["combined"]["factors"]
    assert sorted(shares, key=lambda f: -shares[f]["share"]["value"])[:2] == ["scale", "sharpness"]


def test_null_site_gets_almost_nothing(synthetic_audit):
    result = synthetic_audit[0]
    m = result.metrics["datasets"]["null"]
    assert abs(m["gap"]["value"]) < 0.05
    for direction in ("undo", "reproduce"):
        points = _points(result, "null", direction)
        assert max(abs(p) for p in points.values()) < 0.06, (direction, points)
        assert abs(m["directions"][direction]["v_all"]) < 0.08
    fitted = m["directions"]["undo"]["fitted"]
    assert fitted["scale"]["identity"] and fitted["sharpness"]["identity"]
    assert fitted["resolution"]["identity"]  # same pixel size and PNG on both sides


def test_metrics_artifacts_and_json(synthetic_audit):
    result, views, _, out = synthetic_audit
    metrics = result.metrics
    assert metrics["factors"] == ["scale", "background", "color", "sharpness", "resolution",
                                  "priors"]
    assert metrics["order"] == metrics["factors"][:5]
    m = metrics["datasets"]["scale"]
    undo = m["directions"]["undo"]
    assert len(undo["subsets"]) == 64 and undo["subsets"]["none"] == 0.0
    assert sum(f["points"]["value"] for f in undo["factors"].values()) == \
        pytest.approx(undo["v_all"])
    with np.load(out / m["predictions"]) as saved:
        assert saved["undo_predictions"].shape == (32, m["n_shifted"])
        assert saved["subsets"][0] == "none"
    with np.load(out / m["examples"]) as shown:
        assert set(shown.files) == set(m["example_keys"])
        assert shown["undo_before"].shape == (2, 64, 64, 3) and "reproduce_scale" in shown.files
    assert result.status in (Status.PASS, Status.WARN)
    json.dumps(result.to_dict(), allow_nan=False)


def test_deterministic_and_budgeted(synthetic_audit, tmp_path):
    _, views, predictor, _ = synthetic_audit
    chosen = [v for v in views if v.name in ("heldout", "colour")]
    overrides = ['checks.gap_factors.factors=["color", "priors"]', "checks.gap_factors.n_boot=100",
                 "checks.gap_factors.max_images=30", 'checks.gap_factors.directions=["undo"]']
    runs = []
    for sub in ("a", "b"):
        ctx = make_context(chosen, tmp_path=tmp_path / sub, predictor=predictor, image_size=64,
                           overrides=overrides)
        runs.append(GapFactorsCheck().run(ctx).to_dict())
        runs[-1].pop("seconds")
    assert runs[0] == runs[1]
    m = runs[0]["metrics"]
    assert m["n_forward_passes"] == 30 and set(m["datasets"]["colour"]["directions"]) == {"undo"}


def test_each_cell_mask_is_computed_once_and_the_shifted_set_only_after_colour_matching(
        synthetic_audit, tmp_path, monkeypatch):
    # The shifted set's cells are segmented in the reference's colours (fit_factors), so its
    # masks in its own colours are never asked of the store; the reference's come from the
    # store, each computed once whether the fit sample or the subset walk asks for it.
    _, views, predictor, _ = synthetic_audit
    chosen = [v for v in views if v.name in ("heldout", "scale")]
    ctx = make_context(chosen, tmp_path=tmp_path, predictor=predictor, image_size=64,
                       overrides=['checks.gap_factors.factors=["scale", "background"]',
                                  "checks.gap_factors.n_boot=100", "checks.gap_factors.max_images=40",
                                  "checks.gap_factors.fit_images=40"])
    asked: list[str] = []
    masks = ctx.pixels.masks
    monkeypatch.setattr(ctx.pixels, "masks", lambda paths: asked.extend(paths) or masks(paths))
    result = GapFactorsCheck().run(ctx)
    assert result.status in (Status.PASS, Status.WARN)
    shifted = set(chosen[1].dataset.paths)
    assert asked and not shifted & set(asked)
    assert ctx.pixels.masked == len(set(asked)) < len(asked)   # asked twice, computed once
