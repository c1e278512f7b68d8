"""explain_audit end to end on real tiny images: strict JSON, npz artifacts, determinism."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from conftest import make_context

from audit.errors import UsageError
from audit.explain.runner import explain_audit

CHEAP = ["explain.shap_max_evals=30", "explain.lime_num_samples=20", "explain.lime_segments=8",
         "explain.faithfulness_steps=4", "explain.sanity_max_images=2", "explain.n_boot=20",
         "explain.most_confident_errors=1", "explain.artifact_size=24",
         "explain.stability_corruptions=['gaussian_noise']", "explain.batch_size=16"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from audit.checks.base import DatasetView
    from audit.data import load_dataset
    from audit.inference import Predictor, compute_outputs
    from audit.synthetic import SHIFTED_SITE, write_site
    from model.build import build_classifier

    root = tmp_path_factory.mktemp("sites")
    classes = ("lymphocyte", "neutrophil")
    write_site(root / "ref", n_images=10, size=32, seed=0, classes=classes, site_name="ref")
    write_site(root / "shift", n_images=8, size=32, seed=1, classes=classes,
               domain=SHIFTED_SITE, site_name="shift")
    model = build_classifier(2, input_size=32, alpha=0.35, weights=None)
    predictor = Predictor(model, batch_size=16)
    views = []
    for name, role in (("ref", "heldout"), ("shift", "shifted")):
        dataset = load_dataset(root / name, name=name, class_names=classes)
        outputs = compute_outputs(dataset, predictor=predictor, cache_dir=None)
        views.append(DatasetView(name=name, role=role, dataset=dataset, outputs=outputs))
    return views, predictor


def _run(setup, tmp_path, overrides=()):
    views, predictor = setup
    ctx = make_context(views, tmp_path=tmp_path, predictor=predictor, image_size=32,
                       overrides=[*CHEAP, *overrides])
    return explain_audit(ctx), ctx


def _without_timing(result: dict) -> dict:
    result = copy.deepcopy(result)
    result.pop("timing")
    for method in result["methods"].values():
        method.pop("timing", None)
    return result


def test_explain_audit_writes_strict_json_and_artifacts(setup, tmp_path):
    result, ctx = _run(setup, tmp_path)
    text = json.dumps(result, allow_nan=False)
    assert list(result["methods"]) == ["gradcam", "shap", "lime"]
    assert set(result["datasets"]) == {"ref", "shift"}
    for method in result["methods"].values():
        assert method["timing"]["images"] > 0 and method["timing"]["seconds"] >= 0
        assert isinstance(method["flags"], list)
        assert set(method["flags"]) <= set(result["flag_meanings"])
    assert result["methods"]["shap"]["timing"]["forward_passes"] == \
        30 * result["methods"]["shap"]["timing"]["images"]
    assert result["methods"]["gradcam"]["timing"]["gradient_passes"] > 0
    for name, entry in result["datasets"].items():
        n = entry["n_images"]
        assert n == len(entry["images"]) > 0
        with np.load(tmp_path / entry["artifact"]) as npz:
            assert npz["images"].shape == (n, 24, 24, 3) and npz["images"].dtype == np.uint8
            assert npz["masks"].shape == (n, 24, 24)
            for method in result["methods"]:
                assert npz[f"maps_{method}"].shape == (n, 24, 24)
                assert npz[f"maps_{method}"].dtype == np.float16
            np.testing.assert_array_equal(npz["targets"], [im["target"] for im in entry["images"]])
            assert list(npz["paths"]) == [im["path"] for im in entry["images"]]
        view = ctx.views[name]
        for image in entry["images"]:
            assert image["target"] == view.predictions[image["index"]]
            assert image["correct"] == (image["label"] == image["target"])
        for method, scores in entry["methods"].items():
            assert len(scores["faithfulness"]["deletion"]) == n
            assert len(scores["cell_focus"]["per_image"]) == n
            assert scores["sanity"]["n"] == min(n, 2) == len(scores["sanity"]["per_image"])
            if method == "gradcam":
                assert set(scores["stability"]["per_corruption"]) == {"gaussian_noise"}
            else:
                assert scores["stability"] is None
        assert set(entry["random"]) == {"faithfulness", "cell_focus"}
    assert all(isinstance(line, str) for line in result["summary"])
    assert "NaN" not in text


def test_same_seed_same_explanations(setup, tmp_path):
    # LIME: seeded sampling, plus the seeded randomised model of the sanity check
    first, _ = _run(setup, tmp_path / "a", ["explain.methods=['lime']"])
    second, _ = _run(setup, tmp_path / "b", ["explain.methods=['lime']"])
    assert first["datasets"]["ref"]["methods"]["lime"]["sanity"]["n"] > 0
    assert _without_timing(first) == _without_timing(second)


def test_a_broken_method_is_reported_and_the_others_still_run(setup, tmp_path, monkeypatch):
    from audit.explain.lime_segments import Lime

    def broken(*args, **kwargs):
        raise RuntimeError("segmenter unavailable")
    monkeypatch.setattr(Lime, "from_config", classmethod(broken))
    result, _ = _run(setup, tmp_path, ["explain.methods=['gradcam', 'lime']",
                                       "explain.sanity=false", "explain.stability=false"])
    assert "segmenter unavailable" in result["methods"]["lime"]["error"]
    for entry in result["datasets"].values():
        assert "error" in entry["methods"]["lime"]
        assert entry["methods"]["gradcam"]["sanity"] is None
        assert entry["methods"]["gradcam"]["stability"] is None
    json.dumps(result, allow_nan=False)


def test_without_a_model_or_with_an_unknown_method(setup, tmp_path):
    views, _ = setup
    ctx = make_context(views, tmp_path=tmp_path, predictor=None)
    assert explain_audit(ctx)["skipped"] == "no model to explain"
    with pytest.raises(UsageError,
                       match=r"explain.methods: expected .*received \['gradcam', 'occlusion'\]"):
        _run(setup, tmp_path, ["explain.methods=['gradcam', 'occlusion']"])
    with pytest.raises(UsageError, match=r"explain.stability_corruptions: expected .*received \['snow'\]"):
        _run(setup, tmp_path, ["explain.stability_corruptions=['snow']"])
    with pytest.raises(UsageError, match=r"explain.faithfulness_baseline: expected one of .*'zeros'"):
        _run(setup, tmp_path, ["explain.faithfulness_baseline=zeros"])
