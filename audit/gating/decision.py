"""The regression gate: two audits and a policy in, one decision a CI system understands out.

Rules (ids as they appear in the table and in JUnit):
  abs-drop      a metric fell by more than `max_abs_drop` (baseline - current)
  rel-drop      a metric fell by more than `max_rel_drop` x its baseline value
  recall-drop   a class's recall fell by more than `class_recall_max_drop`
  recall-floor  a class's recall is below its floor (current audit only)
  ece-max       the expected calibration error is above the ceiling (current audit only)

A rule PASSes, FAILs (regression), ERRORs (a number it needs is missing, null or NaN: a failure
too) or is SKIPped (the class has no images in that set). Exit code: 0 every rule passed or was
skipped, 1 any FAIL or ERROR, 2 the audits cannot be compared (raised as InputError): a dataset
fingerprint, role or class list changed or a baseline dataset vanished (unless
`allow_dataset_change`), an empty dataset, an unreadable file or policy.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np

from audit import seeds
from audit.errors import InputError
from audit.gating.policy import DatasetRules, Policy, Significance, load_policy
from audit.gating.reading import AuditFile, PredictionsUnavailable, Reading

__all__ = ["RuleResult", "GateReport", "PASS", "FAIL", "ERROR", "SKIP", "check_comparable",
           "evaluate", "run_gate", "drop_interval", "MARKDOWN_NAME", "JUNIT_NAME"]

PASS, FAIL, ERROR, SKIP = "PASS", "FAIL", "ERROR", "SKIP"
_EPS = 1e-9  # 0.90 -> 0.89 is a drop of 0.010000000000000009, which must pass a 0.01 limit
MARKDOWN_NAME, JUNIT_NAME = "gate-summary.md", "gate-junit.xml"


@dataclass(frozen=True)
class RuleResult:
    rule: str
    dataset: str
    metric: str
    status: str
    message: str
    baseline: float | None = None
    current: float | None = None
    limit: str = ""
    drop_interval: tuple[float, float] | None = None  # significance mode only

    @property
    def change(self) -> float | None:
        if self.baseline is None or self.current is None:
            return None
        return self.current - self.baseline

    @property
    def failed(self) -> bool:
        return self.status in (FAIL, ERROR)

    @property
    def within_noise(self) -> bool:
        """Passed only because the drop is within the bootstrap interval (significance mode)."""
        return self.status == PASS and self.drop_interval is not None

    @property
    def name(self) -> str:
        return f"{self.rule} {self.dataset} {self.metric}"

    def to_dict(self) -> dict:
        return {**asdict(self), "change": self.change}


@dataclass
class GateReport:
    baseline: str
    current: str
    policy: str
    results: list[RuleResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    models: tuple[str, str] = ("", "")  # baseline, current model sha256

    @property
    def failures(self) -> list[RuleResult]:
        return [r for r in self.results if r.failed]

    @property
    def status(self) -> str:
        return FAIL if self.failures else PASS

    @property
    def passed(self) -> bool:
        return not self.failures

    def _repr_html_(self) -> str:
        """Jupyter: the gate's Markdown table as HTML-escaped preformatted text."""
        import html

        from audit.gating.formats import format_table

        return f"<pre>{html.escape(format_table(self))}</pre>"

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in (PASS, FAIL, ERROR, SKIP)}


# ---- are the two audits comparable? ----

def check_comparable(baseline: AuditFile, current: AuditFile, *,
                     allow_dataset_change: bool = False) -> list[str]:
    """Raise InputError when the audits measure different things; return notes otherwise."""
    for audit in (baseline, current):
        for name in audit.dataset_names:
            if audit.n_images(name) == 0:
                raise InputError(f"dataset '{name}' in the {audit.role} audit '{audit.path}' has 0 "
                                 "images; an empty set cannot be gated")
    notes, changes = [], []
    base_classes, cur_classes = baseline.class_names, current.class_names
    if set(base_classes) != set(cur_classes):
        added = [c for c in cur_classes if c not in base_classes]
        removed = [c for c in base_classes if c not in cur_classes]
        changes.append(f"class lists differ (added {added or 'none'}, removed {removed or 'none'})")
    elif base_classes != cur_classes:
        notes.append("the class order changed; classes are compared by name")
    missing = [n for n in baseline.dataset_names if n not in current.dataset_names]
    if missing:
        changes.append(f"baseline dataset(s) {missing} are not in the current audit")
    for name in current.dataset_names:
        if name not in baseline.dataset_names:
            notes.append(f"new dataset '{name}' is not in the baseline: only floors and ceilings "
                         "apply to it")
            continue
        b_role, c_role = baseline.dataset_role(name), current.dataset_role(name)
        if b_role != c_role:
            changes.append(f"dataset '{name}' changed role ({b_role} -> {c_role})")
        b_fp, c_fp = baseline.fingerprint(name), current.fingerprint(name)
        if b_fp and c_fp and b_fp != c_fp:
            changes.append(f"dataset '{name}' has other images (fingerprint {b_fp[:12]} in the "
                           f"baseline, {c_fp[:12]} now)")
    if changes and not allow_dataset_change:
        raise InputError("the audits are not comparable: " + "; ".join(changes)
                         + ". Gate audits of the same datasets and classes, or pass "
                           "--allow-dataset-change to compare what they share")
    notes += [f"allowed by --allow-dataset-change: {c}" for c in changes]
    return notes


def _check_policy_names(policy: Policy, baseline: AuditFile, current: AuditFile) -> None:
    known = set(baseline.dataset_names) | set(current.dataset_names)
    unknown = sorted(set(policy.datasets) - known)
    if unknown:
        raise InputError(f"policy {policy.source} names dataset(s) {unknown} that neither audit "
                         f"has; known: {sorted(known)}")
    for table in (policy.defaults, *policy.roles.values(), *policy.datasets.values()):
        odd = sorted(set(table.get("class_recall_floors", {})) - set(current.class_names))
        if odd:
            raise InputError(f"policy {policy.source}: class_recall_floors names unknown "
                             f"class(es) {odd}; the model's classes: {list(current.class_names)}")


# ---- rules ----

def evaluate(baseline: AuditFile, current: AuditFile, policy: Policy, *,
             allow_dataset_change: bool = False) -> GateReport:
    """Every rule of `policy` on every dataset of `current`, in a stable order."""
    notes = check_comparable(baseline, current, allow_dataset_change=allow_dataset_change)
    _check_policy_names(policy, baseline, current)
    report = GateReport(baseline=str(baseline.path), current=str(current.path),
                        policy=policy.source, notes=notes,
                        models=(baseline.model_sha, current.model_sha))
    for name in current.dataset_names:
        rules = policy.rules_for(name, current.dataset_role(name))
        compared = name in baseline.dataset_names
        boot = (_Bootstrap(baseline, current, name, policy.significance)
                if compared and policy.significance.enabled else None)
        if compared:
            report.results += _metric_rules(baseline, current, name, rules, boot)
        report.results += _class_rules(baseline, current, name, rules, boot, compared=compared)
        if rules.ece_max is not None:
            before = baseline.ece(name, rules.ece_stage).value if compared else None
            report.results.append(_ece_rule(current, name, rules, baseline=before))
    if not report.results:
        report.notes.append("no rule applied: the policy switches every rule off")
    return report


def _metric_rules(baseline, current, name, rules: DatasetRules, boot) -> list[RuleResult]:
    out = []
    for metric, limit in rules.metrics.items():
        base, cur = baseline.metric(name, metric), current.metric(name, metric)
        if limit.max_abs_drop is not None:
            out.append(_drop_rule("abs-drop", name, metric, base, cur, limit.max_abs_drop,
                                  relative=False, boot=boot, statistic=(metric, None)))
        if limit.max_rel_drop is not None:
            out.append(_drop_rule("rel-drop", name, metric, base, cur, limit.max_rel_drop,
                                  relative=True, boot=boot, statistic=(metric, None)))
    return out


def _class_rules(baseline, current, name, rules: DatasetRules, boot, *, compared: bool):
    out = []
    for cls in current.class_names:
        label = f"recall[{cls}]"
        absent = current.class_count(name, cls) == 0
        floor = rules.recall_floor(cls)
        cur = current.class_recall(name, cls)
        base = (baseline.class_recall(name, cls) if compared and cls in baseline.class_names
                else Reading(None, "not in the baseline"))
        if floor is not None:
            out.append(_skip("recall-floor", name, label, f">= {floor:.3f}", cls) if absent else
                       _floor_rule(name, label, cur, floor, baseline=base.value))
        drop = rules.class_recall_max_drop
        if drop is not None and compared and cls in baseline.class_names:
            if absent or baseline.class_count(name, cls) == 0:
                out.append(_skip("recall-drop", name, label, f"drop <= {drop:.3f}", cls))
            else:
                out.append(_drop_rule("recall-drop", name, label, base, cur, drop, relative=False,
                                      boot=boot, statistic=("recall", cls)))
    return out


def _skip(rule: str, dataset: str, label: str, limit: str, cls: str) -> RuleResult:
    return RuleResult(rule, dataset, label, SKIP, f"{dataset} has no {cls} images", limit=limit)


def _drop_rule(rule: str, dataset: str, metric: str, base: Reading, cur: Reading, limit: float, *,
               relative: bool, boot: _Bootstrap | None, statistic: tuple) -> RuleResult:
    limit_text = f"rel drop <= {limit:.1%}" if relative else f"drop <= {limit:.3f}"
    result = dict(rule=rule, dataset=dataset, metric=metric, baseline=base.value,
                  current=cur.value, limit=limit_text)
    problem = base.problem or cur.problem
    if problem:
        return RuleResult(status=ERROR, message=f"cannot compare {metric} on {dataset}: {problem}",
                          **result)
    drop = base.value - cur.value
    allowed = limit * base.value if relative else limit
    moved = (f"{metric} on {dataset} fell from {base.value:.3f} to {cur.value:.3f} (drop "
             f"{drop:.3f}, allowed {allowed:.3f})" if drop > 0 else
             f"{metric} on {dataset} went from {base.value:.3f} to {cur.value:.3f} (no drop)")
    if drop <= allowed + _EPS:
        return RuleResult(status=PASS, message=moved, **result)
    if boot is None:
        return RuleResult(status=FAIL, message=f"{moved}: regression", **result)
    try:
        low, high, how = boot.drop_interval(*statistic)
    except PredictionsUnavailable as exc:
        return RuleResult(status=ERROR, message=f"{moved}; significance test impossible: {exc}",
                          **result)
    level = f"{boot.significance.level:.0%}"
    ci = f"{level} interval of the drop [{low:.3f}, {high:.3f}], {how}"
    if np.isfinite(low) and low > allowed + _EPS:
        return RuleResult(status=FAIL, message=f"{moved}: regression beyond noise ({ci})",
                          drop_interval=(low, high), **result)
    if not np.isfinite(low):
        return RuleResult(status=ERROR, message=f"{moved}; the bootstrap gave no interval ({how})",
                          **result)
    return RuleResult(status=PASS, message=f"{moved}, within noise ({ci})",
                      drop_interval=(low, high), **result)


def _floor_rule(dataset: str, label: str, cur: Reading, floor: float, *,
                baseline: float | None) -> RuleResult:
    result = dict(rule="recall-floor", dataset=dataset, metric=label, baseline=baseline,
                  current=cur.value, limit=f">= {floor:.3f}")
    if cur.problem:
        return RuleResult(status=ERROR, message=f"cannot check {label} on {dataset}: {cur.problem}",
                          **result)
    if cur.value + _EPS < floor:
        return RuleResult(status=FAIL, message=f"{label} on {dataset} is {cur.value:.3f}, below "
                                               f"the floor {floor:.3f}", **result)
    return RuleResult(status=PASS, message=f"{label} on {dataset} is {cur.value:.3f} "
                                           f"(floor {floor:.3f})", **result)


def _ece_rule(current: AuditFile, dataset: str, rules: DatasetRules, *,
              baseline: float | None) -> RuleResult:
    cur = current.ece(dataset, rules.ece_stage)
    label = f"ece[{rules.ece_stage}]"
    result = dict(rule="ece-max", dataset=dataset, metric=label, baseline=baseline,
                  current=cur.value, limit=f"<= {rules.ece_max:.3f}")
    if cur.problem:
        return RuleResult(status=ERROR, message=f"cannot check {label} on {dataset}: {cur.problem}",
                          **result)
    if cur.value > rules.ece_max + _EPS:
        return RuleResult(status=FAIL, message=f"{label} on {dataset} is {cur.value:.3f}, above "
                                               f"the ceiling {rules.ece_max:.3f}", **result)
    return RuleResult(status=PASS, message=f"{label} on {dataset} is {cur.value:.3f} "
                                           f"(ceiling {rules.ece_max:.3f})", **result)


# ---- significance: bootstrap of (baseline - current) ----

def drop_interval(base_stats: np.ndarray, cur_stats: np.ndarray, *,
                  level: float) -> tuple[float, float]:
    """Percentile interval of the bootstrap samples of baseline minus current."""
    from audit.stats import interval

    return interval(np.asarray(base_stats) - np.asarray(cur_stats), level=level)


class _Bootstrap:
    """Bootstrap statistics of one dataset in both audits, computed once and shared by its rules.

    Paired when both audits hold the same images (equal fingerprints and the same relative
    paths): one set of resampled image indices serves both, so the interval reflects only
    the models' disagreement. Otherwise each audit is resampled on its own. Whole groups
    (patient, slide, source image) are resampled when the predictions carry them, so copies
    of one cell do not make the interval falsely narrow.
    """

    def __init__(self, baseline: AuditFile, current: AuditFile, dataset: str,
                 significance: Significance) -> None:
        self.baseline, self.current, self.dataset = baseline, current, dataset
        self.significance = significance
        self._stats: tuple[dict, dict, str] | None = None

    def drop_interval(self, statistic: str, class_name: str | None) -> tuple[float, float, str]:
        base, cur, how = self._computed()
        pick_b, pick_c = base[statistic], cur[statistic]
        if class_name is not None:
            pick_b = pick_b[:, self.baseline.class_names.index(class_name)]
            pick_c = pick_c[:, self.current.class_names.index(class_name)]
        low, high = drop_interval(pick_b, pick_c, level=self.significance.level)
        return low, high, how

    def _computed(self) -> tuple[dict, dict, str]:
        if self._stats is None:
            self._stats = self._compute()
        return self._stats

    def _compute(self) -> tuple[dict, dict, str]:
        from audit.stats import bootstrap_indices

        base = self.baseline.load_predictions(self.dataset)
        cur = self.current.load_predictions(self.dataset)
        rng = seeds.rng(self.significance.seed, "gate", self.dataset)
        n_boot = self.significance.n_boot
        order = _pairing(base.paths, cur.paths) if self._same_images() else None
        if order is not None:
            resamples = bootstrap_indices(len(base.labels), n_boot=n_boot, rng=rng,
                                          groups=base.groups)
            cur_resamples = [order[idx] for idx in resamples]
            how = f"paired on {len(base.labels)} images{_grouped(base.groups)}"
        else:
            resamples = bootstrap_indices(len(base.labels), n_boot=n_boot, rng=rng,
                                          groups=base.groups)
            cur_resamples = bootstrap_indices(len(cur.labels), n_boot=n_boot, rng=rng,
                                              groups=cur.groups)
            how = (f"unpaired, {len(base.labels)} vs {len(cur.labels)} images"
                   f"{_grouped(base.groups, cur.groups)}")
        return _statistics(base, resamples), _statistics(cur, cur_resamples), how

    def _same_images(self) -> bool:
        fp_b = self.baseline.fingerprint(self.dataset)
        return bool(fp_b) and fp_b == self.current.fingerprint(self.dataset)


def _grouped(*groups: np.ndarray | None) -> str:
    counts = [len(np.unique(g)) for g in groups if g is not None]
    return f", resampling {' vs '.join(map(str, counts))} groups" if counts else ""


def _pairing(base_paths: np.ndarray, cur_paths: np.ndarray) -> np.ndarray | None:
    """Index into the current arrays for each baseline image, or None if the sets differ."""
    position = {p: i for i, p in enumerate(cur_paths)}
    if len(position) != len(cur_paths) or len(base_paths) != len(cur_paths):
        return None
    try:
        return np.array([position[p] for p in base_paths], dtype=np.int64)
    except KeyError:
        return None


def _statistics(predictions, resamples: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The performance check's own definitions, on each resample (so the numbers agree)."""
    from audit.checks.performance import confusion_counts, confusion_statistics

    counts = confusion_counts(predictions.labels, predictions.predicted,
                              len(predictions.class_names), resamples)
    return confusion_statistics(counts)


# ---- entry points ----

def run_gate(baseline_path: str | os.PathLike, current_path: str | os.PathLike, *,
             policy: str | os.PathLike | Policy | None = None,
             allow_dataset_change: bool = False) -> GateReport:
    """Load both audits and the policy (a path, a Policy or None for the defaults) and evaluate."""
    baseline = AuditFile.load(baseline_path, role="baseline")
    current = AuditFile.load(current_path, role="current")
    if not isinstance(policy, Policy):
        policy = load_policy(policy)
    return evaluate(baseline, current, policy, allow_dataset_change=allow_dataset_change)
