"""The gate's rules on hand-made audit pairs: every rule, its edge cases and its outputs.

`write_audit` builds a minimal audit.json (and predictions npz) from per-set labels and
predicted classes, with metrics computed by the performance check's own definitions.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from audit.checks.performance import confusion_counts, confusion_statistics
from audit.errors import InputError
from audit.gating.decision import ERROR, FAIL, PASS, SKIP, run_gate
from audit.gating.formats import format_junit, format_markdown, format_table
from audit.gating.policy import Policy, load_policy, parse_policy

CLASSES = ("a", "b", "c")


# ---- builders ----

def labels_for(n: int, classes=CLASSES) -> np.ndarray:
    return np.arange(n) % len(classes)


def with_errors(labels: np.ndarray, n_wrong: int, *, n_classes: int = 3, start: int = 0) -> np.ndarray:
    """Predictions equal to `labels` except `n_wrong` images (from `start`) moved to the next class."""
    preds = labels.copy()
    idx = np.arange(start, start + n_wrong)
    preds[idx] = (labels[idx] + 1) % n_classes
    return preds


def dataset_entry(role, labels, preds, *, classes=CLASSES, fingerprint=None, ece=0.05,
                  groups=None):
    return {"role": role, "labels": np.asarray(labels), "preds": np.asarray(preds),
            "classes": classes, "fingerprint": fingerprint, "ece": ece, "groups": groups}


def write_audit(folder: Path, sets: dict, *, classes=CLASSES, status="PASS", model="m1",
                paths: dict | None = None) -> Path:
    """audit.json + artifacts/predictions_<name>.npz in `folder`; returns the JSON path."""
    folder.mkdir(parents=True, exist_ok=True)
    datasets, performance, calibration = {}, {}, {}
    for name, s in sets.items():
        labels, preds = s["labels"], s["preds"]
        stats = confusion_statistics(confusion_counts(labels, preds, len(classes)))
        rel = paths[name] if paths and name in paths else np.array([f"{classes[y]}/{name}_{i}.png"
                                                                   for i, y in enumerate(labels)])
        logits = np.full((len(labels), len(classes)), -2.0)
        logits[np.arange(len(labels)), preds] = 2.0
        (folder / "artifacts").mkdir(exist_ok=True)
        extra = {} if s.get("groups") is None else {"groups": np.asarray(s["groups"], str)}
        np.savez_compressed(folder / "artifacts" / f"predictions_{name}.npz",
                            labels=labels, logits=logits, paths=rel, **extra)
        counts = np.bincount(labels, minlength=len(classes))
        datasets[name] = {"role": s["role"], "n_images": int(len(labels)),
                          "fingerprint": s["fingerprint"] or f"fp-{name}",
                          "class_counts": {c: int(k) for c, k in zip(classes, counts, strict=True)},
                          "predictions": f"artifacts/predictions_{name}.npz"}
        ci = lambda v: {"value": _num(v), "low": _num(v), "high": _num(v)}  # noqa: E731
        performance[name] = {
            **{k: ci(stats[k]) for k in ("accuracy", "balanced_accuracy", "macro_f1")},
            "per_class": {c: {"recall": ci(stats["recall"][i])} for i, c in enumerate(classes)}}
        calibration[name] = {"before": {"ece": s["ece"]}, "after": {"ece": s["ece"] / 2}}
    data = {
        "schema_version": "2.0", "status": status,
        "model": {"sha256": model * 8, "class_names": list(classes)},
        "datasets": datasets,
        "checks": {"performance": {"status": "PASS", "summary": "", "metrics": {"datasets": performance}},
                   "calibration": {"status": "PASS", "summary": "", "metrics": {"datasets": calibration}}},
    }
    path = folder / "audit.json"
    path.write_text(json.dumps(data, indent=1))  # NaN allowed: tests plant it on purpose
    return path


def _num(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def edit(path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def pair(tmp_path, base_sets, cur_sets, **kw):
    return (write_audit(tmp_path / "base", base_sets, **kw),
            write_audit(tmp_path / "cur", cur_sets, **kw))


def standard_sets(n_wrong_heldout=10, n_wrong_shifted=20, n=100, **kw):
    y = labels_for(n)
    return {"heldout": dataset_entry("heldout", y, with_errors(y, n_wrong_heldout), **kw),
            "site_b": dataset_entry("shifted", y, with_errors(y, n_wrong_shifted), **kw)}


def policy(**tables) -> Policy:
    return parse_policy(tables, source="test")


def by_name(report):
    return {(r.rule, r.dataset, r.metric): r for r in report.results}


# ---- policy ----

def test_default_policy_gates_accuracy_and_balanced_accuracy_of_evaluated_sets_only():
    p = load_policy(None)
    for role in ("heldout", "shifted"):
        rules = p.rules_for("x", role)
        assert set(rules.metrics) == {"accuracy", "balanced_accuracy"}
        assert rules.metrics["accuracy"].max_abs_drop == 0.01
        assert rules.class_recall_floor is None and rules.ece_max is None
    assert p.rules_for("train", "train").empty


def test_policy_layers_merge_key_by_key_and_false_switches_off():
    p = policy(defaults={"metrics": {"macro_f1": {"max_abs_drop": 0.02}}, "ece_max": 0.2},
               roles={"shifted": {"metrics": {"accuracy": {"max_rel_drop": 0.05}}},
                      "train": {"ece_max": False}},
               datasets={"heldout": {"metrics": {"balanced_accuracy": False,
                                                 "accuracy": {"max_abs_drop": 0.005}},
                                     "class_recall_floor": 0.8,
                                     "class_recall_floors": {"b": 0.6}, "ece_max": False}})
    held = p.rules_for("heldout", "heldout")
    assert set(held.metrics) == {"accuracy", "macro_f1"}
    assert held.metrics["accuracy"].max_abs_drop == 0.005
    assert held.recall_floor("a") == 0.8 and held.recall_floor("b") == 0.6
    assert held.ece_max is None
    shifted = p.rules_for("site_b", "shifted")
    assert shifted.metrics["accuracy"].max_abs_drop == 0.01  # built-in default kept
    assert shifted.metrics["accuracy"].max_rel_drop == 0.05
    assert shifted.ece_max == 0.2 and shifted.recall_floor("a") is None
    train = p.rules_for("train", "train")  # named by [roles.train]: defaults apply, ece off
    assert "accuracy" in train.metrics and train.ece_max is None


@pytest.mark.parametrize("tables, words", [
    ({"defualts": {}}, "unknown key"),
    ({"defaults": {"metrics": {"auc": {"max_abs_drop": 0.1}}}}, "auc"),
    ({"defaults": {"metrics": {"accuracy": {"max_drop": 0.1}}}}, "max_drop"),
    ({"defaults": {"metrics": {"accuracy": {"max_abs_drop": 1.5}}}}, "between 0 and 1"),
    ({"defaults": {"metrics": {"accuracy": {"max_abs_drop": True}}}}, "between 0 and 1"),
    ({"defaults": {"ece_max": "0.1"}}, "ece_max"),
    ({"defaults": {"ece_stage": "later"}}, "ece_stage"),
    ({"roles": {"validation": {}}}, "validation"),
    ({"datasets": {"heldout": {"class_recall_floor": -0.1}}}, "class_recall_floor"),
    ({"significance": {"enabled": "yes"}}, "enabled"),
    ({"significance": {"n_boot": 10}}, "n_boot"),
    ({"significance": {"level": 0.3}}, "level"),
])
def test_invalid_policy_is_an_input_error_naming_the_key(tables, words):
    with pytest.raises(InputError, match=words):
        parse_policy(tables, source="gate.toml")


def test_policy_file_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[defaults\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_policy(bad)


def test_example_policy_parses():
    path = Path(__file__).resolve().parents[1] / "examples" / "gate.toml"
    p = load_policy(path)
    assert p.rules_for("heldout", "heldout").class_recall_floor == 0.8


def test_policy_naming_an_unknown_dataset_or_class_is_an_input_error(tmp_path):
    base, cur = pair(tmp_path, standard_sets(), standard_sets())
    with pytest.raises(InputError, match="site_c"):
        run_gate(base, cur, policy=policy(datasets={"site_c": {"ece_max": 0.1}}))
    with pytest.raises(InputError, match="zebra"):
        run_gate(base, cur, policy=policy(defaults={"class_recall_floors": {"zebra": 0.5}}))


# ---- drop rules ----

def test_identical_audits_pass_every_rule(tmp_path):
    base, cur = pair(tmp_path, standard_sets(), standard_sets())
    report = run_gate(base, cur)
    assert [r.status for r in report.results] == [PASS] * 4
    assert report.exit_code == 0 and report.status == PASS
    assert {(r.dataset, r.metric) for r in report.results} == {
        (d, m) for d in ("heldout", "site_b") for m in ("accuracy", "balanced_accuracy")}


def test_abs_drop_of_exactly_the_limit_passes_and_more_fails(tmp_path):
    base, cur = pair(tmp_path, standard_sets(10), standard_sets(11))  # 0.90 -> 0.89
    report = run_gate(base, cur)
    acc = by_name(report)[("abs-drop", "heldout", "accuracy")]
    assert acc.status == PASS and acc.change == pytest.approx(-0.01)
    base, cur = pair(tmp_path / "2", standard_sets(10), standard_sets(12))  # 0.90 -> 0.88
    report = run_gate(base, cur)
    acc = by_name(report)[("abs-drop", "heldout", "accuracy")]
    assert acc.status == FAIL and report.exit_code == 1
    assert "fell from 0.900 to 0.880" in acc.message and "allowed 0.010" in acc.message
    assert by_name(report)[("abs-drop", "site_b", "accuracy")].status == PASS


def test_improvement_passes(tmp_path):
    base, cur = pair(tmp_path, standard_sets(30, 30), standard_sets(0, 0))
    report = run_gate(base, cur)
    assert report.exit_code == 0
    assert all("no drop" in r.message for r in report.results)


def test_rel_drop_is_relative_to_the_baseline_value(tmp_path):
    base, cur = pair(tmp_path, standard_sets(50), standard_sets(51))  # 0.50 -> 0.49: 2% relative
    tight = policy(defaults={"metrics": {"accuracy": {"max_abs_drop": False, "max_rel_drop": 0.015},
                                         "balanced_accuracy": False}})
    loose = policy(defaults={"metrics": {"accuracy": {"max_abs_drop": False, "max_rel_drop": 0.025},
                                         "balanced_accuracy": False}})
    failed = by_name(run_gate(base, cur, policy=tight))[("rel-drop", "heldout", "accuracy")]
    assert failed.status == FAIL and failed.limit == "rel drop <= 1.5%"
    assert "allowed 0.007" in failed.message  # 1.5% of 0.50
    assert run_gate(base, cur, policy=loose).exit_code == 0


def test_recall_drop_per_class(tmp_path):
    y = labels_for(90)
    base_sets = {"heldout": dataset_entry("heldout", y, y)}
    preds = y.copy()
    preds[np.flatnonzero(y == 2)[:3]] = 0  # class c loses 3 of 30: recall 1.0 -> 0.9
    cur_sets = {"heldout": dataset_entry("heldout", y, preds)}
    base, cur = pair(tmp_path, base_sets, cur_sets)
    p = policy(defaults={"metrics": {"accuracy": False, "balanced_accuracy": False},
                         "class_recall_max_drop": 0.05})
    report = run_gate(base, cur, policy=p)
    results = by_name(report)
    assert results[("recall-drop", "heldout", "recall[c]")].status == FAIL
    assert results[("recall-drop", "heldout", "recall[a]")].status == PASS
    assert len(report.results) == 3


# ---- floors and ceilings ----

def test_recall_floor_fails_below_passes_at_and_skips_an_absent_class(tmp_path):
    y = np.array([0] * 10 + [1] * 10)  # no image of class c
    preds = y.copy()
    preds[:3] = 1  # recall a = 0.7
    preds[10:12] = 0  # recall b = 0.8
    sets = {"heldout": dataset_entry("heldout", y, preds)}
    base, cur = pair(tmp_path, sets, sets)
    report = run_gate(base, cur, policy=policy(datasets={"heldout": {"class_recall_floor": 0.8}}))
    results = by_name(report)
    floor_a = results[("recall-floor", "heldout", "recall[a]")]
    assert floor_a.status == FAIL and "0.700, below the floor 0.800" in floor_a.message
    assert results[("recall-floor", "heldout", "recall[b]")].status == PASS
    skipped = results[("recall-floor", "heldout", "recall[c]")]
    assert skipped.status == SKIP and "no c images" in skipped.message
    assert report.exit_code == 1


def test_ece_ceiling_reads_the_chosen_stage(tmp_path):
    base, cur = pair(tmp_path, standard_sets(ece=0.12), standard_sets(ece=0.12))
    report = run_gate(base, cur, policy=policy(defaults={"ece_max": 0.1}))
    ece = by_name(report)[("ece-max", "heldout", "ece[before]")]
    assert ece.status == FAIL and "0.120, above the ceiling 0.100" in ece.message
    assert ece.baseline == 0.12  # for context; the ceiling reads the current audit only
    after = policy(defaults={"ece_max": 0.1, "ece_stage": "after"})  # after = 0.06 in the builder
    assert run_gate(base, cur, policy=after).exit_code == 0


# ---- missing, null and NaN numbers ----

def test_missing_metric_in_current_is_an_error_result_not_a_crash(tmp_path):
    base, cur = pair(tmp_path, standard_sets(), standard_sets())
    edit(cur, lambda d: d["checks"]["performance"]["metrics"]["datasets"]["heldout"].pop(
        "balanced_accuracy"))
    report = run_gate(base, cur)
    result = by_name(report)[("abs-drop", "heldout", "balanced_accuracy")]
    assert result.status == ERROR and report.exit_code == 1
    assert "current audit has no balanced_accuracy for heldout" in result.message


@pytest.mark.parametrize("value, words", [(float("nan"), "is nan"), (None, "undefined (null)"),
                                          ("high", "not a number")])
def test_nan_null_or_text_metric_fails_with_a_message(tmp_path, value, words):
    base, cur = pair(tmp_path, standard_sets(), standard_sets())
    edit(cur, lambda d: d["checks"]["performance"]["metrics"]["datasets"]["site_b"]["accuracy"]
         .update(value=value))
    result = by_name(run_gate(base, cur))[("abs-drop", "site_b", "accuracy")]
    assert result.status == ERROR and words in result.message and result.current is None


def test_nan_in_baseline_is_an_error_too(tmp_path):
    base, cur = pair(tmp_path, standard_sets(), standard_sets())
    edit(base, lambda d: d["checks"]["performance"]["metrics"]["datasets"]["heldout"].update(
        accuracy=float("nan")))
    result = by_name(run_gate(base, cur))[("abs-drop", "heldout", "accuracy")]
    assert result.status == ERROR and "baseline" in result.message


def test_check_missing_or_errored(tmp_path):
    base, cur = pair(tmp_path, standard_sets(), standard_sets())
    edit(cur, lambda d: d["checks"].pop("calibration"))
    report = run_gate(base, cur, policy=policy(defaults={"ece_max": 0.1}))
    assert "did not run the calibration check" in by_name(report)[
        ("ece-max", "heldout", "ece[before]")].message
    edit(cur, lambda d: d["checks"].update(performance={
        "status": "ERROR", "summary": "the check crashed", "metrics": {},
        "error": "ValueError: boom"}))
    report = run_gate(base, cur)
    assert all(r.status == ERROR for r in report.results)
    assert "performance check errored in the current audit (ValueError: boom)" in \
        report.results[0].message


# ---- comparability ----

def test_new_class_is_an_input_error_unless_allowed(tmp_path):
    y = labels_for(100)
    base = write_audit(tmp_path / "b", {"heldout": dataset_entry("heldout", y, y)})
    y4 = np.arange(100) % 4
    classes4 = (*CLASSES, "d")
    cur = write_audit(tmp_path / "c", {"heldout": dataset_entry(
        "heldout", y4, y4, classes=classes4, fingerprint="fp-heldout")}, classes=classes4)
    with pytest.raises(InputError, match=r"class lists differ \(added \['d'\].*allow-dataset-change"):
        run_gate(base, cur)
    p = policy(defaults={"class_recall_floor": 0.5, "class_recall_max_drop": 0.1})
    report = run_gate(base, cur, policy=p, allow_dataset_change=True)
    results = by_name(report)
    assert ("recall-floor", "heldout", "recall[d]") in results  # floors need no baseline
    assert ("recall-drop", "heldout", "recall[d]") not in results  # drops only on common classes
    assert ("recall-drop", "heldout", "recall[a]") in results
    assert any("class lists differ" in n for n in report.notes) and report.exit_code == 0


def test_class_order_change_is_only_a_note(tmp_path):
    y = labels_for(60)
    base = write_audit(tmp_path / "b", {"heldout": dataset_entry("heldout", y, y)})
    swapped = ("b", "a", "c")
    y2 = np.array([swapped.index(CLASSES[k]) for k in y])
    cur = write_audit(tmp_path / "c", {"heldout": dataset_entry("heldout", y2, y2, classes=swapped)},
                      classes=swapped)
    report = run_gate(base, cur, policy=policy(defaults={"class_recall_max_drop": 0.0}))
    assert report.exit_code == 0 and any("order" in n for n in report.notes)


def test_changed_fingerprint_is_an_input_error_unless_allowed(tmp_path):
    base, cur = pair(tmp_path, standard_sets(), standard_sets())
    edit(cur, lambda d: d["datasets"]["site_b"].update(fingerprint="other"))
    with pytest.raises(InputError, match="'site_b' has other images"):
        run_gate(base, cur)
    report = run_gate(base, cur, allow_dataset_change=True)
    assert report.exit_code == 0 and any("other images" in n for n in report.notes)


def test_role_change_is_an_input_error(tmp_path):
    base, cur = pair(tmp_path, standard_sets(), standard_sets())
    edit(cur, lambda d: d["datasets"]["site_b"].update(role="heldout"))
    with pytest.raises(InputError, match="changed role"):
        run_gate(base, cur)


def test_dataset_missing_from_current_is_an_input_error_unless_allowed(tmp_path):
    sets = standard_sets()
    base, cur = pair(tmp_path, sets, {"heldout": sets["heldout"]})
    with pytest.raises(InputError, match=r"baseline dataset\(s\) \['site_b'\] are not in the current"):
        run_gate(base, cur)
    report = run_gate(base, cur, allow_dataset_change=True)
    assert {r.dataset for r in report.results} == {"heldout"} and report.exit_code == 0


def test_new_dataset_gets_only_floors_and_ceilings(tmp_path):
    sets = standard_sets()
    base, cur = pair(tmp_path, {"heldout": sets["heldout"]}, sets)
    report = run_gate(base, cur, policy=policy(defaults={"ece_max": 0.1}))
    assert {r.rule for r in report.results if r.dataset == "site_b"} == {"ece-max"}
    assert any("new dataset 'site_b'" in n for n in report.notes)


def test_empty_dataset_is_an_input_error_even_when_changes_are_allowed(tmp_path):
    base, cur = pair(tmp_path, standard_sets(), standard_sets())
    edit(cur, lambda d: d["datasets"]["site_b"].update(n_images=0, class_counts={}))
    with pytest.raises(InputError, match="'site_b' in the current audit .* has 0 images"):
        run_gate(base, cur, allow_dataset_change=True)


@pytest.mark.parametrize("text, words", [("{", "not valid JSON"), ("[]", "not an audit"),
                                         ('{"schema_version": "9.0"}', "schema"),
                                         ('{"schema_version": "2.0", "model": {}}', "class_names")])
def test_unreadable_audit_is_an_input_error(tmp_path, text, words):
    base = write_audit(tmp_path / "b", standard_sets())
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(InputError, match=words):
        run_gate(base, bad)
    with pytest.raises(InputError, match="does not exist"):
        run_gate(base, tmp_path / "missing.json")


# ---- significance ----

SIGNIFICANT = {"enabled": True, "n_boot": 500, "seed": 0}


def test_significance_passes_a_drop_within_noise_and_fails_a_real_one(tmp_path):
    base, cur = pair(tmp_path, standard_sets(10), standard_sets(12))  # 2 more errors of 100
    p = policy(significance=SIGNIFICANT)
    small = by_name(run_gate(base, cur, policy=p))[("abs-drop", "heldout", "accuracy")]
    assert small.status == PASS and "within noise" in small.message and small.within_noise
    assert "paired on 100 images" in small.message
    low, high = small.drop_interval
    assert low <= 0.01 < high
    report = run_gate(base, cur, policy=p)
    assert "PASS (within noise): accuracy on heldout fell" in format_table(report)
    assert "### Drops within noise" in format_markdown(report)
    base, cur = pair(tmp_path / "2", standard_sets(10), standard_sets(40))
    big = by_name(run_gate(base, cur, policy=p))[("abs-drop", "heldout", "accuracy")]
    assert big.status == FAIL and "regression beyond noise" in big.message
    assert big.drop_interval[0] > 0.01


def test_paired_interval_of_two_extra_errors_is_exact(tmp_path):
    # Paired, the drop is (images the current model newly gets wrong) / n: >= 0 in every
    # resample, so the interval's low end is 0, and the point estimate is 0.02.
    base, cur = pair(tmp_path, standard_sets(10), standard_sets(12))
    result = by_name(run_gate(base, cur, policy=policy(significance=SIGNIFICANT)))[
        ("abs-drop", "heldout", "accuracy")]
    low, high = result.drop_interval
    assert low >= 0.0 and high <= 0.06


def test_groups_in_the_predictions_are_resampled_whole(tmp_path):
    """Ten copies of each cell: resampling images would make the interval sqrt(10) too narrow."""
    n = 200
    y = labels_for(n)
    base_preds = with_errors(y, 20)
    cur_preds = base_preds.copy()
    flip = np.arange(100, 130)                        # 30 newly wrong images, 3 whole groups
    cur_preds[flip] = (y[flip] + 1) % 3
    widths = {}
    for name, groups in (("images", None), ("groups", np.arange(n) // 10)):
        base, cur = pair(tmp_path / name, {"heldout": dataset_entry("heldout", y, base_preds,
                                                                    groups=groups)},
                         {"heldout": dataset_entry("heldout", y, cur_preds, groups=groups)})
        result = by_name(run_gate(base, cur, policy=policy(significance=SIGNIFICANT)))[
            ("abs-drop", "heldout", "accuracy")]
        widths[name] = result.drop_interval[1] - result.drop_interval[0]
        assert ("resampling 20 groups" in result.message) == (groups is not None)
    assert widths["groups"] > 2 * widths["images"]


def test_pairing_matches_images_by_path_not_order(tmp_path):
    n = 100
    y = labels_for(n)
    names = np.array([f"img_{i}.png" for i in range(n)])
    base = write_audit(tmp_path / "b", {"heldout": dataset_entry("heldout", y, with_errors(y, 10))},
                       paths={"heldout": names})
    perm = np.random.default_rng(1).permutation(n)
    cur_preds = with_errors(y, 14)
    cur = write_audit(tmp_path / "c", {"heldout": dataset_entry("heldout", y[perm], cur_preds[perm])},
                      paths={"heldout": names[perm]})
    ordered = write_audit(tmp_path / "o", {"heldout": dataset_entry("heldout", y, cur_preds)},
                          paths={"heldout": names})
    p = policy(significance=SIGNIFICANT)
    shuffled = by_name(run_gate(base, cur, policy=p))[("abs-drop", "heldout", "accuracy")]
    same = by_name(run_gate(base, ordered, policy=p))[("abs-drop", "heldout", "accuracy")]
    assert "paired" in shuffled.message
    assert shuffled.drop_interval == same.drop_interval


def test_unpaired_when_images_differ_and_deterministic(tmp_path):
    base, cur = pair(tmp_path, standard_sets(10), standard_sets(14))
    edit(cur, lambda d: d["datasets"]["heldout"].update(fingerprint="other"))
    p = policy(significance=SIGNIFICANT)
    first = by_name(run_gate(base, cur, policy=p, allow_dataset_change=True))
    again = by_name(run_gate(base, cur, policy=p, allow_dataset_change=True))
    result = first[("abs-drop", "heldout", "accuracy")]
    assert "unpaired, 100 vs 100 images" in result.message and result.status == PASS
    assert result.drop_interval == again[("abs-drop", "heldout", "accuracy")].drop_interval
    low, high = result.drop_interval
    assert high - low > 0.08  # two independent samples of 100: a wide interval


def test_significance_without_predictions_is_an_error_result(tmp_path):
    base, cur = pair(tmp_path, standard_sets(10), standard_sets(20))
    (tmp_path / "cur" / "artifacts" / "predictions_heldout.npz").unlink()
    result = by_name(run_gate(base, cur, policy=policy(significance=SIGNIFICANT)))[
        ("abs-drop", "heldout", "accuracy")]
    assert result.status == ERROR and "predictions for heldout" in result.message


def test_significance_on_class_recall(tmp_path):
    y = labels_for(300)
    preds = y.copy()
    preds[np.flatnonzero(y == 2)[:40]] = 0  # recall c: 1.0 -> 0.6
    base, cur = pair(tmp_path, {"heldout": dataset_entry("heldout", y, y)},
                     {"heldout": dataset_entry("heldout", y, preds)})
    p = policy(defaults={"metrics": {"accuracy": False, "balanced_accuracy": False},
                         "class_recall_max_drop": 0.05}, significance=SIGNIFICANT)
    results = by_name(run_gate(base, cur, policy=p))
    assert results[("recall-drop", "heldout", "recall[c]")].status == FAIL
    assert results[("recall-drop", "heldout", "recall[a]")].status == PASS


# ---- outputs ----

@pytest.fixture
def failing_report(tmp_path):
    y = np.array([0] * 10 + [1] * 10)
    base, cur = pair(tmp_path, {"heldout": dataset_entry("heldout", y, y)},
                     {"heldout": dataset_entry("heldout", y, with_errors(y, 4, n_classes=2, start=8))})
    edit(cur, lambda d: d["checks"]["performance"]["metrics"]["datasets"]["heldout"].pop(
        "balanced_accuracy"))
    return run_gate(base, cur, policy=policy(defaults={"class_recall_floor": 0.8}))


def test_table_lists_every_rule_and_the_failures(failing_report):
    text = format_table(failing_report)
    lines = text.splitlines()
    assert lines[0].split() == ["rule", "dataset", "metric", "baseline", "current", "change",
                                "limit", "result"]
    cells = [line.split() for line in lines[2:7]]
    assert cells[0] == ["abs-drop", "heldout", "accuracy", "1.000", "0.800", "-0.200", "drop",
                        "<=", "0.010", "FAIL"]
    assert cells[1][-1] == "ERROR" and cells[1][3:6] == ["1.000", "-", "-"]
    assert cells[4][:3] == ["recall-floor", "heldout", "recall[c]"] and cells[4][-1] == "SKIP"
    assert "FAIL: accuracy on heldout fell from 1.000 to 0.800" in text
    assert lines[-1] == "gate FAIL: 2 of 5 rules failed (1 could not be evaluated), 1 skipped"


def test_markdown_has_the_status_regressions_and_the_table(failing_report):
    md = format_markdown(failing_report)
    assert md.startswith("## CellAudit gate ❌ FAIL")
    assert "### Regressions" in md and "**abs-drop** `heldout` `accuracy`" in md
    assert "| rule | dataset | metric | baseline | current | change | limit | result |" in md
    assert "| abs-drop | heldout | accuracy | 1.000 | 0.800 | -0.200 | drop <= 0.010 | ❌ FAIL |" in md
    assert md.count("\n| ") == 1 + len(failing_report.results)


def test_junit_has_one_testcase_per_rule_with_failures_marked(failing_report):
    root = ET.fromstring(format_junit(failing_report))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(failing_report.results) == 5
    assert suite.get("tests") == "5" and suite.get("failures") == "1"
    assert suite.get("errors") == "1" and suite.get("skipped") == "1"
    by_case = {c.get("name"): c for c in cases}
    assert by_case["abs-drop accuracy"].find("failure").get("message").startswith(
        "accuracy on heldout fell")
    assert by_case["abs-drop balanced_accuracy"].find("error") is not None
    assert by_case["recall-floor recall[c]"].find("skipped") is not None
    assert by_case["recall-floor recall[a]"].find("failure") is None
    assert {c.get("classname") for c in cases} == {"cellaudit.gate.heldout"}


def test_passing_report_outputs(tmp_path):
    base, cur = pair(tmp_path, standard_sets(), standard_sets())
    report = run_gate(base, cur)
    assert format_table(report).splitlines()[-1] == "gate PASS: 4 of 4 rules passed"
    assert format_markdown(report).startswith("## CellAudit gate ✅ PASS")
    root = ET.fromstring(format_junit(report))
    assert root.get("failures") == "0" and len(root.iter("testcase").__next__()) >= 0
    assert json.dumps([r.to_dict() for r in report.results], allow_nan=False)
