"""The package's layers import one way, and no module imports another in a loop.

Every import counts, those inside functions too. The layers, bottom up (a module may import its
own layer and those below; ``training`` and ``evaluation`` are siblings that do not import each
other)::

    registry  <-  quant  <-  nn  <-  transform  <-  io  <-  training | evaluation  <-  export  <-  cli
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dynaquant_brevitas"
TOP = "dynaquant_brevitas"

#: first name under the package -> (level, group)
LAYERS = {
    "_lazy": (0, "base"),
    "registry": (0, "base"),
    "memory": (0, "base"),
    "quant": (1, "quant"),
    "nn": (2, "nn"),
    "transform": (3, "transform"),
    "io": (4, "io"),
    "training": (5, "training"),
    "evaluation": (5, "evaluation"),
    "export": (6, "export"),
    "cli": (7, "cli"),
    "__main__": (7, "cli"),
}


def modules(package: Path) -> dict[str, Path]:
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """``(module, line)`` of every package module ``name`` imports (function bodies included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{alias.name}" for alias in node.names] + [target]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node.lineno))
                break
    return found


def layer_of(module: str) -> tuple[int, str] | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def violations(package: Path) -> list[str]:
    """Upward or sideways imports between layers, imports of the package's lazy face, and cycles."""
    known = modules(package)
    problems, edges = [], {}
    for name, path in known.items():
        edges[name] = set()
        for target, line in imports(name, path, known):
            edges[name].add(target)
            where = f"{path.relative_to(package.parent)}:{line}"
            if target == TOP and name != TOP:
                problems.append(f"{where}: imports the package's lazy face; import the module that defines the name")
                continue
            source_layer, target_layer = layer_of(name), layer_of(target)
            if source_layer is None or target_layer is None:
                continue
            if target_layer[0] > source_layer[0] or (target_layer[0] == source_layer[0] and target_layer[1] != source_layer[1]):
                problems.append(f"{where}: {name} ({source_layer[1]}) imports {target} ({target_layer[1]}), against the layers")
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_every_subpackage_has_a_layer():
    names = {module.split(".")[1] for module in modules(PACKAGE) if "." in module}
    assert names <= set(LAYERS), sorted(names - set(LAYERS))


def test_the_package_imports_one_way_without_cycles():
    assert violations(PACKAGE) == []


@pytest.mark.parametrize(
    "file, line",
    [
        ("quant/fake_quant.py", "from ..cli import main\n"),  # upward, at module level
        ("transform/plan.py", "def f():\n    from ..training import train\n"),  # upward, inside a function
        ("training/loss.py", "from ..evaluation import psnr\n"),  # sideways, between siblings
    ],
)
def test_the_check_catches_an_upward_import(tmp_path, file, line):
    copy = shutil.copytree(PACKAGE, tmp_path / TOP, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / file, "a") as f:
        f.write("\n" + line)
    found = violations(copy)
    assert any(file in problem and "against the layers" in problem for problem in found), found
