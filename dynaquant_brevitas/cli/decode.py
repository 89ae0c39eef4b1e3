"""``dynaquant decode``: decompress a DynaQuant container file into an image."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_arch_argument

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
    add_arch_argument(p)
    p.add_argument("file", type=Path, help="container file written by dynaquant encode")
    p.add_argument("-o", "--output", required=True, type=Path, help="image to write (PNG recommended)")
    return p


def run(args: argparse.Namespace) -> int:
    import time

    from ..evaluation import decode_image, load_for_eval
    from ..io.checkpoint import state_dict_fingerprint
    from ..io.container import ContainerError, read_container_file, unpack
    from ..io.files import check_distinct
    from ..io.images import write_image

    check_distinct(args.output, args.file, args.checkpoint)
    data = read_container_file(args.file)
    loaded = load_for_eval(args.checkpoint, args.arch)
    start = time.perf_counter()
    try:
        box = unpack(data, expected_model_id=state_dict_fingerprint(loaded.model))
        x_hat = decode_image(loaded.model, box.strings, box.shape, box.size)
    except ContainerError as err:
        raise ContainerError(f"{args.file}: {err}") from err
    write_image(x_hat, args.output)  # only a fully decoded image is written
    height, width = box.size
    print(f"{args.output}: {width}x{height} from {len(data)} bytes ({8 * len(data) / (height * width):.4f} bpp), "
          f"{time.perf_counter() - start:.2f} s")
    return 0
