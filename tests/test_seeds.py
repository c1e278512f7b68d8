"""One seed derivation (audit.seeds): stable, named, independent of order; used everywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from conftest import make_context, make_view

from audit import seeds

AUDIT = Path(__file__).resolve().parents[1] / "audit"
# A module that keeps its own derivation says why, after this, on the line or in the comment
# right above it.
EXCEPTION = "own seed derivation:"


def test_same_names_same_stream_other_names_other_streams():
    a = seeds.rng(3, "robustness", "heldout").random(8)
    assert np.array_equal(a, seeds.rng(3, "robustness", "heldout").random(8))
    assert not np.array_equal(a, seeds.rng(3, "robustness", "site_b").random(8))
    assert not np.array_equal(a, seeds.rng(4, "robustness", "heldout").random(8))
    assert not np.array_equal(a, seeds.rng(3, "robustness").random(8))
    # ints are names like any other: an image index, a batch's first index
    assert seeds.child_seed(0, "batch", 64) == seeds.child_seed(0, "batch", "64")
    assert seeds.child_seed(0, "batch", 64) != seeds.child_seed(0, "batch", 65)
    assert 0 <= seeds.child_seed(0, "batch", 64) < 2 ** 31


def test_the_derivation_is_fixed():
    # sha256 of the names joined with "|", first 8 bytes little-endian, next to the seed:
    # changing this moves every random number of every audit.
    assert seeds.name_key("a", 1) == int.from_bytes(
        __import__("hashlib").sha256(b"a|1").digest()[:8], "little")
    assert np.array_equal(seeds.rng(5, "a", 1).random(4),
                          np.random.default_rng([5, seeds.name_key("a", 1)]).random(4))
    assert seeds.child_seed(5, "a", 1) == int(seeds.rng(5, "a", 1).integers(2 ** 31))


def test_streams_do_not_depend_on_order_or_on_other_draws(tmp_path):
    view = make_view("ref", "heldout", [0, 1], [[1, 0], [0, 1]])
    ctx = make_context([view], tmp_path=tmp_path, seed=11)
    first = ctx.rng("calibration").random(5)
    ctx.rng("performance", "ref").random(1000)            # another check drew a lot meanwhile
    assert np.array_equal(first, ctx.rng("calibration").random(5))
    assert np.array_equal(first, seeds.rng(11, "calibration").random(5))
    assert ctx.child_seed("explain", "lime") == seeds.child_seed(11, "explain", "lime")


def _ad_hoc_seedings(source: str) -> list[int]:
    """Lines calling default_rng / RandomState with a list or tuple, or SeedSequence at all."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        listed = bool(node.args) and isinstance(node.args[0], (ast.List, ast.Tuple))
        if name == "SeedSequence" or (name in ("default_rng", "RandomState") and listed):
            lines.append(node.lineno)
    return lines


def test_no_module_derives_seeds_its_own_way():
    # Seeding numpy from a list ([seed, 7], [seed, index]) is how streams were derived ad hoc;
    # now only audit/seeds.py does it, and the exceptions say why.
    offending = []
    for path in sorted(AUDIT.rglob("*.py")):
        if path == AUDIT / "seeds.py":
            continue
        text = path.read_text()
        lines = text.splitlines()
        for n in _ad_hoc_seedings(text):
            above = n - 2                  # the comment block right above the call
            while above >= 0 and lines[above].strip().startswith("#"):
                above -= 1
            if not any(EXCEPTION in line for line in lines[above + 1:n]):
                offending.append(f"{path.relative_to(AUDIT)}:{n}: {lines[n - 1].strip()}")
    assert not offending, "\n".join(offending)


def test_the_grep_finds_what_it_should():
    assert _ad_hoc_seedings("import numpy as np\nnp.random.default_rng([0, 7])\n") == [2]
    assert _ad_hoc_seedings("from numpy.random import SeedSequence\nSeedSequence(3)\n") == [2]
    assert _ad_hoc_seedings("np.random.default_rng(seed)\n'default_rng([s, i])'\n") == []
