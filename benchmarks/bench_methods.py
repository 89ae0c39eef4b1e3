"""The methods compared by ``benchmarks/run.py`` and how each one's model is obtained.

Every quantization-aware method starts from the same float reference checkpoint and is
fine-tuned with the same steps, learning rate, data and data order by the library's own loop
(``dynaquant_brevitas.training.train``); Brevitas's stock quantizers come in through its
``prepare`` argument.
The fixed-precision layers (first module of ``g_a``/``g_s``, hyper transforms) stay at 8 bits
in every quantized method; GDN/IGDN and the entropy models stay float (the plan of
``dynaquant_brevitas.transform.plan_quantization``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from dynaquant_brevitas.io.checkpoint import load_checkpoint
from dynaquant_brevitas.training import FINAL, LAST, TrainConfig, train
from dynaquant_brevitas.transform import DynaQuantConfig


@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        name: the row's name.
        kind: ``float`` (the reference itself), ``float-ft`` (the reference fine-tuned in float with
            the same recipe as the quantized methods: the fair anchor), ``dynaquant`` (``dynaquantize`` + QAT with
            ``train()``), ``brevitas`` (Brevitas's stock int8 quantizers + QAT) or ``ptq``
            (``dynaquantize`` + calibration, no training).
        description: one line for the tables.
        quant: ``DynaQuantConfig`` fields (``dynaquant`` and ``ptq`` kinds).
        schedule: training settings of the ``quant`` section (e.g. ``target_bits``).
    """

    name: str
    kind: str
    description: str
    quant: Dict[str, Any] = field(default_factory=dict)
    schedule: Dict[str, Any] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        return self.kind in ("float-ft", "dynaquant", "brevitas")

    @property
    def dynamic(self) -> bool:
        return len(self.quant.get("candidate_bits", ())) > 1

    def spec(self) -> Dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "quant": self.quant, "schedule": self.schedule}


def _dq(candidates, **extra) -> Dict[str, Any]:
    return {"candidate_bits": list(candidates), "fixed_bits": 8, **extra}


def _target(bits: float) -> Dict[str, Any]:
    return {"target_bits": bits}


METHODS: List[Method] = [
    Method("float", "float", "float reference (the anchor)"),
    Method("float-finetuned", "float-ft",
           "float reference fine-tuned in float with the quantized methods' recipe (same steps, data, lr)"),
    Method(
        "brevitas-int8",
        "brevitas",
        "Brevitas stock int8: Int8WeightPerChannelFloat weights, Int8ActPerTensorFloat inputs, STE",
    ),
    Method("lsq-int6", "dynaquant", "LSQ int6: learned per-channel step, STE, no offsets",
           _dq((6,), rounding="ste", learn_offset=False)),
    Method("lsq-int4", "dynaquant", "LSQ int4: learned per-channel step, STE, no offsets",
           _dq((4,), rounding="ste", learn_offset=False)),
    Method("dynaquant-int8", "dynaquant", "DynaQuant static int8: content-aware scale and offset, DGM", _dq((8,))),
    Method("dynaquant-int8-pt", "dynaquant",
           "DynaQuant static int8 with one activation step per tensor (integer kernels in onnxruntime, exact FINN path)",
           _dq((8,), activation_per_channel=False)),
    Method("dynaquant-int6", "dynaquant", "DynaQuant static int6: content-aware scale and offset, DGM", _dq((6,))),
    Method("dynaquant-dyn-468-t6", "dynaquant", "DynaQuant dynamic {4,6,8}, target 6.0 bits",
           _dq((4, 6, 8)), _target(6.0)),
    Method("dynaquant-dyn-468-t5", "dynaquant", "DynaQuant dynamic {4,6,8}, target 5.0 bits",
           _dq((4, 6, 8)), _target(5.0)),
    Method("dynaquant-dyn-6810-t7", "dynaquant", "DynaQuant dynamic {6,8,10}, target 7.0 bits",
           _dq((6, 8, 10)), _target(7.0)),
    Method("dynaquant-dyn-6810-t8", "dynaquant", "DynaQuant dynamic {6,8,10}, target 8.0 bits",
           _dq((6, 8, 10)), _target(8.0)),
    Method("ablation-int8-ste", "dynaquant", "ablation: DynaQuant int8 with STE instead of DGM",
           _dq((8,), rounding="ste")),
    Method("ablation-int8-no-offset", "dynaquant", "ablation: DynaQuant int8 without learned offsets",
           _dq((8,), learn_offset=False)),
    Method("ablation-int8-no-scale", "dynaquant", "ablation: DynaQuant int8 without learned scales",
           _dq((8,), learn_range=False)),
    Method("ablation-int6-ste", "dynaquant", "ablation: DynaQuant int6 with STE instead of DGM",
           _dq((6,), rounding="ste")),
    Method("dynaquant-int6-beta4", "dynaquant", "DynaQuant static int6 with a sharper DGM (beta 4 instead of 1)",
           _dq((6,), beta=4.0)),
    Method("ptq-int8", "ptq", "post-training int8: DynaQuant quantizers, calibration only, no fine-tuning", _dq((8,))),
]

BY_NAME = {m.name: m for m in METHODS}


def select(names: Optional[str]) -> List[Method]:
    """The methods named in a comma-separated list (all when ``None`` or ``"all"``), in table order."""
    if not names or names.strip() == "all":
        return list(METHODS)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {', '.join(BY_NAME)}")
    return [m for m in METHODS if m.name in wanted]


# --------------------------------------------------------------------------- training configs


def train_config(method: Method, reference: Dict[str, Any], train: Dict[str, Any], output: Path) -> TrainConfig:
    """The ``TrainConfig`` of one (method, quality): identical for every method but ``quant.config``."""
    steps = int(train["steps"])
    quant: Dict[str, Any] = {"config": None}
    if method.kind in ("dynaquant", "ptq"):
        config = dict(method.quant, calibration_batches=int(train["calibration_batches"]))
        quant = {"config": config, **method.schedule}
        if len(config["candidate_bits"]) > 1:
            # the Gumbel temperature reaches its end value at 80 % of the run, as in configs/dynaquant
            quant["tau_decay_steps"] = max(1, int(0.8 * steps))
    return TrainConfig.from_dict(
        {
            "data": {"root": str(train["data"]), "patch_size": int(train["patch_size"]),
                     "batch_size": int(train["batch_size"]), "workers": 0},
            "train": {
                "init_from": str(reference["checkpoint"]),
                "steps": steps,
                "lr": float(train["lr"]),
                "aux_lr": 1e-3,
                "lr_drop_at": 0.8,
                "lr_drop_factor": 0.1,
                "lmbda": float(reference["lmbda"]),
                "metric": "mse",
                "clip_max_norm": 1.0,
                "seed": int(train["seed"]),
                "checkpoint_every": min(500, steps),
                "log_every": min(50, steps),
                "output": str(output),
                "device": "cpu",
                "threads": 1,
                "progress": False,
            },
            "quant": quant,
        }
    )


# --------------------------------------------------------------------------- Brevitas stock int8


def quantized_layer_names(model: nn.Module) -> List[str]:
    """The layers DynaQuant quantizes (fixed and dynamic ones), from its own plan."""
    from dynaquant_brevitas.transform import plan_quantization

    return plan_quantization(model, DynaQuantConfig(candidate_bits=(8,))).quantized


def brevitas_int8(model: nn.Module) -> nn.Module:
    """Swap DynaQuant's layers for Brevitas's stock int8 layers, in place; weights are copied.

    Weights ``Int8WeightPerChannelFloat`` (per output channel, scale from ``max |w|``), inputs
    ``Int8ActPerTensorFloat`` (per tensor, scale from percentile statistics, then learned),
    straight-through rounding; outputs stay float so GDN and the entropy models see plain tensors.
    """
    from brevitas.nn import QuantConv2d, QuantConvTranspose2d, QuantLinear
    from brevitas.quant import Int8ActPerTensorFloat, Int8WeightPerChannelFloat

    quant = dict(weight_quant=Int8WeightPerChannelFloat, input_quant=Int8ActPerTensorFloat,
                 return_quant_tensor=False)
    for name in quantized_layer_names(model):
        f = model.get_submodule(name)
        bias = f.bias is not None
        if type(f) is nn.ConvTranspose2d:
            q = QuantConvTranspose2d(f.in_channels, f.out_channels, f.kernel_size, stride=f.stride,
                                     padding=f.padding, output_padding=f.output_padding, dilation=f.dilation,
                                     groups=f.groups, bias=bias, **quant)
        elif type(f) is nn.Conv2d:
            q = QuantConv2d(f.in_channels, f.out_channels, f.kernel_size, stride=f.stride, padding=f.padding,
                            dilation=f.dilation, groups=f.groups, padding_mode=f.padding_mode, bias=bias, **quant)
        elif type(f) is nn.Linear:
            q = QuantLinear(f.in_features, f.out_features, bias=bias, **quant)
        else:
            raise TypeError(f"brevitas-int8 baseline: no stock Brevitas layer for {name} ({type(f).__name__})")
        q.to(f.weight.device)
        with torch.no_grad():
            q.weight.copy_(f.weight)
            if bias:
                q.bias.copy_(f.bias)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, q)
    return model


def quantized_layer_names_of(model: nn.Module) -> List[str]:
    from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer

    return [n for n, m in model.named_modules() if isinstance(m, QuantWeightBiasInputOutputLayer)]


@torch.no_grad()
def calibrate_brevitas(model: nn.Module, samples) -> None:
    """Brevitas's own calibration (``calibration_mode``) of the activation scales.

    Entered per quantized layer: CompressAI's ``EntropyBottleneck`` has a float ``init_scale``
    attribute that Brevitas's whole-model finalisation would try to call.
    """
    from brevitas.graph.calibrate import calibration_mode

    was_training = model.training
    model.eval()
    with contextlib.ExitStack() as stack:
        for name in quantized_layer_names_of(model):
            stack.enter_context(calibration_mode(model.get_submodule(name)))
        for x in samples:
            model(x)
    model.train(was_training)


def brevitas_from_checkpoint(reference: str, checkpoint: Path) -> nn.Module:
    """Rebuild a trained brevitas-int8 model: the float reference, swapped, with the trained weights."""
    from dynaquant_brevitas.io.checkpoint import load_model

    model = brevitas_int8(load_model(reference))
    model.load_state_dict(load_checkpoint(checkpoint)["state_dict"])
    return model.eval()


def brevitas_prepare(model: nn.Module, cfg: TrainConfig, batches, calibration_batches: int) -> nn.Module:
    """``train``'s ``prepare`` for the baseline: Brevitas's stock int8 layers, calibrated on a fresh
    start on as many training batches as DynaQuant's quantizers get."""
    model = brevitas_int8(model)
    if batches is not None:
        calibrate_brevitas(model, [next(batches) for _ in range(calibration_batches)])
    return model


def train_method(method: Method, cfg: TrainConfig, calibration_batches: int) -> Path:
    """Fine-tune with the library's loop (resuming an interrupted run); returns ``final.pt``."""
    out = Path(cfg.train.output)
    if not (out / FINAL).exists():
        prepare = {}
        if method.kind == "brevitas":
            prepare = {"prepare": functools.partial(brevitas_prepare, calibration_batches=calibration_batches)}
        train(cfg, resume=(out / LAST).exists(), overwrite=True, **prepare)
    return out / FINAL


def obtain_model(method: Method, reference: Dict[str, Any], cfg: Optional[TrainConfig],
                 calibration_batches: int = 8) -> Dict[str, Any]:
    """The evaluable model of one (method, quality), training it first if needed.

    Returns ``{"model", "checkpoint", "train_seconds"}``; ``train_seconds`` is the wall time of
    the fine-tuning (stored beside the run, so a cached run keeps it), ``None`` without training.
    """
    from dynaquant_brevitas.io.checkpoint import load_model
    from dynaquant_brevitas.evaluation import prepare_for_coding

    if method.kind == "float":
        return {"model": prepare_for_coding(load_model(reference["checkpoint"])), "checkpoint": reference["checkpoint"],
                "train_seconds": None}
    if method.kind == "ptq":
        from dynaquant_brevitas.io.images import ImageFolderCrops

        from dynaquant_brevitas.training import dynaquant_prepare
        from dynaquant_brevitas.training.data_order import batches_from, seed_everything
        from dynaquant_brevitas.training.distributed import Dist

        seed_everything(cfg.train.seed)
        batches = batches_from(ImageFolderCrops(cfg.data.root, cfg.data.patch_size), cfg, 0, Dist())
        model = dynaquant_prepare(load_model(reference["checkpoint"]), cfg, batches)
        return {"model": prepare_for_coding(model), "checkpoint": None, "train_seconds": None}
    out = Path(cfg.train.output)
    timing = out / "bench_train.json"
    start = time.time()
    trained_now = not (out / "final.pt").exists()
    final = train_method(method, cfg, calibration_batches)
    if method.kind == "brevitas":
        model = brevitas_from_checkpoint(reference["checkpoint"], final)
    else:  # float-ft trains with quant.config None, i.e. in float
        model = load_model(final)
    if trained_now:
        timing.write_text(json.dumps({"train_seconds": time.time() - start, "steps": cfg.train.steps}))
    seconds = json.loads(timing.read_text())["train_seconds"] if timing.exists() else None
    return {"model": prepare_for_coding(model), "checkpoint": str(final), "train_seconds": seconds}


def fresh_quantized(method: Method, float_model: nn.Module, cfg: TrainConfig, samples) -> nn.Module:
    """An untrained quantized copy of ``float_model`` for ``method`` (for step timings)."""
    import copy

    from dynaquant_brevitas import calibrate, dynaquantize

    model = copy.deepcopy(float_model)
    if method.kind == "brevitas":
        model = brevitas_int8(model)
        calibrate_brevitas(model, samples)
    else:
        model = dynaquantize(model, cfg.dynaquant_config())
        calibrate(model, samples)
    return model
