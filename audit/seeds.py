"""The one way a random stream is derived: from the audit seed and stable names.

    rng = seeds.rng(seed, "robustness", "heldout")       # a numpy Generator
    child = seeds.child_seed(seed, "explain", "lime")    # an int, for code that takes a seed

A stream is named, never numbered: the names (strings, or ints such as an image index or a
batch's first index) are joined with "|" and hashed (sha256), and the generator is seeded with
[seed, the first 8 bytes of that hash]. So a stream depends only on the seed and its names:
not on which check ran before, how many draws another stream made, or where a name sits in a
list that may grow. `AuditContext.rng(*names)` is `rng(ctx.seed, *names)`.

Modules that keep another derivation say why next to it (tests/test_seeds.py lists them).
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["rng", "child_seed", "name_key"]


def name_key(*names: object) -> int:
    """A 64-bit integer from `names`, stable across runs, platforms and Python versions."""
    digest = hashlib.sha256("|".join(map(str, names)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def rng(seed: int, *names: object) -> np.random.Generator:
    """The generator of the stream `names` under `seed`."""
    return np.random.default_rng([int(seed), name_key(*names)])


def child_seed(seed: int, *names: object) -> int:
    """An int in [0, 2**31) for code that takes a seed (a library, a per-batch helper): the
    first draw of the stream `names`."""
    return int(rng(seed, *names).integers(2 ** 31))
