"""Griffe extension: read ``Example:`` sections as examples (code), like ``Examples:``.

The project's docstrings use the singular heading; griffe's Google parser knows only the plural
and would render the doctests as prose.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class SingularExamples(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _HEADING.sub(r"\1Examples:", obj.docstring.value)
