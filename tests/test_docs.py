"""The documentation builds with ``mkdocs build --strict``, lists every page, and its Python runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"


def _nav_pages(nav) -> set:
    pages = set()
    for item in nav:
        for value in (item.values() if isinstance(item, dict) else [item]):
            pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the dev extra")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is in the dev extra")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "usage: dynaquant plugins" in cli and "usage: dynaquant train" in cli  # generated from the parsers
    plugins = (tmp_path / "site" / "plugins" / "index.html").read_text()
    assert "dynaquant_brevitas.quant.rounding.DGMRound" in plugins  # generated from the registry
    api = (tmp_path / "site" / "api" / "transform" / "index.html").read_text()
    assert "dynaquantize" in api and "&lt;!-- dynaquant:" not in cli


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "hooks" not in p.parts}
    nav = _nav_pages(config["nav"])
    assert not pages - nav, f"pages missing from the nav in mkdocs.yml: {sorted(pages - nav)}"
    assert not nav - pages, f"nav entries without a page: {sorted(nav - pages)}"


def test_quickstart_page_code_runs():
    text = (DOCS / "quickstart.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks, "the quickstart page shows Python"
    namespaces = []
    for block in blocks:
        namespaces.append({})
        exec(compile(block, "docs/quickstart.md", "exec"), namespaces[-1])
    assert namespaces[0]["penalty"].item() > 0
    assert all(namespace["coded"]["strings"] for namespace in namespaces)
