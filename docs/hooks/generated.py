"""MkDocs hook: pages whose content is generated at build time, so it cannot drift.

* ``<!-- dynaquant:cli -->``: ``--help`` of the ``dynaquant`` command and every subcommand;
* ``<!-- dynaquant:registry -->``: what ``dynaquant plugins`` lists (built-ins and any installed plugin);
* ``<!-- dynaquant:results -->``: every committed results file (``benchmarks/results/*.json``,
  ``dynaquant eval`` results beside the reference checkpoints), its scalar values;
* ``<!-- dynaquant:comparison -->``: the methods of ``benchmarks/run.py`` and, once committed,
  its ``benchmarks/results/summary.json`` as the comparison table (the same renderer writes
  ``summary.md``), with the meaning of every field.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List, Tuple

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ("checkpoints/reference/*.json", "benchmarks/results/*.json")
MAX_ROWS = 80
COMPARISON = "benchmarks/results/summary.json"  # rendered as a table, not as key/value pairs


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    renderers = (("cli", cli_reference), ("registry", registry_table), ("results", results_tables),
                 ("comparison", comparison_section))
    for marker, render in renderers:
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
    from dynaquant_brevitas.cli.plugins import rows
    from dynaquant_brevitas.registry import KINDS

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
        if rel == COMPARISON:
            continue
        rows = list(scalars(json.loads(path.read_text())))
        parts += [f"### `{rel}`", "", "| key | value |", "|---|---|"]
        for key, value in rows[:MAX_ROWS]:
            text = f"{value:.4g}" if isinstance(value, float) else str(value)
            parts.append(f"| `{key}` | {text.replace('|', '/')} |")
        if len(rows) > MAX_ROWS:
            parts.append(f"| ... | {len(rows) - MAX_ROWS} more entries in `{rel}` |")
        parts.append("")
    return "\n".join(parts) if parts else "No results file is committed yet."


def _benchmark_module(name: str) -> Any:
    folder = str(ROOT / "benchmarks")
    sys.path.insert(0, folder)  # the benchmark modules import each other by name
    try:
        spec = importlib.util.spec_from_file_location(f"_docs_{name}", ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(folder)


def comparison_section() -> str:
    methods = _benchmark_module("bench_methods")
    report = _benchmark_module("bench_report")
    parts = ["### Methods", "", "| method | what |", "|---|---|"]
    parts += [f"| `{m.name}` | {m.description} |" for m in methods.METHODS]
    parts += ["", "### Results", ""]
    summary_path = ROOT / COMPARISON
    if summary_path in committed_results():
        summary = json.loads(summary_path.read_text())
        parts += [report.markdown_table(summary), ""]
    else:
        parts += [
            "No full run is committed yet (`benchmarks/results/summary.json` is absent): the reference family "
            "q2-q5 is still being trained, and the run takes hours. `make bench` produces it; "
            "`make bench-quick` runs the same pipeline in a few minutes on tiny settings.",
            "",
        ]
    parts += ["### Fields of `summary.json`", "", "| field | meaning and measurement |", "|---|---|"]
    parts += [f"| `{name}` | {text} |" for name, text in report.FIELDS.items()]
    return "\n".join(parts)
