"""Subcommands of the ``dynaquant`` CLI, one module each.

A subcommand module exposes ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int``; list it in :data:`dynaquant_brevitas.cli.COMMANDS` to enable it.
"""
