"""The check registry and the context every check reads from.

A check is a class with a `name`, a `DEFAULTS` dict (its config keys: thresholds and
budgets, overridable from `[checks.<name>]` in the TOML config) and `run(ctx) -> CheckResult`.
It reads its settings as `opts = self.options(ctx)`: a frozen dataclass whose fields follow
`DEFAULTS` (`opts.max_images` is an int; a list default reads as a tuple).
Checks compute numbers only: no drawing, no printing. The runner turns an exception into an
ERROR result, so one broken check never stops the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from audit import seeds
from audit.data import Dataset
from audit.inference import DatasetOutputs
from audit.pixels import PixelStore
from audit.results import CheckResult

__all__ = ["Check", "DatasetView", "AuditContext", "REGISTRY", "register", "ROLES"]

ROLES = ("train", "heldout", "shifted")


@dataclass(frozen=True)
class DatasetView:
    """One dataset in an audit: its files, labels, role and the model's outputs on it."""

    name: str
    role: str
    dataset: Dataset
    outputs: DatasetOutputs
    # Source groups found by keypoint matching (checks.leakage.source_groups), used where
    # the dataset has no group column of its own.
    discovered_groups: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    @property
    def probs(self) -> np.ndarray:
        return self.outputs.probs

    @property
    def logits(self) -> np.ndarray:
        return self.outputs.logits

    @property
    def predictions(self) -> np.ndarray:
        return self.outputs.predictions

    @property
    def correct(self) -> np.ndarray:
        return self.predictions == self.labels

    @property
    def groups(self) -> np.ndarray | None:
        """What intervals resample: the dataset's group column, else discovered source
        groups, else None (images)."""
        if self.dataset.groups is not None:
            return np.asarray(self.dataset.groups)
        return self.discovered_groups

    @property
    def has_group_column(self) -> bool:
        return self.dataset.groups is not None

    def __len__(self) -> int:
        return len(self.dataset)


@dataclass
class AuditContext:
    """What checks may use. `predictor` serves checks that need new forward passes
    (robustness, gap_factors); everything else comes from `views`. Pixels come only from
    `pixels` (the run's `PixelStore`: decoded once, the model's way, with white-cell masks
    computed once), so a check sees exactly what the model sees and shares what it decodes."""

    views: dict[str, DatasetView]
    class_names: tuple[str, ...]
    config: dict
    seed: int
    artifacts_dir: Path
    image_size: int = 224
    predictor: object | None = None
    results: dict[str, CheckResult] = field(default_factory=dict)
    resize: str = "crop"
    sources: object | None = None  # audit.checks.source_copies.SourceDiscovery, when run
    sources_error: BaseException | None = None  # discovery failed before the checks
    pixels: PixelStore | None = None  # made from image_size and resize when not given

    def __post_init__(self):
        if self.pixels is None:
            self.pixels = PixelStore(self.image_size, self.resize)

    def read_images(self, paths) -> np.ndarray:
        """`paths` decoded the model's way at its input size, from the run's pixel store."""
        return self.pixels.images(list(paths))

    def iter_batches(self, dataset: Dataset, *, batch_size: int):
        """`dataset` batch by batch (images, indices), from the run's pixel store."""
        return self.pixels.batches(dataset, batch_size=batch_size)

    @property
    def reference(self) -> DatasetView:
        return next(v for v in self.views.values() if v.role == "heldout")

    @property
    def train(self) -> DatasetView | None:
        return next((v for v in self.views.values() if v.role == "train"), None)

    @property
    def shifted(self) -> list[DatasetView]:
        return [v for v in self.views.values() if v.role == "shifted"]

    @property
    def evaluated(self) -> list[DatasetView]:
        """Sets the model is judged on: the reference first, then every shifted set."""
        return [self.reference, *self.shifted]

    def check_config(self, name: str) -> dict:
        """The `[checks.<name>]` table as loaded (a dict; what audit.json records)."""
        return self.config["checks"][name]

    def options(self, name: str):
        """The typed, frozen options of the registered check `name` (see Check.options)."""
        return REGISTRY[name].options_from(self.check_config(name))

    def rng(self, *keys: object) -> np.random.Generator:
        """A generator seeded from the audit seed and `keys`: stable across check order
        (audit.seeds.rng)."""
        return seeds.rng(self.seed, *keys)

    def child_seed(self, *keys: object) -> int:
        """An int seed for code that takes one, from the audit seed and `keys`."""
        return seeds.child_seed(self.seed, *keys)

    def save_artifact(self, name: str, **arrays: np.ndarray) -> str:
        """Write a compressed npz under artifacts/ and return its path relative to the output."""
        from audit.atomic import atomic_path

        self.artifacts_dir.mkdir(parents=True, exist_ok=True)
        target = self.artifacts_dir / f"{name}.npz"
        with atomic_path(target, suffix=".npz") as tmp:
            np.savez_compressed(tmp, **arrays)
        return os.path.join(self.artifacts_dir.name, target.name)


class Check:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    DEFAULTS: ClassVar[dict] = {}
    LIMITS: ClassVar[dict] = {}    # key -> audit.options limit, checked at config load
    ORDER: ClassVar[tuple] = ()    # (low, high) key pairs: low must not exceed high
    needs_model: ClassVar[bool] = False

    @classmethod
    def options_type(cls) -> type:
        """A frozen dataclass with one field per `DEFAULTS` key, typed by its default value
        (audit.options.options_type); built once per class."""
        from audit.options import options_type

        cached = cls.__dict__.get("_options_type")
        if cached is None or cached[0] != repr(cls.DEFAULTS):
            title = "".join(p.title() for p in (cls.name or cls.__name__).split("_"))
            cached = (repr(cls.DEFAULTS), options_type(f"{title}Options", cls.DEFAULTS))
            cls._options_type = cached
        return cached[1]

    @classmethod
    def options_from(cls, table: dict):
        """This check's options from its validated `[checks.<name>]` table."""
        from audit.options import build_options

        return build_options(cls.options_type(), table)

    def options(self, ctx: AuditContext):
        """This check's settings in `ctx`'s config, typed and frozen: `opts.n_bins`."""
        return self.options_from(ctx.check_config(self.name))

    def run(self, ctx: AuditContext) -> CheckResult:  # pragma: no cover - interface
        raise NotImplementedError


REGISTRY: dict[str, type[Check]] = {}


def register(cls: type[Check]) -> type[Check]:
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"check name {cls.name!r} is empty or already registered")
    REGISTRY[cls.name] = cls
    return cls


def load_builtin_checks() -> dict[str, type[Check]]:
    """Every check, in the order it runs: the built-in modules (they register themselves),
    then those third-party packages declare in the `cellaudit.checks` entry-point group."""
    import importlib

    for module in CHECK_MODULES:
        importlib.import_module(f"audit.checks.{module}")  # a missing module is an error
    load_plugin_checks()
    return REGISTRY


ENTRY_POINT_GROUP = "cellaudit.checks"
_PLUGINS_LOADED: set[str] = set()


def load_plugin_checks() -> None:
    """Register the checks third-party packages publish, e.g. in their pyproject.toml:

        [project.entry-points."cellaudit.checks"]
        stain_quality = "mylab_checks.stain:StainQualityCheck"

    An entry point names a Check subclass (registered here) or a module that registers its
    checks with `@register` when imported. A plugin that fails to import is an error naming
    it: a check that silently disappears would pass an audit it should have failed.
    """
    from importlib.metadata import entry_points

    from audit.errors import UsageError

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.value in _PLUGINS_LOADED:
            continue
        try:
            loaded = entry.load()
        except Exception as exc:  # noqa: BLE001 - any import failure of a plugin
            raise UsageError(f"check plugin '{entry.name}' ({entry.value}) cannot be loaded: "
                             f"{type(exc).__name__}: {exc}") from None
        _PLUGINS_LOADED.add(entry.value)
        if isinstance(loaded, type) and issubclass(loaded, Check):
            if REGISTRY.get(loaded.name) not in (None, loaded):
                raise UsageError(f"check plugin '{entry.name}' ({entry.value}) is named "
                                 f"'{loaded.name}', the name of another check")
            REGISTRY.setdefault(loaded.name, loaded)


# Order matters: later checks may read earlier results (findings are ranked at the end).
CHECK_MODULES = ("performance", "calibration", "class_errors", "leakage", "shift", "robustness",
                 "selective", "safety", "label_issues", "gap_factors")
