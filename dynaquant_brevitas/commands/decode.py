"""``dynaquant decode``: decompress a DynaQuant container file into an image."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "decompress a container file into an image (refuses damaged files and the wrong model)"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "decode",
        help=HELP,
        description=HELP,
        epilog="example: dynaquant decode --checkpoint model.pt kodim01.dqic -o kodim01.png",
    )
    p.add_argument(
        "--checkpoint", required=True, metavar="PATH|zoo:NAME:QUALITY", help="model the file was encoded with"
    )
    p.add_argument("file", type=Path, help="container file written by dynaquant encode")
    p.add_argument("-o", "--output", required=True, type=Path, help="image to write (PNG recommended)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import state_dict_fingerprint
    from ..container import unpack
    from ..data import write_image
    from ..evaluate import decode_image, load_for_eval

    data = args.file.read_bytes()
    loaded = load_for_eval(args.checkpoint)
    box = unpack(data, expected_model_id=state_dict_fingerprint(loaded.model))
    write_image(decode_image(loaded.model, box.strings, box.shape, box.size), args.output)
    print(f"{args.output}: {box.size[1]}x{box.size[0]}")
    return 0
