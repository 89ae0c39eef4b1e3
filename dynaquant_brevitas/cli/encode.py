"""``dynaquant encode``: compress one image into a DynaQuant container file."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_arch_argument

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
    import time

    from ..evaluation import encode_image, load_for_eval
    from ..io.checkpoint import state_dict_fingerprint
    from ..io.container import pack
    from ..io.files import check_distinct, write_atomic
    from ..io.images import read_image

    check_distinct(args.output, args.image, args.checkpoint)
    x = read_image(args.image)  # a bad image is refused before the model is loaded
    loaded = load_for_eval(args.checkpoint, args.arch)
    start = time.perf_counter()
    coded = encode_image(loaded.model, x)
    blob = pack(state_dict_fingerprint(loaded.model), coded.size, coded.shape, coded.strings)
    write_atomic(args.output, blob)
    height, width = coded.size
    print(f"{args.output}: {len(blob)} bytes ({8 * len(blob) / (height * width):.4f} bpp), {width}x{height}, "
          f"{time.perf_counter() - start:.2f} s")
    return 0
