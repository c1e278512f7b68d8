"""Rank the findings of all checks together: the generalization-gap explanation.

One ranking across checks. Measured causes (a finding with a `gap_share`: a factor measured by
intervention, copies between training and validation, changed class proportions) come first,
largest share first. The gap-factors check's "not explained by the measured factors"
remainder only knows its own image factors: before it is ranked, the shares that other checks
explain of the same gap (leakage's copies; prior shift when the gap-factors check did not include
class proportions) are subtracted from it, and it never ranks above a measured cause.
Findings without a measured share follow, by `impact` (accuracy points at stake).

Before all of them: findings that say a measurement itself is empty (`FIRST_RANK_KINDS`). A
class whose images are copies of a handful of cells has a recall measured on those cells,
however many images it shows; every cause ranked below is read off such rates.
"""

from __future__ import annotations

from dataclasses import replace

from audit.results import CheckResult, Finding

__all__ = ["rank_findings", "REMAINDER_KINDS", "FIRST_RANK_KINDS", "adjust_remainders"]

REMAINDER_KINDS = frozenset({"gap_factors_unexplained"})
FIRST_RANK_KINDS = frozenset({"few_cells"})  # leakage: a class resting on a handful of cells
# Measured causes outside the gap-factors check's image factors, by kind; "priors" marks the one the
# gap-factors check measures itself when its factors include class proportions.
_EXTERNAL_CAUSES = {"train_leak": None, "prior_shift": "priors"}


def _tier(finding: Finding) -> int:
    if finding.kind in FIRST_RANK_KINDS:
        return -1
    if finding.gap_share is None:
        return 2
    return 1 if finding.kind in REMAINDER_KINDS else 0


def _key(finding: Finding) -> tuple[int, float, float]:
    share = finding.gap_share if finding.gap_share is not None else -1.0
    return (_tier(finding), -share, -finding.impact)


def adjust_remainders(findings: list[Finding]) -> list[Finding]:
    """Each unexplained remainder minus the gap shares other checks explain on its dataset."""
    out = []
    for f in findings:
        if f.kind not in REMAINDER_KINDS or f.gap_share is None:
            out.append(f)
            continue
        factors = set(f.evidence.get("factors") or [])
        external = [g for g in findings if g.dataset == f.dataset and g.gap_share is not None
                    and g.kind in _EXTERNAL_CAUSES and _EXTERNAL_CAUSES[g.kind] not in factors]
        if not external:
            out.append(f)
            continue
        # Take the largest of each kind (leakage may report several estimates of one cause).
        by_kind: dict[str, float] = {}
        for g in external:
            by_kind[g.kind] = max(by_kind.get(g.kind, 0.0), float(g.gap_share))
        taken = sum(by_kind.values())
        left = max(0.0, f.gap_share - taken)
        named = " and ".join(_CAUSE_NOUNS.get(k, k) for k in by_kind)
        text = (f"{left:.0%} of the drop on {f.dataset} is explained neither by the measured "
                f"image factors nor by {named} ({taken:.0%} of the gap, from other checks); "
                f"the image factors alone leave {f.gap_share:.0%}.")
        out.append(replace(f, gap_share=left, impact=f.impact * left / max(f.gap_share, 1e-12),
                           text=text, evidence={**f.evidence, "before_other_checks": f.gap_share,
                                                "explained_by_other_checks": by_kind}))
    return out


_CAUSE_NOUNS = {"train_leak": "what copies of training images explain",
                "prior_shift": "what changed class proportions explain"}


def rank_findings(results: dict[str, CheckResult]) -> list[Finding]:
    """All findings in one ranking: first-rank kinds, measured causes by share, then
    unexplained remainders (adjusted for what other checks explain), then the rest by impact. Sorting is stable, so
    equal findings keep check order."""
    findings = [f for result in results.values() for f in result.findings]
    return sorted(adjust_remainders(findings), key=_key)
