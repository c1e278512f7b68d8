"""Rank the findings of all checks: the generalization-gap explanation."""

from __future__ import annotations

from audit.results import CheckResult, Finding

__all__ = ["rank_findings"]


def _key(finding: Finding) -> tuple[float, float]:
    share = finding.gap_share if finding.gap_share is not None else -1.0
    return (-share, -finding.impact)


def rank_findings(results: dict[str, CheckResult]) -> list[Finding]:
    """All findings, those explaining the largest measured share of a gap first.

    A finding with a measured `gap_share` outranks one without; ties and unmeasured ones go by
    `impact` (accuracy points at stake). Sorting is stable, so equal findings keep check order.
    """
    findings = [f for result in results.values() for f in result.findings]
    return sorted(findings, key=_key)
