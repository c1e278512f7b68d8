"""`audit gate` and `audit baseline accept` through the CLI: exit codes, messages, files."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from test_gate import dataset_entry, edit, labels_for, standard_sets, with_errors, write_audit

from audit.cli import main
from audit.commands.baseline import artifacts_folder


@pytest.fixture
def audits(tmp_path):
    """A baseline, an equal audit and a regressed one (heldout accuracy 0.90 -> 0.80)."""
    return {"base": write_audit(tmp_path / "base", standard_sets(10)),
            "same": write_audit(tmp_path / "same", standard_sets(10)),
            "worse": write_audit(tmp_path / "worse", standard_sets(20))}


# ---- audit gate ----

def test_gate_passes_with_exit_0_and_writes_summaries_beside_the_current_audit(audits, capsys):
    code = main(["gate", "--baseline", str(audits["base"]), "--current", str(audits["same"])])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["rule", "dataset", "metric"]
    assert "gate PASS: 4 of 4 rules passed" in out
    folder = audits["same"].parent
    assert "CellAudit gate ✅ PASS" in (folder / "gate-summary.md").read_text()
    assert ET.parse(folder / "gate-junit.xml").getroot().get("tests") == "4"


def test_gate_regression_exits_1_and_names_the_rule(audits, tmp_path, capsys):
    md, junit = tmp_path / "out" / "comment.md", tmp_path / "out" / "junit.xml"
    code = main(["gate", "--baseline", str(audits["base"]), "--current", str(audits["worse"]),
                 "--markdown", str(md), "--junit", str(junit)])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL: accuracy on heldout fell from 0.900 to 0.800" in out
    assert "gate FAIL: 2 of 4 rules failed" in out
    assert "**abs-drop** `heldout` `accuracy`" in md.read_text()
    failed = [c.get("name") for c in ET.parse(junit).getroot().iter("testcase")
              if c.find("failure") is not None]
    assert failed == ["abs-drop accuracy", "abs-drop balanced_accuracy"]


def test_gate_with_policy_file(audits, tmp_path):
    policy = tmp_path / "gate.toml"
    policy.write_text("[datasets.heldout]\nmetrics = { accuracy = { max_abs_drop = 0.15 }, "
                      "balanced_accuracy = false }\n")
    args = ["gate", "--baseline", str(audits["base"]), "--current", str(audits["worse"])]
    assert main([*args, "--policy", str(policy)]) == 0


def test_gate_not_comparable_exits_2_with_one_line(audits, capsys):
    edit(audits["same"], lambda d: d["datasets"]["heldout"].update(fingerprint="other"))
    args = ["gate", "--baseline", str(audits["base"]), "--current", str(audits["same"])]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the audits are not comparable: dataset 'heldout' has other images")
    assert "--allow-dataset-change" in err and err.count("\n") == 1
    assert main([*args, "--allow-dataset-change"]) == 0


@pytest.mark.parametrize("args, words", [
    (["gate", "--current", "x.json"], "--baseline"),
    (["gate", "--baseline", "nope.json", "--current", "nope.json"], "does not exist"),
])
def test_gate_usage_errors_exit_2(args, words, capsys):
    assert main(args) == 2
    assert words in capsys.readouterr().err


def test_gate_bad_policy_exits_2(audits, tmp_path, capsys):
    policy = tmp_path / "gate.toml"
    policy.write_text("[defaults]\nece_maximum = 0.1\n")
    code = main(["gate", "--baseline", str(audits["base"]), "--current", str(audits["same"]),
                 "--policy", str(policy)])
    assert code == 2 and "unknown key(s) ['ece_maximum']" in capsys.readouterr().err


def test_gate_missing_metric_exits_1_not_a_crash(audits, capsys):
    edit(audits["same"], lambda d: d["checks"].pop("performance"))
    code = main(["gate", "--baseline", str(audits["base"]), "--current", str(audits["same"])])
    assert code == 1
    assert "the current audit did not run the performance check" in capsys.readouterr().out


# ---- audit baseline accept ----

def test_accept_copies_audit_and_predictions_and_rewrites_paths(audits, tmp_path, capsys):
    target = tmp_path / "baseline" / "audit.json"
    assert main(["baseline", "accept", str(audits["base"]), str(target)]) == 0
    out = capsys.readouterr().out
    assert f"accepted {audits['base']} as baseline {target}" in out
    assert "copied 2 prediction file(s)" in out
    data = json.loads(target.read_text())
    assert data["datasets"]["heldout"]["predictions"] == "audit.artifacts/predictions_heldout.npz"
    assert data["baseline"]["forced"] is False
    folder = artifacts_folder(target)
    assert sorted(p.name for p in folder.iterdir()) == ["predictions_heldout.npz",
                                                        "predictions_site_b.npz"]
    # the accepted baseline serves a paired significance test
    policy = tmp_path / "gate.toml"
    policy.write_text("[significance]\nenabled = true\nn_boot = 200\n")
    code = main(["gate", "--baseline", str(target), "--current", str(audits["worse"]),
                 "--policy", str(policy)])
    assert code == 1 and "paired on 100 images" in capsys.readouterr().out


def test_accept_refuses_a_regression_unless_forced(audits, tmp_path, capsys):
    target = tmp_path / "baseline.json"
    assert main(["baseline", "accept", str(audits["base"]), str(target)]) == 0
    before = target.read_text()
    capsys.readouterr()
    assert main(["baseline", "accept", str(audits["worse"]), str(target)]) == 1
    out = capsys.readouterr().out
    assert "refused:" in out and "--force" in out and "gate FAIL" in out
    assert target.read_text() == before
    assert main(["baseline", "accept", str(audits["worse"]), str(target), "--force"]) == 0
    assert json.loads(target.read_text())["baseline"]["forced"] is True
    assert "accepting a regression (--force)" in capsys.readouterr().out


def test_accept_an_improvement_replaces_the_artifacts(audits, tmp_path):
    target = tmp_path / "baseline.json"
    assert main(["baseline", "accept", str(audits["worse"]), str(target)]) == 0
    better = write_audit(tmp_path / "better", {"heldout": standard_sets(0)["heldout"]})
    assert main(["baseline", "accept", str(better), str(target), "--allow-dataset-change"]) == 0
    assert [p.name for p in artifacts_folder(target).iterdir()] == ["predictions_heldout.npz"]
    with np.load(artifacts_folder(target) / "predictions_heldout.npz") as npz:
        assert (npz["logits"].argmax(1) == npz["labels"]).all()


def test_accept_refuses_an_error_status_unless_forced(audits, tmp_path, capsys):
    edit(audits["base"], lambda d: d.update(status="ERROR"))
    target = tmp_path / "baseline.json"
    assert main(["baseline", "accept", str(audits["base"]), str(target)]) == 2
    assert "status ERROR" in capsys.readouterr().err and not target.exists()
    assert main(["baseline", "accept", str(audits["base"]), str(target), "--force"]) == 0


def test_accept_refuses_an_incomparable_audit_unless_forced(audits, tmp_path, capsys):
    target = tmp_path / "baseline.json"
    assert main(["baseline", "accept", str(audits["base"]), str(target)]) == 0
    y = labels_for(50)
    other = write_audit(tmp_path / "other", {"heldout": dataset_entry("heldout", y, y,
                                                                      fingerprint="new")})
    assert main(["baseline", "accept", str(other), str(target)]) == 2
    assert "cannot compare with the existing baseline" in capsys.readouterr().err
    assert main(["baseline", "accept", str(other), str(target), "--force"]) == 0


def test_accept_without_predictions_still_works(tmp_path, capsys):
    y = labels_for(30)
    audit = write_audit(tmp_path / "a", {"heldout": dataset_entry("heldout", y, with_errors(y, 3))})
    (tmp_path / "a" / "artifacts" / "predictions_heldout.npz").unlink()
    target = tmp_path / "b" / "baseline.json"
    assert main(["baseline", "accept", str(audit), str(target)]) == 0
    assert "no predictions for ['heldout']" in capsys.readouterr().out
    assert "predictions" not in json.loads(target.read_text())["datasets"]["heldout"]


@pytest.mark.parametrize("second, words", [("same", "already the baseline"),
                                           ("txt", "must end in .json")])
def test_accept_usage_errors(audits, tmp_path, capsys, second, words):
    target = audits["base"] if second == "same" else tmp_path / "baseline.txt"
    assert main(["baseline", "accept", str(audits["base"]), str(target)]) == 2
    assert words in capsys.readouterr().err


def test_baseline_needs_an_action(capsys):
    assert main(["baseline"]) == 2
    assert "required" in capsys.readouterr().err
