"""The CLI: `audit run` and `audit predict` end to end, and bad input as one line with exit 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from audit.audit_json import SCHEMA_VERSION
from audit.cli import main


def test_run_writes_strict_json_with_every_check(audit_out):
    data = json.loads((audit_out / "audit.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert set(data["datasets"]) == {"train", "heldout", "site_b"}
    for name in ("performance", "calibration", "errors", "leakage", "shift", "robustness",
                 "selective", "safety", "label_issues"):
        assert data["checks"][name]["status"] in ("PASS", "WARN", "FAIL", "SKIP"), name
    for info in data["datasets"].values():
        assert (audit_out / info["predictions"]).is_file()
        assert len(info["fingerprint"]) == 64


def test_audit_json_records_the_images_per_model_call(audit_out):
    from audit.inference import resolve_forward_batch

    data = json.loads((audit_out / "audit.json").read_text())
    assert data["config"]["audit"]["forward_batch"] == 0
    assert data["model"]["forward_batch"] == resolve_forward_batch(0, data["model"]["input_size"],
                                                                  data["config"]["audit"]["batch_size"])


def test_same_inputs_same_audit_json(audit_out, tiny_model, synthetic_sites, tmp_path):
    second = tmp_path / "again"
    main(["run", "--model", str(tiny_model), "--data", f"train={synthetic_sites['train']}",
          "--data", f"heldout={synthetic_sites['heldout']}",
          "--data", f"shifted:site_b={synthetic_sites['site_b']}", "--out", str(second),
          "--no-explain", "--no-report", "--set", "checks.robustness.max_images=16",
          "--set", 'audit.cache_dir=""'])
    first, again = (json.loads((d / "audit.json").read_text()) for d in (audit_out, second))
    for data in (first, again):
        data.pop("timings")
        for check in data["checks"].values():
            check.pop("seconds")
    assert first == again


def test_second_run_uses_the_cache(tiny_model, synthetic_sites, tmp_path):
    args = ["run", "--model", str(tiny_model), "--data", f"heldout={synthetic_sites['heldout']}",
            "--no-explain", "--no-report", "--checks", "performance",
            "--set", f'audit.cache_dir="{tmp_path / "cache"}"']
    main([*args, "--out", str(tmp_path / "a")])
    main([*args, "--out", str(tmp_path / "b")])
    timings = [json.loads((tmp_path / d / "audit.json").read_text())["timings"] for d in "ab"]
    assert timings[0]["cache_hit.heldout"] == 0.0 and timings[1]["cache_hit.heldout"] == 1.0


@pytest.mark.parametrize("extra,message", [
    (["--data", "heldout=/does/not/exist"], "does not exist"),
    (["--data", "validation=/tmp"], "unknown role 'validation'"),
    (["--data", "shifted=/tmp"], "needs a name"),
    (["--set", "checks.calibration.ece_wran=0.1"], "unknown key 'ece_wran'"),
    (["--set", "checks.calibration.ece_warn=high"], "expected float"),
    # renamed in schema 2.0: the old section is refused naming the new one, never ignored
    (["--set", "checks.attribution.max_images=3"], "use [checks.gap_factors] instead"),
    (["--checks", "performance,attribution"], "now called 'gap_factors'"),
])
def test_run_bad_input_is_one_line_exit_2(tiny_model, synthetic_sites, tmp_path, capsys, extra,
                                          message):
    args = ["run", "--model", str(tiny_model), "--out", str(tmp_path / "o"), *extra]
    if not any(a.startswith("heldout=") for a in extra):
        args += ["--data", f"heldout={synthetic_sites['heldout']}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_run_class_mismatch_lists_classes(tiny_model, tmp_path, capsys):
    from PIL import Image

    (tmp_path / "set" / "platelet").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "set" / "platelet" / "1.png")
    assert main(["run", "--model", str(tiny_model), "--data", f"heldout={tmp_path / 'set'}",
                 "--out", str(tmp_path / "o")]) == 2
    assert "does not know: platelet" in capsys.readouterr().err


def test_run_refuses_to_replace_foreign_folder(tiny_model, synthetic_sites, tmp_path, capsys):
    (tmp_path / "precious.txt").write_text("keep me")
    assert main(["run", "--model", str(tiny_model), "--data",
                 f"heldout={synthetic_sites['heldout']}", "--out", str(tmp_path)]) == 2
    assert "refusing" in capsys.readouterr().err
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_predict_flags_referrals_and_lists_unreadable(audit_out, tiny_model, synthetic_sites,
                                                      tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    out = tmp_path / "pred.csv"
    assert main(["predict", str(synthetic_sites["site_b"] / "monocyte"), str(bad), "--model",
                 str(tiny_model), "--audit", str(audit_out / "audit.json"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert rows[-1]["status"].startswith("unreadable") and rows[-1]["path"] == str(bad)
    ok = [r for r in rows if r["status"] == "ok"]
    assert ok and all(r["refer_to_human"] in ("yes", "no", "") for r in ok)
    threshold = json.loads((audit_out / "audit.json").read_text())["checks"]["selective"][
        "metrics"]["threshold"]["value"]
    if threshold is not None:
        assert all((float(r["probability"]) < threshold) == (r["refer_to_human"] == "yes")
                   for r in ok)


def test_predict_rejects_an_audit_of_another_model(audit_out, tiny_model, synthetic_sites,
                                                   tmp_path, capsys):
    data = json.loads((audit_out / "audit.json").read_text())
    data["model"]["sha256"] = "0" * 64
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    assert main(["predict", str(synthetic_sites["heldout"]), "--model", str(tiny_model), "--audit", str(other),
                 "--out", str(tmp_path / "p.csv")]) == 2
    assert "another model" in capsys.readouterr().err


def test_predict_refers_blank_and_tiny_images_with_the_reason(audit_out, tiny_model,
                                                              synthetic_sites, tmp_path):
    """An all-black square and a 3 x 3 image were answered with a confident class and no flag."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "black.png")
    Image.fromarray(np.full((3, 3, 3), 200, np.uint8)).save(folder / "tiny.png")
    cells = sorted((synthetic_sites["heldout"] / "neutrophil").glob("*.png"))[:3]
    out = tmp_path / "pred.csv"
    for with_audit in (True, False):
        extra = ["--audit", str(audit_out / "audit.json")] if with_audit else []
        assert main(["predict", str(folder), *map(str, cells), "--model", str(tiny_model),
                     "--out", str(out), *extra]) == 0
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(out.open())}
        assert rows["black.png"]["refer_to_human"] == "yes"
        assert "blank or near-constant image" in rows["black.png"]["refer_reason"]
        assert rows["tiny.png"]["refer_to_human"] == "yes"
        assert "far smaller than the model input" in rows["tiny.png"]["refer_reason"]
        for cell in cells:
            row = rows[cell.name]
            reasons = row["refer_reason"]
            assert "blank" not in reasons and "far smaller" not in reasons
            assert (row["refer_to_human"] == "yes") == bool(reasons) if with_audit else \
                row["refer_to_human"] == ""


def test_a_run_decodes_each_image_once(audit_out):
    """Robustness and gap factors take their pixels from the run's store: the reference images
    robustness corrupts are also in gap factors' reference subsample, requested twice and
    decoded once (audit.json's timings count both)."""
    timings = json.loads((audit_out / "audit.json").read_text())["timings"]
    with np.load(audit_out / "artifacts" / "robustness_predictions.npz") as robustness, \
            np.load(audit_out / "artifacts" / "gap_factors_site_b.npz") as gap_factors:
        shared = set(robustness["indices"].tolist()) & set(
            gap_factors["reproduce_indices"].tolist())
    assert shared
    assert timings["pixels.decoded"] <= timings["pixels.requested"] - len(shared)
    assert timings["pixels.masks"] <= timings["pixels.decoded"]
