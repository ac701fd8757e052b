"""``sharpkit plugins``: what is installed, from where, and what failed to load."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.table import Table

from sharpkit.cli._options import JsonOpt
from sharpkit.cli._render import out_console, print_json

if TYPE_CHECKING:
    from sharpkit.registry import Registry


def plugins(json_output: JsonOpt = False) -> None:
    """List installed plugins and their components, and any that failed to load."""
    import warnings

    from sharpkit.errors import SharpkitWarning
    from sharpkit.registry import get_registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SharpkitWarning)  # shown below instead
        reg = get_registry()
        components, conflicts = _components(reg)
        failures = [
            {
                "plugin": f.plugin,
                "distribution": f.distribution,
                "version": f.version,
                "phase": f.phase,
                "error": f.error,
            }
            for f in reg.failures
        ]
        disabled = [p.name for p in reg.plugins if p.status == "disabled"]
    if json_output:
        print_json(
            {
                "components": components,
                "failures": failures,
                "conflicts": conflicts,
                "disabled": disabled,
                "plugins": [
                    {
                        "name": p.name,
                        "distribution": p.distribution,
                        "version": p.version,
                        "status": p.status,
                    }
                    for p in reg.plugins
                ],
            }
        )
        return
    _print_tables(components, failures, conflicts)
    if disabled:
        out_console.print("disabled: " + ", ".join(disabled))


def _components(reg: Registry) -> tuple[list[dict[str, Any]], list[str]]:
    """Every registered component as a row, and the duplicate-name conflicts."""
    from sharpkit.errors import DuplicateNameError
    from sharpkit.registry import KINDS

    components: list[dict[str, Any]] = []
    conflicts: list[str] = []
    for kind in KINDS:
        try:
            specs = reg.specs(kind)
        except DuplicateNameError as exc:
            conflicts.append(str(exc))
            continue
        for name, spec in specs.items():
            rec = reg.provider(kind, name)
            components.append(
                {
                    "kind": kind,
                    "name": f"{name}:<name>"
                    if getattr(spec, "prefix", False)
                    else name,
                    "description": spec.description,
                    "plugin": rec.name,
                    "distribution": rec.distribution,
                    "version": rec.version,
                    "options": [
                        {
                            "name": o.name,
                            "type": o.type.__name__,
                            "default": o.default,
                            "help": o.help,
                            **({"choices": list(o.choices)} if o.choices else {}),
                        }
                        for o in spec.options
                    ],
                }
            )
    return components, conflicts


def _print_tables(
    components: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    conflicts: list[str],
) -> None:
    """The components table, then the problems table if there are any."""
    table = Table(title="sharpkit components")
    for header in ("kind", "name", "description", "options", "provided by"):
        table.add_column(header, overflow="fold")
    for c in components:
        opts = ", ".join(o["name"] for o in c["options"]) or "-"
        by = f"{c['distribution']} {c['version']}" if c["distribution"] else c["plugin"]
        if c["distribution"] and not c["plugin"].startswith("builtin."):
            by += f" ({c['plugin']})"
        table.add_row(c["kind"], c["name"], c["description"], opts, by)
    out_console.print(table)
    if failures or conflicts:
        bad = Table(title="problems", title_style="bold red")
        bad.add_column("plugin")
        bad.add_column("distribution")
        bad.add_column("phase")
        bad.add_column("error", overflow="fold")
        for f in failures:
            dist = f"{f['distribution']} {f['version']}" if f["distribution"] else "-"
            bad.add_row(f["plugin"], dist, f["phase"], f["error"])
        for text in conflicts:
            bad.add_row("-", "-", "duplicate name", text)
        out_console.print(bad)
