"""One ranking across checks, and gap-factors wording that never shows a negative remainder."""

from __future__ import annotations

import numpy as np

from audit.checks.gap_factors import GapFactorsCheck, overlap_phrase
from audit.findings import rank_findings
from audit.results import CheckResult, Finding, Status


def _result(name, *findings):
    return CheckResult(name, Status.WARN, "", findings=list(findings))


def test_the_kaggle_case_ranks_the_leak_first_and_shrinks_the_remainder():
    """The study's Kaggle set: 64% 'not explained by the measured factors' ranked first, above
    the leakage finding that explains ~56% of the gap."""
    remainder = Finding("gap_factors", "64% of the drop on test is not explained.", "collect",
                        dataset="test", gap_share=0.64, impact=0.16,
                        kind="gap_factors_unexplained",
                        evidence={"factors": ["color", "scale", "priors"], "min_share": 0.1})
    leak = Finding("leakage", "80% of validation are copies; copies explain 56% of the gap.",
                   "split by source", dataset="test", gap_share=0.56, impact=0.2,
                   kind="train_leak")
    colour = Finding("gap_factors", "colour explains 20%", "normalise", dataset="test",
                     gap_share=0.20, impact=0.05, kind="gap_factors_color")
    prior = Finding("shift", "priors explain 30%", "reweight", dataset="test", gap_share=0.30,
                    impact=0.07, kind="prior_shift")
    other = Finding("shift", "embedding drift", "adapt", dataset="test", impact=0.5,
                    kind="embedding_drift")
    ranked = rank_findings({"leakage": _result("leakage", leak),
                            "shift": _result("shift", prior, other),
                            "gap_factors": _result("gap_factors", remainder, colour)})
    assert [f.kind for f in ranked] == ["train_leak", "prior_shift", "gap_factors_color",
                                        "gap_factors_unexplained", "embedding_drift"]
    adjusted = ranked[3]
    # Priors are one of the gap-factors check's own factors: only the leak is subtracted.
    assert np.isclose(adjusted.gap_share, 0.64 - 0.56)
    assert adjusted.evidence["before_other_checks"] == 0.64
    assert "8% of the drop on test" in adjusted.text and "56% of the gap" in adjusted.text


def test_a_remainder_never_outranks_a_measured_cause_even_when_larger():
    remainder = Finding("gap_factors", "r", "a", dataset="s", gap_share=0.9, impact=0.3,
                        kind="gap_factors_unexplained", evidence={"factors": ["color"]})
    cause = Finding("gap_factors", "c", "a", dataset="s", gap_share=0.1, impact=0.03,
                    kind="gap_factors_color")
    prior = Finding("shift", "p", "a", dataset="s", gap_share=0.25, impact=0.05,
                    kind="prior_shift")
    ranked = rank_findings({"a": _result("gap_factors", remainder, cause),
                            "shift": _result("shift", prior)})
    assert [f.kind for f in ranked] == ["prior_shift", "gap_factors_color",
                                        "gap_factors_unexplained"]
    # Without priors among its factors, the gap-factors check's remainder also loses the prior share.
    assert np.isclose(ranked[-1].gap_share, 0.9 - 0.25)


def _block(phi, alone, gap):
    phi, alone = np.asarray(phi, float), np.asarray(alone, float)
    boot = np.tile(phi, (50, 1)) + np.random.default_rng(0).normal(0, 0.005, (50, len(phi)))
    return GapFactorsCheck._share_block(
        [f"f{i}" for i in range(len(phi))], phi, boot, float(phi.sum()), boot.sum(axis=1), gap,
        np.full(50, 1 / gap), True, alone=alone)


def test_overlapping_shares_are_worded_as_overlap_never_as_a_negative_remainder():
    # Together the factors explain 118% of a 20-point gap; one at a time they sum to 140%.
    block = _block([0.16, 0.0760], [0.18, 0.10], 0.20)
    assert block["unexplained"]["value"] == 0.0 and block["unexplained"]["low"] == 0.0
    assert np.isclose(block["beyond_gap"], 0.18)
    assert np.isclose(block["sum_alone_share"], 1.4) and np.isclose(
        block["interaction_share"], -0.22)
    text = overlap_phrase(block)
    assert "-18%" not in text and "unexplained" in text
    assert "118%" in text and "140%" in text and "overlap" in text and "-22%" in text


def test_an_ordinary_remainder_is_stated_plainly():
    block = _block([0.05, 0.03], [0.05, 0.03], 0.20)
    assert np.isclose(block["unexplained"]["value"], 0.6) and block["beyond_gap"] == 0.0
    assert overlap_phrase(block).endswith("60% is unexplained")


def test_reinforcing_factors_are_worded_as_a_joint_effect_the_shares_divide():
    # One at a time the factors recover 5 + 3 points of a 20-point gap; together 16: the shares
    # (Shapley values, 10 and 6 points) exceed each factor's own effect, which must not read as
    # a contradiction ("colour explains 50%" beside "their separate effects sum to 40%").
    block = _block([0.10, 0.06], [0.05, 0.03], 0.20)
    text = overlap_phrase(block)
    assert "accounts for 80% of the drop" in text and "only 40%" in text
    assert "joint effect" in text and "+40%" in text and text.endswith("20% is unexplained")
