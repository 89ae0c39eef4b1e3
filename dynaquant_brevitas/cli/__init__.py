"""The ``dynaquant`` command line: a parser with one subcommand per module in :mod:`.commands`.

To add a subcommand, write ``cli/NAME.py`` with ``add_parser(subparsers)`` and ``run(args) -> int``
and append ``"NAME"`` to :data:`COMMANDS` (``fit_selector.py`` is ``dynaquant fit-selector``). Command modules import the library inside ``run``, so
``--help`` answers without importing torch.

Example:
    >>> args = build_parser().parse_args(["eval", "--checkpoint", "m.pt", "--images", "kodak", "-o", "r.json"])
    >>> args.command, args.checkpoint
    ('eval', ['m.pt'])
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from types import ModuleType

#: Subcommand modules under ``dynaquant_brevitas.cli``, in help order.
COMMANDS: tuple[str, ...] = ("demo", "train", "quantize", "eval", "sensitivity", "fit_selector", "encode", "decode", "plot", "export", "plugins")

#: Exit status for errors in the user's input (bad file, bad config, refused container).
EXIT_USER_ERROR = 2


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..io.checkpoint import CheckpointError
    from ..io.files import LockedError

    return (ValueError, OSError, CheckpointError, LockedError)


def load_commands() -> dict[str, ModuleType]:
    """The subcommand modules by name."""
    return {name: importlib.import_module(f"{__name__}.{name}") for name in COMMANDS}


def build_parser(commands: dict[str, ModuleType] | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    from importlib.metadata import version

    parser = argparse.ArgumentParser(
        prog="dynaquant",
        description="DynaQuant: dynamic mixed-precision quantization of CompressAI image codecs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('dynaquant-brevitas')}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (commands or load_commands()).values():
        module.add_parser(sub).set_defaults(_run=module.run)
    return parser


def quiet_dependencies() -> None:
    """Silence notices of dependencies that a user of this command cannot act on: torch's "No CUDA
    runtime is found" on CPU machines, optional-package and deprecation notices of Brevitas and
    CompressAI about themselves."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dynaquant`` console script; returns the exit status."""
    quiet_dependencies()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("dynaquant: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        if args.debug:
            traceback.print_exc()
        print(f"dynaquant {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as err:  # a bug: still no raw traceback unless asked for
        if args.debug or os.environ.get("DYNAQUANT_DEBUG"):
            traceback.print_exc()
        print(
            f"dynaquant {args.command}: internal error: {type(err).__name__}: {err} "
            "(rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
