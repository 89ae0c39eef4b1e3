"""``dynaquant encode``: compress one image into a DynaQuant container file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_arch_argument, write_atomic

HELP = "compress an image into a container file (real bitstreams, model id, CRC32)"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "encode",
        help=HELP,
        description=HELP,
        epilog="example: dynaquant encode --checkpoint model.pt kodim01.png -o kodim01.dqic",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH|zoo:NAME:QUALITY", help="model to code with")
    add_arch_argument(p)
    p.add_argument("image", type=Path, help="input image (PNG, JPEG, ...)")
    p.add_argument("-o", "--output", required=True, type=Path, help="container file to write")
    return p


def run(args: argparse.Namespace) -> int:
    from ..io.checkpoint import state_dict_fingerprint
    from ..io.container import pack
    from ..io.images import read_image
    from ..evaluation import encode_image, load_for_eval

    x = read_image(args.image)  # a bad image is refused before the model is loaded
    loaded = load_for_eval(args.checkpoint, args.arch)
    coded = encode_image(loaded.model, x)
    blob = pack(state_dict_fingerprint(loaded.model), coded.size, coded.shape, coded.strings)
    write_atomic(args.output, blob)
    h, w = coded.size
    print(
        f"{args.output}: {len(blob)} bytes ({8 * coded.num_bytes / (h * w):.4f} bpp of bitstreams, {w}x{h})"
    )
    return 0
