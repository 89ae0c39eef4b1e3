"""Lazy attributes for a package's ``__init__`` (PEP 562): a name is imported on first use.

Importing the package (for the command line, for instance) then costs nothing until a name is
used: ``dynaquant --help`` does not import torch.

Example:
    >>> getattr_, dir_ = lazy_attributes("json", {"dumps": "json"})
    >>> getattr_("dumps")([1])
    '[1]'
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``where`` maps each name to the module defining it
    (relative names like ``".transform"`` are taken from ``package``)."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name], package), name)

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__
