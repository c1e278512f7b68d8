"""The report's sections, registered like checks: name, title, builder, template, order.

    register_section("brightness", "Image brightness", brightness_section,
                     Path(__file__).with_name("brightness.html.j2"), check="brightness")

A builder is a pure function `builder(audit, assets) -> dict` from the typed audit
(`audit.audit_json.AuditDocument`) and the report's `Assets` (None when there are no
artifacts) to the template's data: a dict with `available` and `reason`, plus whatever its
template shows (jinja runs with StrictUndefined). The template sees that dict as `s` and the
macros of `_macros.html.j2` as `m`.

`template` is either the name of a file in reports/templates/ (the built-in sections: they share
`_macros.html.j2` and one FileSystemLoader, so their names stay short) or a path to a file
anywhere (a plugin's section keeps its template beside its code; the loader finds it through
this registry under the name "section:<name>").

`check` names the check(s) whose result the section shows. A check in audit.json that no
registered section names gets a generic section (status, summary, metrics, findings), so a
third-party check always appears in the report.

Sections from other packages load from the `cellaudit.sections` entry-point group: an entry
point names a module that calls `register_section` when imported, or a callable that does so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Section", "register_section", "registered", "template_source", "SECTIONS",
           "ENTRY_POINT_GROUP", "PLUGIN_ORDER", "GENERIC_ORDER", "load_plugin_sections",
           "unregister_section"]

ENTRY_POINT_GROUP = "cellaudit.sections"
PLUGIN_ORDER = 135   # after the built-in check sections (label issues: 130), before recommendations
GENERIC_ORDER = 136  # checks without a section of their own, by name, after the plugin sections


@dataclass(frozen=True)
class Section:
    name: str                           # the anchor id in the HTML
    title: str                          # printed as "N. title"
    builder: Callable[..., dict]
    template: str                       # the jinja name the report includes
    order: float
    checks: tuple[str, ...] = ()        # the check results the section shows
    reads_others: bool = False          # builder(audit, assets, available={name: bool})
    path: Path | None = None            # the template file, when it is not in reports/templates


SECTIONS: dict[str, Section] = {}


def register_section(name: str, title: str, builder: Callable[..., dict],
                     template: str | os.PathLike, *, order: float = PLUGIN_ORDER,
                     check: str | tuple[str, ...] | None = None,
                     reads_others: bool = False) -> Section:
    """Add a section to the report. `template` is a file name in reports/templates/ or a path to
    a template file; `check` the name(s) of the check(s) it shows. Registering the same name
    again with the same builder is a no-op (a module imported twice); another builder is an
    error naming both."""
    if not name or not isinstance(name, str):
        raise ValueError(f"a section needs a non-empty name, got {name!r}")
    path = None
    if isinstance(template, os.PathLike):
        path = Path(template).resolve()
        if not path.is_file():
            raise ValueError(f"section {name!r}: template file {path} does not exist")
        template_name = f"section:{name}"
    else:
        template_name = str(template)
    checks = (check,) if isinstance(check, str) else tuple(check or ())
    section = Section(name=name, title=title, builder=builder, template=template_name,
                      order=order, checks=checks, reads_others=reads_others, path=path)
    existing = SECTIONS.get(name)
    if existing is not None and existing.builder is not builder:
        raise ValueError(f"section {name!r} is already registered (builder "
                         f"{existing.builder.__module__}.{existing.builder.__qualname__})")
    SECTIONS[name] = section
    return section


def unregister_section(name: str) -> None:
    """Remove a section (tests; a plugin replacing a built-in section first removes it)."""
    SECTIONS.pop(name, None)


def registered() -> list[Section]:
    """Every registered section in report order (order, then registration order)."""
    index = {name: i for i, name in enumerate(SECTIONS)}
    return sorted(SECTIONS.values(), key=lambda s: (s.order, index[s.name]))


def template_source(name: str) -> tuple[str, str, Callable[[], bool]] | None:
    """(text, file name, up-to-date test) of a section template registered by path, for the
    report's jinja loader; re-read when the file changes or the section is registered again."""
    if not name.startswith("section:"):
        return None
    section = SECTIONS.get(name[len("section:"):])
    if section is None or section.path is None:
        return None
    path, mtime = section.path, section.path.stat().st_mtime_ns

    def uptodate() -> bool:
        current = SECTIONS.get(section.name)
        return (current is not None and current.path == path and path.is_file()
                and path.stat().st_mtime_ns == mtime)

    return path.read_text(encoding="utf-8"), str(path), uptodate


_PLUGINS_LOADED: set[str] = set()


def load_plugin_sections() -> None:
    """Import the sections other packages declare, e.g. in their pyproject.toml:

        [project.entry-points."cellaudit.sections"]
        brightness = "mylab_checks.brightness_section"

    A plugin that fails to import is an error naming it, as for check plugins."""
    from importlib.metadata import entry_points

    from audit.errors import UsageError

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.value in _PLUGINS_LOADED:
            continue
        try:
            loaded = entry.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except Exception as exc:  # noqa: BLE001 - any import failure of a plugin
            raise UsageError(f"report section plugin '{entry.name}' ({entry.value}) cannot be "
                             f"loaded: {type(exc).__name__}: {exc}") from None
        _PLUGINS_LOADED.add(entry.value)
