"""Start-up time of the ``dynaquant`` command: ``--help`` of the command and of every subcommand.

Each command runs as a fresh process ``--repeats`` times, interleaved; the medians and the
target (every ``--help`` under 1.5 s) go to ``benchmarks/results/cli_startup.json``.

    python benchmarks/cli_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dynaquant_brevitas.cli import COMMANDS  # noqa: E402
from dynaquant_brevitas.io.files import write_json  # noqa: E402

TARGET_S = 1.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "cli_startup.json")
    args = parser.parse_args()
    commands = {"dynaquant --help": ["--help"], **{f"dynaquant {c} --help": [c, "--help"] for c in (n.replace("_", "-") for n in COMMANDS)}}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, argv in commands.items():
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "dynaquant_brevitas", *argv], capture_output=True)
            times[name].append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed: {done.stderr.decode()[-500:]}")
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "command": "python benchmarks/cli_startup.py" + (f" --repeats {args.repeats}" if args.repeats != 7 else ""),
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "repeats": args.repeats,
        "median_s": medians,
        "max_median_s": max(medians.values()),
        "target_s": TARGET_S,
        "target_met": max(medians.values()) < TARGET_S,
    }
    write_json(args.output, result)
    for name, seconds in medians.items():
        print(f"{name:<32} {seconds:.2f} s")
    print(f"slowest {result['max_median_s']:.2f} s (target < {TARGET_S} s): wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
