"""MkDocs hook: pages whose content is generated at build time, so it cannot drift.

* ``<!-- dynaquant:cli -->``: ``--help`` of the ``dynaquant`` command and every subcommand;
* ``<!-- dynaquant:registry -->``: what ``dynaquant plugins`` lists (built-ins and any installed plugin);
* ``<!-- dynaquant:results -->``: every committed results file (``benchmarks/results/*.json``,
  ``dynaquant eval`` results beside the reference checkpoints), its scalar values.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, List, Tuple

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ("checkpoints/reference/*.json", "benchmarks/results/*.json")
MAX_ROWS = 80


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for marker, render in (("cli", cli_reference), ("registry", registry_table), ("results", results_tables)):
        tag = f"<!-- dynaquant:{marker} -->"
        if tag in markdown:
            markdown = markdown.replace(tag, render())
    return markdown


def cli_reference() -> str:
    from dynaquant_brevitas.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal width
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    parts = ["## dynaquant", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, subparser in sub.choices.items():
        parts += [f"## dynaquant {name}", "", "```text", subparser.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def registry_table() -> str:
    from dynaquant_brevitas.commands.plugins import rows
    from dynaquant_brevitas.plugins import KINDS

    lines = ["| kind | name | implementation | source |", "|---|---|---|---|"]
    for row in rows(list(KINDS)):
        lines.append(f"| {row['kind']} | `{row['name']}` | `{row['value']}` | {row['source']} |")
    return "\n".join(lines)


def committed_results() -> List[Path]:
    """The results files known to git (every match, outside a git checkout)."""
    try:
        out = subprocess.run(["git", "ls-files", *RESULTS], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
        return [ROOT / line for line in out.split()]
    except (OSError, subprocess.CalledProcessError):
        return sorted(path for pattern in RESULTS for path in ROOT.glob(pattern))


def scalars(data: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """``(dotted.key, value)`` for every number, string and boolean; lists of numbers are skipped."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from scalars(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list):
        if len(data) <= 4 and all(not isinstance(v, (dict, list)) for v in data):
            yield prefix, data
    else:
        yield prefix, data


def results_tables() -> str:
    parts = []
    for path in committed_results():
        rel = path.relative_to(ROOT).as_posix()
        rows = list(scalars(json.loads(path.read_text())))
        parts += [f"### `{rel}`", "", "| key | value |", "|---|---|"]
        for key, value in rows[:MAX_ROWS]:
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            parts.append(f"| `{key}` | {text.replace('|', '/')} |")
        if len(rows) > MAX_ROWS:
            parts.append(f"| ... | {len(rows) - MAX_ROWS} more entries in `{rel}` |")
        parts.append("")
    return "\n".join(parts) if parts else "No results file is committed yet."
