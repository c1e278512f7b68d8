"""Typed, frozen options: each table read through a dataclass derived from its defaults."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from conftest import make_context, make_view

from audit.checks.base import Check, load_builtin_checks
from audit.config import AUDIT_DEFAULTS, AuditOptions, audit_options, load_config
from audit.explain.config import EXPLAIN_DEFAULTS, ExplainOptions, explain_options
from audit.options import build_options, options_type

AUDIT = Path(__file__).resolve().parents[1] / "audit"


def _expected(value):
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("name", list(load_builtin_checks()))
def test_every_check_options_follow_its_defaults(name):
    cls = load_builtin_checks()[name]
    kind = cls.options_type()
    assert kind is cls.options_type()                    # built once per class
    fields = {f.name: f for f in dataclasses.fields(kind)}
    assert list(fields) == list(cls.DEFAULTS)
    opts = kind()
    for key, default in cls.DEFAULTS.items():
        assert getattr(opts, key) == _expected(default)
        assert type(getattr(opts, key)) is type(_expected(default))
        origin = getattr(fields[key].type, "__origin__", fields[key].type)
        assert origin is type(_expected(default))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(opts, next(iter(fields)), None)


def test_context_options_are_the_loaded_config(tmp_path):
    view = make_view("ref", "heldout", [0, 1], [[1, 0], [0, 1]])
    ctx = make_context([view], tmp_path=tmp_path, overrides=[
        "checks.robustness.max_images=16", "checks.robustness.severities=[1, 3]",
        "checks.calibration.ece_warn=0", "checks.gap_factors.allow_sharpen=true"])
    robustness = ctx.options("robustness")
    assert robustness.max_images == 16 and robustness.severities == (1, 3)
    assert ctx.options("calibration").ece_warn == 0.0
    assert isinstance(ctx.options("calibration").ece_warn, float)     # 0 in TOML: a float
    assert ctx.options("gap_factors").allow_sharpen is True
    # the dict stays what audit.json records
    assert ctx.config["checks"]["robustness"]["severities"] == [1, 3]
    json.dumps(ctx.config, allow_nan=False)


def test_audit_and_explain_sections():
    config = load_config(None, ["audit.seed=3", "explain.methods=['gradcam']"])
    audit = audit_options(config["audit"])
    assert isinstance(audit, AuditOptions) and audit.seed == 3 and audit.checks == ()
    assert [f.name for f in dataclasses.fields(AuditOptions)] == list(AUDIT_DEFAULTS)
    explain = explain_options(config["explain"])
    assert isinstance(explain, ExplainOptions) and explain.methods == ("gradcam",)
    assert explain_options(explain) is explain
    assert [f.name for f in dataclasses.fields(ExplainOptions)] == list(EXPLAIN_DEFAULTS)


def test_a_plugin_check_gets_options_from_its_defaults_and_may_still_read_the_dict(tmp_path):
    class Plugin(Check):                      # never registered: a plugin as docs show it
        name = "lab_stain"
        DEFAULTS = {"z": 3.0, "n": 5, "on": False, "kinds": ["a"], "table": {"k": [1]}}

        def run(self, ctx):
            return self.options(ctx), ctx.check_config(self.name)

    view = make_view("ref", "heldout", [0, 1], [[1, 0], [0, 1]])
    ctx = make_context([view], tmp_path=tmp_path)
    ctx.config["checks"]["lab_stain"] = {**Plugin.DEFAULTS, "z": 2.5, "kinds": ["a", "b"]}
    opts, table = Plugin().run(ctx)
    assert (opts.z, opts.n, opts.on, opts.kinds) == (2.5, 5, False, ("a", "b"))
    assert opts.table["k"] == (1,)
    with pytest.raises(TypeError):
        opts.table["k"] = 2                                   # read-only all the way down
    assert table["kinds"] == ["a", "b"]                       # the dict, unchanged
    assert type(opts).__name__ == "LabStainOptions"


def test_keys_that_cannot_be_fields_fail_only_when_options_are_asked_for():
    class Odd(Check):
        name = "odd"
        DEFAULTS = {"warn-share": 0.1}

    with pytest.raises(TypeError, match="'warn-share' is not a Python identifier"):
        Odd.options_type()


def test_build_options_refuses_keys_the_defaults_do_not_have():
    kind = options_type("DemoOptions", {"a": 1})
    assert build_options(kind, {}).a == 1
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['b'\]"):
        build_options(kind, {"a": 1, "b": 2})


def test_no_module_reads_a_config_table_by_key():
    # Checks, explanations and the runner read typed options; the dict is read only where it
    # is built, validated or recorded.
    allowed = {"config.py", "options.py", "commands/run.py"}
    pattern = re.compile(r"\b(cfg|settings)\[|\bcheck_config\(|config\[\"(checks|audit|explain)\"\]\[")
    offending = []
    for path in AUDIT.rglob("*.py"):
        rel = path.relative_to(AUDIT).as_posix()
        if rel in allowed or rel == "checks/base.py":
            continue
        offending += [f"{rel}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                      if pattern.search(line)]
    assert not offending, offending
