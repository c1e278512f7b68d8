"""Report sections: one module per section (a pure builder plus the template it declares), and
the registry that orders them (`registry.py`). `build_context` (reports/context.py) renders
every registered section, then a generic section for each check no section names."""

from __future__ import annotations

import importlib

from reports.sections.common import (
    check_header,
    check_state,
    computed_check,
    findings_of,
    unavailable,
)
from reports.sections.registry import (
    GENERIC_ORDER,
    PLUGIN_ORDER,
    SECTIONS,
    Section,
    load_plugin_sections,
    register_section,
    registered,
    template_source,
    unregister_section,
)

__all__ = ["Section", "register_section", "unregister_section", "registered", "SECTIONS",
           "load_sections", "load_builtin_sections", "template_source", "PLUGIN_ORDER",
           "GENERIC_ORDER", "BUILTIN_MODULES",
           # what a section builder usually needs (see docs/extending.md)
           "computed_check", "check_state", "check_header", "findings_of", "unavailable"]

# The built-in section modules; each registers its section when imported.
BUILTIN_MODULES = ("verdict", "model_card", "datasets", "performance", "class_errors", "leakage",
                   "shift", "calibration", "robustness", "explanations", "selective", "safety",
                   "label_issues", "recommendations", "reproducibility")


def load_builtin_sections() -> list[Section]:
    """Import the built-in section modules (each registers itself); the sections, in order."""
    for module in BUILTIN_MODULES:
        importlib.import_module(f"reports.sections.{module}")
    return registered()


def load_sections() -> list[Section]:
    """The built-in sections, then those of the `cellaudit.sections` entry points, in order."""
    load_builtin_sections()
    load_plugin_sections()
    return registered()
