"""Is the model being fed the way it was trained? A quick test before any expensive work.

A model fed pixels scaled or resized another way than in training still returns confident
answers: the audit would then blame the model for the set-up (a [0, 1] model fed 0-255 pixels
called 92% of a demo set 'lymphocyte'). So on a seeded, class-stratified sample of the
reference set (64 images by default) the declared contract is scored, and with it the other
resize modes. When the declared contract is no better than always answering the commonest
class, or puts almost every image in one class, the search widens in two steps: first every
contract one option away from the declared one (each other scaling, the other channel order:
8 candidates in all), then, only when one of those is clearly better, every candidate
(scaling x resize x channel order, 30). A near-chance model that no option rescues (an
untrained head) so pays 8 candidates rather than 30; a mis-set one pays the full grid, and its
best candidate is named. `audit run` stops (exit 2) when the declared contract looks like that
and another candidate is far better and itself better than chance, naming the options to
use; `--force` audits anyway. `audit inspect --data` scores every candidate and recommends
the best.

Decisions use exact tests on the sample: the declared accuracy against the majority-class rate
(one-sided binomial), and the best candidate against the declared one on the same images
(exact McNemar on the images where they disagree).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from itertools import product

import numpy as np
from scipy.stats import binomtest

from audit import seeds
from audit.data import Dataset, read_images
from audit.errors import UsageError
from audit.sampling import stratified_subsample
from model.contract import CHANNEL_ORDERS, PREPROCESS, RESIZE, InputContract, scale_images

__all__ = ["CandidateScore", "CandidateSample", "ContractCheck", "score_candidates",
           "check_contract", "judge_contract", "DEFAULT_IMAGES"]

DEFAULT_IMAGES = 64
_CHANCE_ALPHA = 0.01      # declared accuracy not above the majority rate at this level: suspect
_ONE_CLASS_SHARE = 0.9    # one predicted class for this share of the sample: suspect ...
_STOP_MARGIN = 0.25       # ... and a candidate this much better (p < _STOP_ALPHA): stop
_STOP_ALPHA = 1e-3
_WARN_MARGIN = 0.10       # a candidate this much better (p < _WARN_ALPHA): warn
_WARN_ALPHA = 0.01


@dataclass(frozen=True)
class CandidateScore:
    preprocess: str
    resize: str
    channel_order: str
    accuracy: float
    top_class_share: float
    top_class: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.preprocess, self.resize, self.channel_order)

    def flags(self) -> str:
        return f"--preprocess {self.preprocess} --resize {self.resize}" + (
            f" --channel-order {self.channel_order}" if self.channel_order != "RGB" else "")


@dataclass(frozen=True)
class ContractCheck:
    images: int
    majority_rate: float
    declared: CandidateScore
    candidates: tuple[CandidateScore, ...]
    verdict: str              # ok | warning | wrong
    message: str
    p_value_vs_majority: float

    @property
    def best(self) -> CandidateScore:
        return max(self.candidates, key=lambda c: c.accuracy)

    def describe(self) -> dict:
        return {"images": self.images, "majority_rate": self.majority_rate,
                "p_value_vs_majority": self.p_value_vs_majority,
                "declared": asdict(self.declared),
                "candidates": [asdict(c) for c in self.candidates],
                "verdict": self.verdict, "message": self.message}


def _scores(predictor, contract: InputContract, images_by_resize: dict[str, np.ndarray],
            labels: np.ndarray, candidates: list[tuple[str, str, str]]
            ) -> tuple[list[CandidateScore], dict]:
    """Score each (preprocess, resize, channel order) with one traced raw forward pass."""
    scores, hits = [], {}
    for preprocess, resize, channel_order in candidates:
        x = np.asarray(scale_images(images_by_resize[resize], preprocess=preprocess,
                                    channel_order=channel_order))
        predicted = predictor.logits(x).argmax(axis=1)
        counts = np.bincount(predicted, minlength=contract.n_classes)
        top = int(counts.argmax())
        correct = predicted == labels
        hits[(preprocess, resize, channel_order)] = correct
        scores.append(CandidateScore(preprocess, resize, channel_order, float(correct.mean()),
                                     float(counts[top] / len(predicted)),
                                     contract.class_names[top]))
    return scores, hits


def _raw_predictor(loaded, batch_size: int, forward_batch: int = 0):
    """A predictor that applies no scaling: the candidates are scaled before the call. One
    view per image: test-time views average answers, they do not change how pixels are
    prepared, so the check asks its question at an eighth of the cost."""
    from audit.inference import Predictor

    raw = loaded.contract.with_(preprocess="none", channel_order="RGB", views="single")
    return Predictor(replace(loaded, contract=raw, _forward=None, _compiled=None),
                     batch_size=batch_size, forward_batch=forward_batch)


Candidate = tuple[str, str, str]   # (preprocess, resize, channel order)


def full_grid(declared: Candidate) -> list[Candidate]:
    """Every scaling x resize x channel order, the declared one first."""
    return [declared] + [c for c in product(PREPROCESS, RESIZE, CHANNEL_ORDERS) if c != declared]


def resize_modes(declared: Candidate) -> list[Candidate]:
    """The declared contract and its other resize modes."""
    preprocess, resize, order = declared
    return [declared] + [(preprocess, r, order) for r in RESIZE if r != resize]


def one_option_away(declared: Candidate) -> list[Candidate]:
    """The declared contract and every contract that differs from it in one option."""
    preprocess, resize, order = declared
    return resize_modes(declared) + [(p, resize, order) for p in PREPROCESS if p != preprocess] \
        + [(preprocess, resize, o) for o in CHANNEL_ORDERS if o != order]


class CandidateSample:
    """The seeded reference sample, decoded once per resize mode, each candidate scored once:
    widening the search decodes and predicts only what is new."""

    def __init__(self, loaded, dataset: Dataset, *, n_images: int = DEFAULT_IMAGES,
                 seed: int = 0, batch_size: int = 64, forward_batch: int = 0):
        self._loaded, self._batch_size, self._forward_batch = loaded, batch_size, forward_batch
        idx = stratified_subsample(dataset.labels, n_images,
                                   rng=seeds.rng(seed, "contract_check"))
        self._paths = [dataset.paths[i] for i in idx]
        self.labels = dataset.labels[idx]
        self._images: dict[str, np.ndarray] = {}
        self._predictor = None   # traced once, kept when the search widens
        self._known: dict[Candidate, tuple[CandidateScore, np.ndarray]] = {}

    def score(self, candidates: list[Candidate]
              ) -> tuple[list[CandidateScore], dict[Candidate, np.ndarray]]:
        """Scores in the order asked, and each candidate's per-image hits."""
        contract = self._loaded.contract
        for r in dict.fromkeys(c[1] for c in candidates):
            if r not in self._images:
                self._images[r] = read_images(self._paths, contract.input_size, resize=r)
        todo = [c for c in candidates if c not in self._known]
        if todo:
            if self._predictor is None:
                self._predictor = _raw_predictor(self._loaded, self._batch_size,
                                                 self._forward_batch)
            scores, hits = _scores(self._predictor, contract,
                                   self._images, self.labels, todo)
            self._known.update({c: (score, hits[c]) for c, score in zip(todo, scores,
                                                                       strict=True)})
        return [self._known[c][0] for c in candidates], {c: self._known[c][1] for c in candidates}


def declared_candidate(contract: InputContract) -> Candidate:
    return (contract.preprocess, contract.resize, contract.channel_order)


def score_candidates(loaded, dataset: Dataset, *, n_images: int = DEFAULT_IMAGES, seed: int = 0,
                     batch_size: int = 64) -> tuple[list[CandidateScore], dict, np.ndarray]:
    """Every candidate's score on the sample, the declared contract first (`audit inspect`)."""
    sample = CandidateSample(loaded, dataset, n_images=n_images, seed=seed,
                             batch_size=batch_size)
    scores, hits = sample.score(full_grid(declared_candidate(loaded.contract)))
    return scores, hits, sample.labels


def _mcnemar(better: np.ndarray, worse: np.ndarray) -> float:
    """One-sided exact McNemar p-value that `better` is right more often than `worse`."""
    gains, losses = int(np.sum(better & ~worse)), int(np.sum(~better & worse))
    if gains + losses == 0:
        return 1.0
    return float(binomtest(gains, gains + losses, 0.5, alternative="greater").pvalue)


def _beats_chance(score: CandidateScore, n: int, majority: float) -> bool:
    return binomtest(round(score.accuracy * n), n, majority,
                     alternative="greater").pvalue < _CHANCE_ALPHA


def _clearly_better(scores: list[CandidateScore], hits: dict, n: int, majority: float) -> bool:
    """Whether a candidate beats both chance and the declared contract (scores[0]) by the
    warning's margin: the signal that the full grid is worth scoring."""
    declared = scores[0]
    base = hits[declared.key]
    return any(_beats_chance(c, n, majority) and c.accuracy - declared.accuracy >= _WARN_MARGIN
               and _mcnemar(hits[c.key], base) < _WARN_ALPHA
               for c in scores[1:])


def check_contract(loaded, dataset: Dataset, *, n_images: int = DEFAULT_IMAGES, seed: int = 0,
                   batch_size: int = 64, forward_batch: int = 0) -> ContractCheck:
    """Score the declared contract on the reference sample and judge it (module doc)."""
    sample = CandidateSample(loaded, dataset, n_images=n_images, seed=seed,
                             batch_size=batch_size, forward_batch=forward_batch)
    return judge_contract(sample.score, loaded.contract, sample.labels)


def judge_contract(score, contract: InputContract, labels: np.ndarray) -> ContractCheck:
    """The staged search and the verdict; `score(candidates)` is `CandidateSample.score`."""
    key = declared_candidate(contract)
    scores, hits = score(resize_modes(key))
    declared = scores[0]
    n = len(labels)
    majority = float(np.bincount(labels).max() / n)
    p_chance = float(binomtest(round(declared.accuracy * n), n, majority,
                               alternative="greater").pvalue)
    suspect = p_chance > _CHANCE_ALPHA or (declared.top_class_share >= _ONE_CLASS_SHARE
                                           and majority < 0.6)
    if suspect:
        scores, hits = score(one_option_away(key))
        if _clearly_better(scores, hits, n, majority):
            scores, hits = score(full_grid(key))
    others = scores[1:]
    best = max(others, key=lambda c: c.accuracy) if others else declared
    p_best = _mcnemar(hits[best.key], hits[key])
    margin = best.accuracy - declared.accuracy
    # A better candidate is evidence of a mis-set contract only if it beats chance itself: a
    # broken model that does worse than chance as declared can do merely as well as always
    # answering the commonest class under another scaling, and is then a bad model, not a
    # mis-fed one.
    best_beats_chance = _beats_chance(best, n, majority)
    described = (f"with --preprocess {declared.preprocess} "
                 f"({contract.sources.get('preprocess', 'declared')}) and --resize "
                 f"{declared.resize} ({contract.sources.get('resize', 'declared')})")
    if suspect and best_beats_chance and margin >= _STOP_MARGIN and p_best < _STOP_ALPHA:
        what = (f"calls {100 * declared.top_class_share:.0f}% of them {declared.top_class}"
                if declared.top_class_share >= _ONE_CLASS_SHARE else
                f"is no better than always answering the commonest class "
                f"({100 * majority:.0f}%)")
        verdict, message = "wrong", (
            f"{described} the model gets {100 * declared.accuracy:.0f}% of {n} reference "
            f"images right and {what}; {best.flags()} gets {100 * best.accuracy:.0f}%. "
            f"Declare the model's input contract ({best.flags()}), or use --force to audit "
            "it as declared")
    elif best_beats_chance and margin >= _WARN_MARGIN and p_best < _WARN_ALPHA:
        verdict, message = "warning", (
            f"{described} the model gets {100 * declared.accuracy:.0f}% of {n} reference "
            f"images right, but {best.flags()} gets {100 * best.accuracy:.0f}%: check how the "
            "model was trained (`audit inspect MODEL --data DIR`)")
    else:
        verdict, message = "ok", (f"{described} the model gets {100 * declared.accuracy:.0f}% "
                                  f"of {n} reference images right")
    return ContractCheck(images=n, majority_rate=majority, declared=declared,
                         candidates=tuple(scores), verdict=verdict, message=message,
                         p_value_vs_majority=p_chance)


def enforce(check: ContractCheck, *, force: bool, where: str) -> None:
    """Stop the audit on a wrong set-up unless forced; warnings go to stderr."""
    import warnings

    if check.verdict == "wrong" and not force:
        raise UsageError(f"model '{where}': {check.message}")
    if check.verdict in ("wrong", "warning"):
        warnings.warn(f"model '{where}': {check.message}", stacklevel=2)
