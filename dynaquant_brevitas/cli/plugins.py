"""``dynaquant plugins``: what is registered (built in or by installed plugins) and where from."""

from __future__ import annotations

import argparse
import json
from typing import List, Sequence

HELP = "list layer handlers, rounding estimators, selectors and model adapters, built in or from plugins"

EPILOG = """examples:
  dynaquant plugins
  dynaquant plugins --kind estimator --kind handler
  dynaquant plugins --json
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from ..registry import KINDS

    p = subparsers.add_parser(
        "plugins", help=HELP, description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kind", action="append", choices=list(KINDS), help="only this kind (repeatable)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    return p


def rows(kinds: Sequence[str]) -> List[dict]:
    """``{"kind", "name", "value", "source"}`` for every registration of ``kinds`` (installed plugins loaded)."""
    from .. import transform  # noqa: F401  (imports every built-in, so each registers itself)
    from ..registry import load_plugins, registrations

    load_plugins()
    out = []
    for kind in kinds:
        for reg in sorted(registrations(kind).values(), key=lambda r: r.name):
            value = reg.value if isinstance(reg.value, type) or callable(reg.value) else type(reg.value)
            out.append(dict(kind=kind, name=reg.name, value=f"{value.__module__}.{value.__qualname__}", source=reg.source))
    return out


def format_table(table: List[dict]) -> str:
    """Aligned columns KIND, NAME, SOURCE, IMPLEMENTATION."""
    columns = [("KIND", "kind"), ("NAME", "name"), ("SOURCE", "source"), ("IMPLEMENTATION", "value")]
    widths = [max([len(title)] + [len(row[key]) for row in table]) for title, key in columns]
    lines = ["  ".join(title.ljust(w) for (title, _), w in zip(columns, widths)).rstrip()]
    for row in table:
        lines.append("  ".join(row[key].ljust(w) for (_, key), w in zip(columns, widths)).rstrip())
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..registry import KINDS

    table = rows(args.kind or list(KINDS))
    print(json.dumps(table, indent=2) if args.json else format_table(table))
    return 0
