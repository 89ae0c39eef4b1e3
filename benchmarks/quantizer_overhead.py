"""Forward+backward cost of DynaQuant's quantizers against Brevitas's stock 8-bit ones and float.

One 3x3 convolution, 64 -> 64 channels, batch 8 of 64x64, in training mode:

* ``float``:   ``nn.Conv2d``
* ``brevitas``: ``QuantConv2d`` with ``Int8WeightPerTensorFloat`` + ``Int8ActPerTensorFloat``
* ``dynaquant``: ``QuantConv2d`` with ``DynaWeightQuant`` + ``DynaActQuant``
* ``dynaquant-per-image-capped``, ``dynaquant-per-image-adaptive``: the same with the activation
  grid set per image (``DynaActQuant.let(image_range=...)``, what ``activation_range`` selects)

Both quantized layers are first brought to their steady state: Brevitas's activation quantizer
gathers percentile statistics for its first ``collect_stats_steps`` training calls and DynaQuant's
for its first ``calibration_batches``; that phase runs forward-only on one-sample slices of the
input (the statistics phase is what is skipped, not timed). Then every variant gets full-size
warm-up steps, and the timed steps interleave the variants in a rotating order so that machine
load affects all of them alike. Reported: per-variant median, quartiles and min, and ratios of
medians. Results go to ``benchmarks/results/quantizer_overhead.json``.

Usage::

    python benchmarks/quantizer_overhead.py [--threads 1] [--repeats 21] [--profile]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import brevitas
import torch
from brevitas.nn import QuantConv2d
from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerTensorFloat
from torch import nn

from dynaquant_brevitas import DynaActQuant, DynaWeightQuant
from dynaquant_brevitas.io.files import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "quantizer_overhead.json"
TARGET_RATIO = 1.3
SHAPE = (8, 64, 64, 64)
IMAGE_RANGE_VARIANTS = ("per-image-capped", "per-image-adaptive")


def build_layers() -> Dict[str, nn.Module]:
    torch.manual_seed(0)
    conv = dict(in_channels=64, out_channels=64, kernel_size=3, padding=1)
    layers = {
        "float": nn.Conv2d(**conv),
        "brevitas": QuantConv2d(**conv, weight_quant=Int8WeightPerTensorFloat, input_quant=Int8ActPerTensorFloat),
        "dynaquant": QuantConv2d(**conv, weight_quant=DynaWeightQuant, input_quant=DynaActQuant),
    }
    for mode in IMAGE_RANGE_VARIANTS:
        layers[f"dynaquant-{mode}"] = QuantConv2d(**conv, weight_quant=DynaWeightQuant,
                                                  input_quant=DynaActQuant.let(image_range=mode))
    for layer in layers.values():
        layer.train()
    return layers


def stats_steps_needed(layers: Dict[str, nn.Module]) -> Dict[str, int]:
    """Training-mode calls each quantized layer needs before it leaves its statistics phase."""
    stock = layers["brevitas"].input_quant.quant_injector.collect_stats_steps
    ours = {n: int(l.input_quant.fused_activation_quant_proxy.tensor_quant.calibration_batches)
            for n, l in layers.items() if n.startswith("dynaquant")}
    return {"brevitas": int(stock) + 1, **ours}


def in_steady_state(layers: Dict[str, nn.Module]) -> Dict[str, bool]:
    stock = layers["brevitas"].input_quant.fused_activation_quant_proxy.tensor_quant.scaling_impl
    ours = {n: l.input_quant.fused_activation_quant_proxy.tensor_quant for n, l in layers.items()
            if n.startswith("dynaquant")}
    return {"brevitas": stock.counter > stock.collect_stats_steps,
            **{n: int(q.observed_batches) >= q.calibration_batches for n, q in ours.items()}}


def make_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        out = layer(x)
        out.backward(grad)

    return step


def make_inference(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A forward call in eval mode without autograd (what a codec does when it codes)."""
    layer.eval()

    def call() -> None:
        with torch.no_grad():
            layer(x)

    return call


def interleaved(calls: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, List[float]]:
    """Wall times of ``repeats`` calls of each, one of each per round in a rotating order."""
    names = list(calls)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return times


def code_version() -> dict:
    """Which dynaquant_brevitas was measured: its path, and the git commit and dirty state if any."""
    import subprocess

    import dynaquant_brevitas

    package = Path(dynaquant_brevitas.__file__).resolve().parent
    info = {"package": str(package), "git_commit": None, "package_dirty": None}
    try:
        git = ["git", "-C", str(package)]
        info["git_commit"] = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(git + ["status", "--porcelain", "."], capture_output=True, text=True, check=True).stdout
        info["package_dirty"] = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def run(threads: int, repeats: int, warmup: int, profile: bool) -> dict:
    torch.set_num_threads(threads)
    layers = build_layers()
    x = torch.randn(*SHAPE, requires_grad=True)
    grad = torch.randn(SHAPE[0], 64, SHAPE[2], SHAPE[3])

    # Statistics phase: forward-only, one sample at a time, until both quantizers are learned.
    needed = stats_steps_needed(layers)
    t0 = time.perf_counter()
    with torch.no_grad():
        for name, calls in needed.items():
            for i in range(calls):
                layers[name](x[i % SHAPE[0] : i % SHAPE[0] + 1])
    stats_seconds = time.perf_counter() - t0
    steady = in_steady_state(layers)
    assert all(steady.values()), steady

    steps = {name: make_step(layer, x, grad) for name, layer in layers.items()}
    for _ in range(warmup):
        for step in steps.values():
            step()

    load_before = os.getloadavg()
    times = interleaved(steps, repeats)
    inference = {name: make_inference(layer, x.detach()) for name, layer in layers.items()}
    for _ in range(warmup):
        for call in inference.values():
            call()
    inference_times = interleaved(inference, repeats)
    load_after = os.getloadavg()

    def summary(values: List[float]) -> dict:
        q = statistics.quantiles(values, n=4)
        return {"median_s": statistics.median(values), "q1_s": q[0], "q3_s": q[2], "min_s": min(values), "runs_s": values}

    medians = {name: statistics.median(v) for name, v in times.items()}
    ratio = medians["dynaquant"] / medians["brevitas"]
    result = {
        "benchmark": "QuantConv2d 64->64, 3x3, padding 1, batch 8 of 64x64, train mode, forward+backward "
        "(input requires grad; no optimizer step)",
        "variants": {
            "float": "torch.nn.Conv2d",
            "brevitas": "QuantConv2d(weight_quant=Int8WeightPerTensorFloat, input_quant=Int8ActPerTensorFloat)",
            "dynaquant": "QuantConv2d(weight_quant=DynaWeightQuant, input_quant=DynaActQuant)",
            **{f"dynaquant-{m}": f"dynaquant with input_quant=DynaActQuant.let(image_range={m!r})"
               for m in IMAGE_RANGE_VARIANTS},
        },
        "method": {
            "statistics_phase": (
                f"before timing, forward-only training-mode calls on 1-sample slices until both quantizers leave "
                f"their statistics phase: brevitas {needed['brevitas']} calls (collect_stats_steps + 1), "
                f"dynaquant {needed['dynaquant']} (calibration_batches); took {stats_seconds:.1f} s"
            ),
            "steady_state_verified": steady,
            "warmup_steps_per_variant": warmup,
            "timed_steps_per_variant": repeats,
            "interleaving": "one step of each variant per round, order rotated every round",
            "statistic": "median of per-step wall time (time.perf_counter)",
        },
        "results": {name: summary(v) for name, v in times.items()},
        "inference": {
            "what": "the same layers in eval mode, forward only under torch.no_grad, timed after the training steps",
            "results": {name: summary(v) for name, v in inference_times.items()},
            "ratios_of_medians_over_dynaquant": {
                name: statistics.median(v) / statistics.median(inference_times["dynaquant"])
                for name, v in inference_times.items()},
        },
        "ratios_of_medians": {
            "dynaquant_over_brevitas": ratio,
            "dynaquant_over_float": medians["dynaquant"] / medians["float"],
            "brevitas_over_float": medians["brevitas"] / medians["float"],
            **{f"dynaquant_{m.replace('-', '_')}_over_dynaquant": medians[f"dynaquant-{m}"] / medians["dynaquant"]
               for m in IMAGE_RANGE_VARIANTS},
        },
        "target": {"dynaquant_over_brevitas_at_most": TARGET_RATIO, "met": ratio <= TARGET_RATIO},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "torch": torch.__version__,
            "brevitas": brevitas.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
            "note": "CPU shared with other processes; compare ratios, not absolute times",
        },
        "code": code_version(),
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if profile:  # the training step, so back in training mode
        for layer in layers.values():
            layer.train()
        result["profile"] = {name: profile_step(steps[name]) for name in ("brevitas", "dynaquant")}
    return result


def profile_step(step: Callable[[], None], rows: int = 12) -> str:
    """Top operators by self CPU time over a few steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=21, help="timed steps per variant (>= 5)")
    parser.add_argument("--warmup", type=int, default=5, help="full-size warm-up steps per variant")
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default=None, help="free text stored in the JSON (e.g. which checkout)")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    result = run(args.threads, args.repeats, args.warmup, args.profile)
    tables = result.pop("profile", None)
    if args.note:
        result["note"] = args.note
    write_json(args.out, result)
    for name, r in result["results"].items():
        print(f"{name:>28}: median {r['median_s'] * 1e3:8.1f} ms  (q1 {r['q1_s'] * 1e3:.1f}, q3 {r['q3_s'] * 1e3:.1f})")
    for name, value in result["ratios_of_medians"].items():
        print(f"{name}: {value:.3f}")
    for name, value in result["inference"]["ratios_of_medians_over_dynaquant"].items():
        print(f"inference {name} / dynaquant: {value:.3f}")
    print(f"target dynaquant/brevitas <= {TARGET_RATIO}: {'met' if result['target']['met'] else 'MISSED'}")
    for name, table in (tables or {}).items():
        print(f"\n== {name} ==\n{table}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
