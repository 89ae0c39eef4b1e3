"""Cost of dynamic bit widths: training step against float, selector share, per-sample strategy.

Measures, in one process and interleaved so machine load hits every variant alike:

1. the training-step time (forward, RD + bit loss, backward, Adam step) of ScaleHyperprior in
   float, DynaQuant static 8 bits, and DynaQuant dynamic {4, 6, 8} with per-image choices;
2. the selectors' share of an inference forward (batch 1);
3. for one layer with a mixed batch, our per-sample path (one grouped convolution) against
   running every candidate's convolution on every sample and mixing the outputs.

Usage:
    python benchmarks/dynamic_overhead.py [--quick] [--threads 1] [--output benchmarks/results/dynamic_overhead.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List

import brevitas
import torch
import torch.nn.functional as F
from compressai.models import ScaleHyperprior
from torch import nn

from bench_measure import interleaved_medians
from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, rd_loss
from dynaquant_brevitas.nn.layers import DynaQuantConv2d
from dynaquant_brevitas.quant import BitChoice
from dynaquant_brevitas.quant.fake_quant import use_compiled_kernels

CANDIDATES = (4, 6, 8)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        x_out = model(x)
        rd_loss(x_out, x, lmbda=0.013, gamma=0.01)["loss"].backward()
        optimizer.step()

    return step


def bench_training(n: int, m: int, batch: int, size: int, repeats: int, warmup: int) -> Dict:
    """Float against DynaQuant static 8 and dynamic, with eager and with compiled kernels."""
    torch.manual_seed(0)
    x = torch.rand(batch, 3, size, size)
    float_model = ScaleHyperprior(n, m).train()
    variants = {"float": train_step(float_model, torch.optim.Adam(float_model.parameters(), lr=1e-5), x)}
    for name, candidates in (("dynaquant_static8", (8,)), ("dynaquant_dynamic", CANDIDATES)):
        model = dynaquantize(copy.deepcopy(float_model), DynaQuantConfig(candidate_bits=candidates))
        calibrate(model, [x])
        model.train()
        step = train_step(model, torch.optim.Adam(model.parameters(), lr=1e-5), x)
        variants[f"{name}_eager"] = _with_kernels(step, compiled=False)
        variants[f"{name}_compiled"] = _with_kernels(step, compiled=True)
    for fn in variants.values():  # compile outside the timed loop
        fn()
    medians = interleaved_medians(variants, repeats, warmup)
    return {
        "model": f"ScaleHyperprior({n}, {m})",
        "batch": [batch, 3, size, size],
        "median_step_s": medians,
        "ratio_vs_float": {k: v / medians["float"] for k, v in medians.items()},
    }


def _with_kernels(step: Callable[[], None], compiled: bool) -> Callable[[], None]:
    def run() -> None:
        use_compiled_kernels(compiled)
        step()

    return run


def bench_selector_share(n: int, m: int, size: int, repeats: int) -> Dict:
    torch.manual_seed(0)
    model = dynaquantize(ScaleHyperprior(n, m), DynaQuantConfig(candidate_bits=CANDIDATES))
    x = torch.rand(1, 3, size, size)
    calibrate(model, [x])
    model.eval()
    spent: List[float] = []

    def start(module, inputs):
        module._bench_start = time.perf_counter()

    def stop(module, inputs, output):
        spent.append(time.perf_counter() - module._bench_start)

    for selector in model.dynaquant.selectors.values():
        selector.register_forward_pre_hook(start)
        selector.register_forward_hook(stop)
    forwards, selector_totals = [], []
    with torch.no_grad():
        for i in range(repeats + 1):
            spent.clear()
            t0 = time.perf_counter()
            model(x)
            if i:
                forwards.append(time.perf_counter() - t0)
                selector_totals.append(sum(spent))
    forward, selector = statistics.median(forwards), statistics.median(selector_totals)
    return {
        "image": [1, 3, size, size],
        "median_forward_s": forward,
        "median_selectors_s": selector,
        "selector_share": selector / forward,
    }


def all_candidates_forward(layer: DynaQuantConv2d, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The naive alternative: every candidate's convolution on every sample, outputs mixed."""
    w_quant, a_quant = list(layer.tensor_quants())
    out = 0
    for k, bits in enumerate(CANDIDATES):
        qx = a_quant.fake_quantize(x, bits)
        qw = w_quant.fake_quantize(layer.weight, bits)
        y = F.conv2d(qx, qw, layer.bias, layer.stride, layer.padding)
        out = out + weights[:, k].reshape(-1, 1, 1, 1) * y
    return out


def bench_per_sample(channels: int, batch: int, size: int, repeats: int, warmup: int) -> Dict:
    torch.manual_seed(0)
    layer = DynaQuantConv2d.from_float(nn.Conv2d(channels, channels, 5, stride=2, padding=2), bits=8)
    x = torch.randn(batch, channels, size, size)
    calibrate(layer, [x])
    layer.train()
    logits = torch.zeros(batch, len(CANDIDATES), requires_grad=True)

    def ours() -> None:
        weights = F.gumbel_softmax(logits, hard=True)
        layer.set_bit_choice(BitChoice(CANDIDATES, weights))
        layer(x).square().mean().backward()

    def naive() -> None:
        weights = F.gumbel_softmax(logits, hard=True)
        all_candidates_forward(layer, x, weights).square().mean().backward()

    medians = interleaved_medians({"grouped_conv": ours, "all_candidates": naive}, repeats, warmup)
    return {
        "layer": f"conv {channels}->{channels} 5x5 stride 2",
        "input": [batch, channels, size, size],
        "median_fwd_bwd_s": medians,
        "speedup_vs_all_candidates": medians["all_candidates"] / medians["grouped_conv"],
    }


def machine() -> Dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "brevitas": brevitas.__version__,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/dynamic_overhead.json"))
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 keeps timings stable on a shared machine)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        sizes = dict(n=8, m=12, batch=2, size=64, repeats=3, warmup=1)
    else:
        sizes = dict(n=64, m=96, batch=8, size=128, repeats=7, warmup=2)
    result = {
        "machine": machine(),
        "training_step": bench_training(**sizes),
        "selector_share": bench_selector_share(sizes["n"], sizes["m"], 512 if not args.quick else 64, sizes["repeats"]),
        "per_sample_strategy": bench_per_sample(
            sizes["n"], sizes["batch"], sizes["size"] // 2, sizes["repeats"], sizes["warmup"]
        ),
        "targets": {"training_step_ratio_max": 2.0, "selector_share_max": 0.03},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
