"""The quick contract check's staged search, on scores made up per candidate.

A near-chance model that no option rescues pays for the declared contract's one-option
neighbours only; the full grid is scored only when a neighbour is clearly better, and then the
best candidate is found even two options away. (The check on real models is in
tests/test_own_model.py.)
"""

from __future__ import annotations

import numpy as np
import pytest

from audit.contract_check import CandidateScore, judge_contract, one_option_away
from model.contract import InputContract

N, CLASSES = 64, ("a", "b", "c", "d")
LABELS = np.repeat(np.arange(len(CLASSES)), N // len(CLASSES))   # majority rate 0.25
DECLARED = ("unit", "crop", "RGB")


class MadeUpScores:
    """`score(candidates)` as CandidateSample gives it: candidate c gets the first
    round(accuracy * N) images right (so a better candidate wins every disagreement)."""

    def __init__(self, accuracy: dict, default: float = 0.25):
        self.accuracy, self.default, self.scored = accuracy, default, []

    def __call__(self, candidates):
        scores, hits = [], {}
        for c in candidates:
            if c not in self.scored:
                self.scored.append(c)
            correct = np.arange(N) < round(self.accuracy.get(c, self.default) * N)
            hits[c] = correct
            scores.append(CandidateScore(*c, float(correct.mean()), 0.3, "a"))
        return scores, hits


def _judge(scores: MadeUpScores):
    contract = InputContract(class_names=CLASSES, input_size=64, preprocess=DECLARED[0],
                             resize=DECLARED[1], channel_order=DECLARED[2])
    return judge_contract(scores, contract, LABELS)


def test_a_model_that_works_as_declared_costs_the_resize_modes_only():
    scores = MadeUpScores({DECLARED: 0.9})
    check = _judge(scores)
    assert check.verdict == "ok"
    assert len(scores.scored) == 3 and {c[1] for c in scores.scored} == {"crop", "stretch", "pad"}


def test_a_near_chance_model_no_option_rescues_costs_eight_candidates_not_thirty():
    scores = MadeUpScores({})
    check = _judge(scores)
    assert check.verdict == "ok"
    assert scores.scored == one_option_away(DECLARED) and len(scores.scored) == 8
    assert len(check.candidates) == 8


@pytest.mark.parametrize("neighbour", [0.45, 0.3])
def test_a_better_neighbour_widens_to_the_full_grid_and_names_the_best(neighbour):
    # The contract the model needs is two options away; its one-option neighbour is better
    # than the declared one. Only a clearly better neighbour (>= 10 points, beating chance)
    # opens the full grid.
    truth, near = ("torch", "crop", "BGR"), ("torch", "crop", "RGB")
    scores = MadeUpScores({DECLARED: 0.25, near: neighbour, truth: 0.95})
    check = _judge(scores)
    if neighbour >= 0.45:
        assert len(scores.scored) == 30 and check.best.channel_order == "BGR"
        assert check.verdict == "wrong"
        assert "--preprocess torch --resize crop --channel-order BGR" in check.message
    else:
        assert len(scores.scored) == 8 and check.verdict == "ok"
