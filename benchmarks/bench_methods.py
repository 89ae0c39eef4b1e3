"""The methods compared by ``benchmarks/run.py`` and how each one's model is obtained.

Every quantization-aware method starts from the same float reference checkpoint and is
fine-tuned with the same steps, learning rate, data and data order by the library's own loop
(``dynaquant_brevitas.training.train``); Brevitas's stock quantizers come in through its
``prepare`` argument. Static mixed-precision methods first choose one (weight, activation) width
pair per layer from the reference's layer sensitivities (``transform.sensitivity`` on seeded
training crops, measured once per reference and cached; ``transform.mixed.mixed_profile`` at the
budget) and are then fine-tuned frozen to that profile (``quant.profile``). Post-training methods
are not trained: ``transform.ptq.ptq`` (range search, bias correction) or plain calibration.

The fixed-precision layers (first module of ``g_a``/``g_s``, hyper transforms) stay at 8 bits in
every quantized method but the mixed ones, whose profile covers every quantized layer (as
``dynaquant sensitivity --budget`` does); GDN/IGDN and the entropy models stay float (the plan of
``dynaquant_brevitas.transform.plan_quantization``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from brevitas.nn import QuantConv2d
from compressai.layers import MaskedConv2d
from torch import nn

from dynaquant_brevitas.io.checkpoint import load_checkpoint
from dynaquant_brevitas.training import FINAL, LAST, TrainConfig, train
from dynaquant_brevitas.transform import DynaQuantConfig

#: kinds whose model comes out of ``train()``
TRAINED_KINDS = ("float-ft", "dynaquant", "brevitas", "mixed")
#: kinds whose model is built once, without training, and saved like a trained one
POST_TRAINING_KINDS = ("calibrated", "ptq")


@dataclass(frozen=True)
class Method:
    """One row of the comparison.

    Attributes:
        name: the row's name.
        kind: ``float`` (the reference itself), ``float-ft`` (the reference fine-tuned in float with
            the same recipe as the quantized methods: the fair anchor), ``dynaquant`` (``dynaquantize``
            + QAT with ``train()``), ``brevitas`` (Brevitas's stock int8 quantizers + QAT), ``mixed``
            (a static mixed-precision profile from the layer sensitivities, then QAT frozen to it),
            ``ptq`` (``transform.ptq.ptq``, no training) or ``calibrated`` (``dynaquantize`` +
            calibration on training batches, no training).
        description: one line for the tables.
        quant: ``DynaQuantConfig`` fields (every kind but ``float``, ``float-ft`` and ``brevitas``).
        schedule: training settings of the ``quant`` section (``bit_cost``, ``target_bits``).
        mixed: ``mixed`` kind: ``budget`` and ``cost`` (``"bitops"`` or ``"size"``) of
            ``transform.mixed.mixed_profile``; the widths are the config's ``weight_bits`` and
            ``activation_bits``.
        fit: a dynamic method whose selectors are fitted on a choice table
            (``training.selector_fit``) after the training of the method named ``after`` (shared
            with that row): ``budget`` and ``cost`` of ``fit_selectors``. After a static
            (``mixed``) method, the model is first made dynamic around its profile
            (``transform.unfreeze`` with this method's ``quant``, widened by a dynamic layer's
            profile widths where they are not among its candidates).
        steps_factor: fine-tune this many times the benchmark's steps (a longer-trained variant).
        around: a ``dynaquant`` method that starts from the trained static model of the ``mixed``
            method named here, made dynamic around its profile (``transform.unfreeze``, widened as
            for ``fit``) with its selectors starting at the profile (``prefer``: the logit margin),
            then trains codec and selectors together with its own ``schedule``.
        prefer: ``around``'s logit margin.
    """

    name: str
    kind: str
    description: str
    quant: Dict[str, Any] = field(default_factory=dict)
    schedule: Dict[str, Any] = field(default_factory=dict)
    mixed: Dict[str, Any] = field(default_factory=dict)
    fit: Dict[str, Any] = field(default_factory=dict)
    steps_factor: int = 1
    around: str = ""
    prefer: float = 0.0

    @property
    def trained(self) -> bool:
        return self.kind in TRAINED_KINDS

    @property
    def config(self) -> Optional[DynaQuantConfig]:
        return DynaQuantConfig.from_dict(self.quant) if self.quant else None

    @property
    def dynamic(self) -> bool:
        """A per-image selector chooses the widths (a dynamic configuration, not frozen)."""
        return self.kind == "dynaquant" and self.config is not None and self.config.dynamic

    def spec(self) -> Dict[str, Any]:
        spec = {"name": self.name, "kind": self.kind, "quant": self.quant, "schedule": self.schedule}
        if self.mixed:
            spec["mixed"] = self.mixed
        if self.fit:
            spec["fit"] = self.fit
        if self.steps_factor != 1:
            spec["steps_factor"] = self.steps_factor
        if self.around:
            spec.update(around=self.around, prefer=self.prefer)
        return spec


def _dq(candidates=(8,), **extra) -> Dict[str, Any]:
    """A ``DynaQuantConfig`` dict; ``learn_offset`` is stated, so that a row keeps its meaning
    whatever the library's default becomes."""
    return {"candidate_bits": list(candidates), "fixed_bits": 8, "learn_offset": True, **extra}


def _target(bits: float, cost: str = "layers") -> Dict[str, Any]:
    return {"target_bits": bits} if cost == "layers" else {"bit_cost": cost, "target_bits": bits}


#: the widths static mixed precision chooses from
MIXED_WEIGHTS, MIXED_ACTIVATIONS = [2, 3, 4, 5, 6, 8], [4, 5, 6, 8]
#: ``transform.ptq``'s quantizers with symmetric activation grids (integer zero points); the
#: library's default since this table (``ptq-w8a8-offsets``) adds per-channel offsets
_PTQ = {"learn_offset": False, "integer_zero_point": True}


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
    Method("dynaquant-int5", "dynaquant", "DynaQuant static int5 (uniform 5-bit weights and activations, the fixed "
           "layers at 8): the uniform row beside mixed-bitops5", _dq((5,))),
    Method("static-w6a8", "dynaquant", "DynaQuant static, 6-bit weights and 8-bit activations, DGM",
           _dq((8,), weight_bits=[6], activation_bits=[8])),
    Method("static-w4a8", "dynaquant", "DynaQuant static, 4-bit weights and 8-bit activations, DGM",
           _dq((8,), weight_bits=[4], activation_bits=[8])),
    Method("mixed-bitops6", "mixed",
           "static mixed precision at 6.0 average bits (BitOPs) from the layer sensitivities, weights {2,3,4,5,6,8} x "
           "activations {4,5,6,8}, fine-tuned frozen",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=MIXED_ACTIVATIONS), mixed={"budget": 6.0, "cost": "bitops"}),
    Method("mixed-bitops6-image-range", "mixed",
           "mixed-bitops6 (the same profile, from the same static sensitivities) with every activation grid "
           "spanning each image's own reach per channel (activation_range='per-image')",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=MIXED_ACTIVATIONS, activation_range="per-image"),
           mixed={"budget": 6.0, "cost": "bitops"}),
    Method("mixed-bitops6-image-range-capped", "mixed",
           "mixed-bitops6 (the same profile, from the same static sensitivities) with each activation range the "
           "smaller of the learned one and the image's own reach per channel (activation_range='per-image-capped')",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=MIXED_ACTIVATIONS, activation_range="per-image-capped"),
           mixed={"budget": 6.0, "cost": "bitops"}),
    Method("mixed-bitops6-image-range-capped-long", "mixed",
           "mixed-bitops6-image-range-capped fine-tuned 5 times longer (1000 steps at the default 200)",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=MIXED_ACTIVATIONS, activation_range="per-image-capped"),
           mixed={"budget": 6.0, "cost": "bitops"}, steps_factor=5),
    Method("mixed-bitops6-image-range-capped-distill", "mixed",
           "mixed-bitops6-image-range-capped fine-tuned with distillation from the float model (quant.distill 1: "
           "each transform's output against the float transform's on the same input, added to the loss)",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=MIXED_ACTIVATIONS, activation_range="per-image-capped"),
           schedule={"distill": 1.0}, mixed={"budget": 6.0, "cost": "bitops"}),
    Method("mixed-bitops6-image-range-capped-distill10", "mixed",
           "mixed-bitops6-image-range-capped-distill with ten times the distillation weight (quant.distill 10)",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=MIXED_ACTIVATIONS, activation_range="per-image-capped"),
           schedule={"distill": 10.0}, mixed={"budget": 6.0, "cost": "bitops"}),
    Method("mixed-bitops6-image-range-capped-sens", "mixed",
           "mixed-bitops6-image-range-capped with its profile chosen from sensitivities measured with capped "
           "per-image activation ranges (instead of static ones), fine-tuned frozen",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=MIXED_ACTIVATIONS, activation_range="per-image-capped"),
           mixed={"budget": 6.0, "cost": "bitops", "ranges": "own"}),
    Method("mixed-bitops5", "mixed",
           "static mixed precision at 5.0 average bits (BitOPs) from the layer sensitivities, weights {2,3,4,5,6,8} x "
           "activations {4,5,6,8}, fine-tuned frozen",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=MIXED_ACTIVATIONS), mixed={"budget": 5.0, "cost": "bitops"}),
    Method("mixed-bitops5.46", "mixed",
           "static mixed precision at 5.46 average bits (BitOPs), the cost of the uniform dynaquant-int5 row, from the "
           "layer sensitivities, weights {2,3,4,5,6,8} x activations {4,5,6,8}, fine-tuned frozen",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=MIXED_ACTIVATIONS), mixed={"budget": 5.46, "cost": "bitops"}),
    Method("mixed-w5.5-a8", "mixed",
           "static mixed precision at 5.5 average weight bits (size) from the layer sensitivities, weights {2,3,4,5,6,8}, "
           "activations 8, fine-tuned frozen",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=[8]), mixed={"budget": 5.5, "cost": "size"}),
    Method("mixed-w5.5-a8-long", "mixed",
           "mixed-w5.5-a8 fine-tuned 5 times longer (1000 steps at the default 200)",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=[8]), mixed={"budget": 5.5, "cost": "size"},
           steps_factor=5),
    Method("mixed-w6-a8-long", "mixed",
           "static mixed precision at 6.0 average weight bits (size) from the layer sensitivities, weights "
           "{2,3,4,5,6,8}, activations 8, fine-tuned frozen for 1000 steps (5 times the default 200)",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=[8]), mixed={"budget": 6.0, "cost": "size"},
           steps_factor=5),
    Method("mixed-bitops6-long", "mixed",
           "mixed-bitops6 fine-tuned 5 times longer (1000 steps at the default 200)",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=MIXED_ACTIVATIONS), mixed={"budget": 6.0, "cost": "bitops"},
           steps_factor=5),
    Method("mixed-bitops6-a8", "mixed",
           "static mixed precision at 6.0 average bits (BitOPs) from the layer sensitivities, weights {2,3,4,5,6,8}, "
           "activations 8 (the BitOPs spent on weights only), fine-tuned frozen",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=[8]), mixed={"budget": 6.0, "cost": "bitops"}),
    Method("mixed-bitops6-ptqinit", "mixed",
           "mixed-bitops6 with its quantizers set by post-training quantization (transform.ptq: ranges by output "
           "error, GPTQ-rounded weights, bias correction) on the calibration batches instead of percentile ranges",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=MIXED_ACTIVATIONS), {"init": "ptq"},
           mixed={"budget": 6.0, "cost": "bitops"}),
    Method("mixed-w4.5-a8", "mixed",
           "static mixed precision at 4.5 average weight bits (size) from the layer sensitivities, weights {2,3,4,5,6,8}, "
           "activations 8, fine-tuned frozen",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=[8]), mixed={"budget": 4.5, "cost": "size"}),
    Method("dynaquant-dyn-468-t6", "dynaquant", "DynaQuant dynamic {4,6,8}, target 6.0 bits",
           _dq((4, 6, 8)), _target(6.0)),
    Method("dynaquant-dyn-468-t5", "dynaquant", "DynaQuant dynamic {4,6,8}, target 5.0 bits",
           _dq((4, 6, 8)), _target(5.0)),
    Method("dynaquant-dyn-6810-t7", "dynaquant", "DynaQuant dynamic {6,8,10}, target 7.0 bits",
           _dq((6, 8, 10)), _target(7.0)),
    Method("dynaquant-dyn-6810-t8", "dynaquant", "DynaQuant dynamic {6,8,10}, target 8.0 bits",
           _dq((6, 8, 10)), _target(8.0)),
    # Targets inside the reachable range (reachable_bits): with the fixed layers at 8 bits, weights
    # {4,6,8} x activations {8} reach 5.99-8.0 BitOPs bits on ScaleHyperprior(64, 96), {3,4,6,8} x {6,8}
    # 4.86-8.0. The "layers" variants aim at the same BitOPs bits: the layer average b with
    # b^2 (1 - f) + 64 f = target^2, f = 0.122 the fixed layers' share of the MACs.
    Method("dyn-w468-a8-bitops7", "dynaquant",
           "DynaQuant dynamic, weights {4,6,8} x activations {8}, BitOPs bit cost, target 7.0 average bits (BitOPs)",
           _dq((8,), weight_bits=[4, 6, 8], activation_bits=[8]), _target(7.0, "bitops")),
    Method("dyn-w468-a8-layers7", "dynaquant",
           "DynaQuant dynamic, weights {4,6,8} x activations {8}, layer-average bit cost, target 6.85 "
           "(7.0 BitOPs bits at an even choice)",
           _dq((8,), weight_bits=[4, 6, 8], activation_bits=[8]), _target(6.85)),
    Method("dyn-w3468-a68-bitops6", "dynaquant",
           "DynaQuant dynamic, weights {3,4,6,8} x activations {6,8}, BitOPs bit cost, target 6.0 average bits (BitOPs)",
           _dq((8,), weight_bits=[3, 4, 6, 8], activation_bits=[6, 8]), _target(6.0, "bitops")),
    Method("dyn-w3468-a68-bitops6-scale", "dynaquant",
           "as dyn-w3468-a68-bitops6 with the scale-aware selector and a diversity reward of 0.05 "
           "(benchmarks/selector_study.py's scale-div)",
           _dq((8,), weight_bits=[3, 4, 6, 8], activation_bits=[6, 8], selector="scale-aware"),
           {**_target(6.0, "bitops"), "diversity": 0.05}),
    Method("dyn-w3468-a68-bitops6-fit", "dynaquant",
           "dyn-w3468-a68-bitops6 (the same training) with its selectors refitted to a per-image choice table of "
           "training crops at 6.0 average bits (BitOPs) (training.selector_fit)",
           _dq((8,), weight_bits=[3, 4, 6, 8], activation_bits=[6, 8]), _target(6.0, "bitops"),
           fit={"after": "dyn-w3468-a68-bitops6", "budget": 6.0, "cost": "bitops"}),
    Method("dyn-around-mixed-bitops6", "dynaquant",
           "mixed-bitops6's trained static model (the same training) made dynamic around its profile: the six "
           "dynamic layers choose per image among weights {4,5,6,8} x activations {5,6,8} (plus the profile's own "
           "widths where they lie outside), selectors fitted to a choice table at 6.0 average bits (BitOPs); the "
           "other layers keep their static widths",
           _dq((8,), weight_bits=[4, 5, 6, 8], activation_bits=[5, 6, 8]), _target(6.0, "bitops"),
           fit={"after": "mixed-bitops6", "budget": 6.0, "cost": "bitops"}),
    Method("dyn-around-mixed-bitops6-image-range-capped", "dynaquant",
           "dyn-around-mixed-bitops6 with capped per-image activation ranges: mixed-bitops6-image-range-capped's "
           "trained static model made dynamic around its profile (the same candidate widths, selectors fitted to a "
           "choice table at 6.0 average bits (BitOPs))",
           _dq((8,), weight_bits=[4, 5, 6, 8], activation_bits=[5, 6, 8], activation_range="per-image-capped"),
           _target(6.0, "bitops"), fit={"after": "mixed-bitops6-image-range-capped", "budget": 6.0, "cost": "bitops"}),
    Method("dyn-joint-mixed-bitops6-image-range-capped", "dynaquant",
           "mixed-bitops6-image-range-capped's trained static model made dynamic around its profile (the candidate "
           "widths of dyn-around-mixed-bitops6-image-range-capped), the selectors starting at the profile (logit "
           "margin 3), then codec and selectors fine-tuned together (selector lr 1e-3, BitOPs bit cost, target 6.0)",
           _dq((8,), weight_bits=[4, 5, 6, 8], activation_bits=[5, 6, 8], activation_range="per-image-capped"),
           {**_target(6.0, "bitops"), "selector_lr": 1e-3}, around="mixed-bitops6-image-range-capped", prefer=3.0),
    Method("dyn-joint-mixed-bitops6-image-range-capped-div", "dynaquant",
           "dyn-joint-mixed-bitops6-image-range-capped with the scale-aware selector and a diversity reward of 0.05 "
           "(as dyn-w3468-a68-bitops6-scale)",
           _dq((8,), weight_bits=[4, 5, 6, 8], activation_bits=[5, 6, 8], activation_range="per-image-capped",
               selector="scale-aware"),
           {**_target(6.0, "bitops"), "selector_lr": 1e-3, "diversity": 0.05}, around="mixed-bitops6-image-range-capped",
           prefer=3.0),
    Method("dyn-around-mixed-w5.5-a8", "dynaquant",
           "mixed-w5.5-a8's trained static model (the same training) made dynamic around its profile: the six "
           "dynamic layers choose per image among weights {2,3,4,5,6,8} x activations 8, selectors fitted to a choice "
           "table at 5.5 average weight bits (size); the other layers keep their static widths",
           _dq((8,), weight_bits=MIXED_WEIGHTS, activation_bits=[8]),
           fit={"after": "mixed-w5.5-a8", "budget": 5.5, "cost": "size"}),
    Method("dyn-w3468-a68-layers6", "dynaquant",
           "DynaQuant dynamic, weights {3,4,6,8} x activations {6,8}, layer-average bit cost, target 5.67 "
           "(6.0 BitOPs bits at an even choice)",
           _dq((8,), weight_bits=[3, 4, 6, 8], activation_bits=[6, 8]), _target(5.67)),
    Method("ablation-int8-ste", "dynaquant", "ablation: DynaQuant int8 with STE instead of DGM",
           _dq((8,), rounding="ste")),
    Method("ablation-int8-no-offset", "dynaquant", "ablation: DynaQuant int8 without learned offsets "
           "(the recommended int8 setting for GDN codecs; also selected as dynaquant-int8-nooffset)",
           _dq((8,), learn_offset=False)),
    Method("ablation-int8-no-offset-long", "dynaquant",
           "ablation-int8-no-offset fine-tuned 5 times longer (1000 steps at the default 200)",
           _dq((8,), learn_offset=False), steps_factor=5),
    Method("dynaquant-int8-headroom", "dynaquant",
           "ablation-int8-no-offset with every activation range widened by 1.25 after calibration "
           "(activation_headroom)",
           _dq((8,), learn_offset=False, activation_headroom=1.25)),
    Method("dynaquant-int8-image-range", "dynaquant",
           "ablation-int8-no-offset with every activation grid spanning each image's own reach per channel "
           "(activation_range='per-image': computed from the tensor at run time, nothing clipped, nothing sent)",
           _dq((8,), learn_offset=False, activation_range="per-image")),
    Method("dynaquant-int8-image-range-capped", "dynaquant",
           "ablation-int8-no-offset with each activation range the smaller of the learned one and the image's "
           "own reach per channel (activation_range='per-image-capped')",
           _dq((8,), learn_offset=False, activation_range="per-image-capped")),
    Method("dynaquant-int8-image-range-adaptive", "dynaquant",
           "ablation-int8-no-offset with capped per-image activation ranges widened to the image's 99.9th-percentile "
           "distance where more than 0.1 % of a channel lies beyond the learned range "
           "(activation_range='per-image-adaptive')",
           _dq((8,), learn_offset=False, activation_range="per-image-adaptive")),
    Method("dynaquant-int8-image-range-capped-long", "dynaquant",
           "dynaquant-int8-image-range-capped fine-tuned 5 times longer (1000 steps at the default 200)",
           _dq((8,), learn_offset=False, activation_range="per-image-capped"), steps_factor=5),
    Method("ablation-int8-no-scale", "dynaquant", "ablation: DynaQuant int8 without learned scales",
           _dq((8,), learn_range=False)),
    Method("ablation-int6-ste", "dynaquant", "ablation: DynaQuant int6 with STE instead of DGM",
           _dq((6,), rounding="ste")),
    Method("dynaquant-int6-beta4", "dynaquant", "DynaQuant static int6 with a sharper DGM (beta 4 instead of 1)",
           _dq((6,), beta=4.0)),
    Method("ptq-int8", "calibrated", "post-training int8: DynaQuant quantizers, calibration only, no fine-tuning", _dq((8,))),
    Method("ptq-w8a8", "ptq", "post-training quantization (transform.ptq: output-error range search, bias correction), "
           "8-bit weights and activations, symmetric activation grids, no fine-tuning", _dq((8,), **_PTQ)),
    Method("ptq-w8a8-offsets", "ptq", "post-training quantization (transform.ptq), 8-bit weights and activations, "
           "with activation offsets (asymmetric grids; transform.ptq's default), no fine-tuning", _dq((8,), **dict(_PTQ, learn_offset=True))),
    Method("ptq-w8a8-image-range-capped", "ptq",
           "ptq-w8a8 with each activation range the smaller of the searched one and the image's own reach per "
           "channel (activation_range='per-image-capped'), no fine-tuning",
           _dq((8,), **_PTQ, activation_range="per-image-capped")),
    Method("ptq-w8a8-offsets-image-range-capped", "ptq",
           "ptq-w8a8-offsets (asymmetric activation grids) with capped per-image activation ranges, no fine-tuning",
           _dq((8,), **dict(_PTQ, learn_offset=True), activation_range="per-image-capped")),
    Method("ptq-w6a8", "ptq", "post-training quantization (transform.ptq), 6-bit weights and 8-bit activations, "
           "symmetric activation grids, no fine-tuning", _dq((8,), weight_bits=[6], activation_bits=[8], **_PTQ)),
]

BY_NAME = {m.name: m for m in METHODS}
#: other names that select a method (the row keeps the method's own name)
ALIASES = {"dynaquant-int8-nooffset": "ablation-int8-no-offset"}


def select(names: Optional[str]) -> List[Method]:
    """The methods named in a comma-separated list (all when ``None`` or ``"all"``), in table order."""
    if not names or names.strip() == "all":
        return list(METHODS)
    wanted = [ALIASES.get(n.strip(), n.strip()) for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; known: {', '.join(BY_NAME)} (aliases: {', '.join(ALIASES)})")
    return [m for m in METHODS if m.name in wanted]


def key_of(*parts: Any) -> str:
    """A short digest of JSON-able parts: the cache keys of ``benchmarks/run.py``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- training configs


def train_config(method: Method, reference: Dict[str, Any], train: Dict[str, Any], output: Path,
                 profile: Optional[Dict[str, Any]] = None, progress: bool = True) -> TrainConfig:
    """The ``TrainConfig`` of one (method, quality, seed): identical for every method but the
    ``quant`` section (``profile``: a mixed method's static profile)."""
    steps = int(train["steps"])
    quant: Dict[str, Any] = {"config": None}
    if method.quant:
        config = dict(method.quant, calibration_batches=int(train["calibration_batches"]))
        quant = {"config": config, **method.schedule}
        if profile is not None:
            quant["profile"] = {name: list(widths) if isinstance(widths, (list, tuple)) else widths
                                for name, widths in profile.items()}
        elif DynaQuantConfig.from_dict(config).dynamic:
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
                "progress": progress,
            },
            "quant": quant,
        }
    )


# --------------------------------------------------------------------------- reachable bits


def reachable_bits(float_model: nn.Module, method: Method, input_shape=(1, 3, 512, 768)) -> Dict[str, Tuple[float, float]]:
    """The average bits a quantized ``method`` can reach on ``float_model``: ``{"bitops": (low,
    high), "size": (low, high)}``, the dynamic layers at their cheapest and dearest candidate, the
    fixed ones at ``fixed_bits`` and the float compute layers at 32 (``transform.cost``'s definitions)."""
    from dynaquant_brevitas.transform import plan_quantization
    from dynaquant_brevitas.transform.cost import layer_macs

    config = method.config
    plan = plan_quantization(float_model, config)
    macs = layer_macs(float_model, input_shape)
    modules = dict(float_model.named_modules())
    dynamic = {n for side in plan.dynamic.values() for n in side}
    fixed = set(plan.fixed)
    cheap, dear = min(config.pairs, key=lambda p: p[0] * p[1]), max(config.pairs, key=lambda p: p[0] * p[1])
    fixed_pair = _pair(config.fixed_bits)
    out = {}
    for label, pair in (("low", cheap), ("high", dear)):
        bitops = weight = params = 0.0
        for name, count in macs.items():
            w, a = pair if name in dynamic else fixed_pair if name in fixed else (32, 32)
            bitops += count * w * a
            weight += modules[name].weight.numel() * w
            params += modules[name].weight.numel()
        out[label] = (math.sqrt(bitops / sum(macs.values())), weight / params)
    return {"bitops": (out["low"][0], out["high"][0]), "size": (out["low"][1], out["high"][1])}


def _pair(bits: Any) -> Tuple[int, int]:
    return tuple(bits) if isinstance(bits, (list, tuple)) else (bits, bits)


def check_target(float_model: nn.Module, method: Method) -> Optional[Tuple[float, float]]:
    """Refuse a dynamic method whose BitOPs or size target lies outside what it can reach;
    returns that range (``None`` for other methods)."""
    cost = method.schedule.get("bit_cost", "layers")
    target = method.schedule.get("target_bits")
    if not method.dynamic or target is None or cost == "layers":
        return None
    low, high = reachable_bits(float_model, method)[cost]
    if not low + 0.05 <= target <= high:
        raise ValueError(f"{method.name}: target {target} {cost} bits is outside the reachable range "
                         f"[{low:.2f}, {high:.2f}] (fixed layers at {_pair(method.config.fixed_bits)} bits)")
    return low, high


# --------------------------------------------------------------------------- training crops


def training_images(root: str, count: int, seed: int) -> List[torch.Tensor]:
    """``count`` training images (distinct while the folder has enough), drawn with ``seed``, as
    ``(3, H, W)`` floats: what sensitivity and post-training quantization draw their crops from
    (not the whole folder, which would take gigabytes as floats)."""
    from dynaquant_brevitas.io.images import list_images, read_image_uint8

    files = list_images(root)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    picked = [files[order[i % len(files)]] for i in range(min(count, len(files)))]
    return [read_image_uint8(f).float().div_(255.0) for f in picked]


def training_crops(root: str, count: int, size: int, seed: int) -> List[torch.Tensor]:
    """``count`` seeded ``(1, 3, size, size)`` crops of the training images
    (``transform.ptq.calibration_crops``; smaller images are padded)."""
    from dynaquant_brevitas.transform.ptq import calibration_crops

    images = training_images(root, count, seed)
    return calibration_crops(images, count, size, torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- static mixed precision


def sensitivity_of(reference: Dict[str, Any], settings: Dict[str, Any], data: str, work: Path,
                   method: Optional[Method] = None) -> Any:
    """The layer sensitivities of a float reference on seeded training crops, cached under
    ``work/sensitivity`` (keyed by the reference's SHA-256, the widths, crops and data).

    Measured with static activation grids, unless ``method.mixed["ranges"] == "own"``: then with
    the method's own ``activation_range``."""
    from dynaquant_brevitas.io.checkpoint import load_model
    from dynaquant_brevitas.transform.sensitivity import Sensitivity, sensitivity

    widths = sorted(set(MIXED_WEIGHTS) | set(MIXED_ACTIVATIONS))
    what = {"reference": reference["sha256"], "widths": widths, "crops": int(settings["crops"]),
            "crop_size": int(settings["crop_size"]), "seed": int(settings["seed"]), "data": data,
            "lmbda": reference["lmbda"]}
    config = None
    if method is not None and method.mixed.get("ranges") == "own":
        config = DynaQuantConfig(activation_range=method.config.activation_range)
        what["activation_range"] = config.activation_range
    key = key_of("sensitivity", what)
    path = Path(work) / "sensitivity" / f"q{reference['quality']}-{key}.json"
    if path.exists():
        return Sensitivity.from_dict(json.loads(path.read_text())["sensitivity"])
    print(f"  sensitivity of {Path(reference['checkpoint']).name}: {what['crops']} crops of {what['crop_size']} px, "
          f"widths {widths}", flush=True)
    crops = training_crops(data, what["crops"], what["crop_size"], what["seed"])
    batches = [torch.cat(crops[i : i + 4]) for i in range(0, len(crops), 4)]
    sens = sensitivity(load_model(reference["checkpoint"]), batches, widths, float(reference["lmbda"]), config,
                       progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "settings": what, "sensitivity": sens.to_dict()}, default=str))
    tmp.replace(path)
    return sens


def mixed_profile_of(method: Method, sens: Any) -> Dict[str, Any]:
    """A mixed method's static profile (every quantized layer) and its average bits."""
    from dynaquant_brevitas.transform.mixed import mixed_profile, profile_cost

    config = method.config
    profile = mixed_profile(sens, float(method.mixed["budget"]), method.mixed["cost"],
                            config.weight_bits, config.activation_bits)
    return {"profile": {n: list(p) for n, p in profile.items()},
            "bits_bitops": profile_cost(sens, profile, "bitops"), "bits_per_param": profile_cost(sens, profile, "size")}

# --------------------------------------------------------------------------- Brevitas stock int8


def quantized_layer_names(model: nn.Module) -> List[str]:
    """The layers DynaQuant quantizes (fixed and dynamic ones), from its own plan."""
    from dynaquant_brevitas.transform import plan_quantization

    return plan_quantization(model, DynaQuantConfig(candidate_bits=(8,))).quantized


class _MaskedQuantConv2d(QuantConv2d):
    """Brevitas's stock ``QuantConv2d`` with a context model's fixed mask (``mask`` buffer) applied
    to the weight before each call, as CompressAI's ``MaskedConv2d`` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.weight.data.mul_(self.mask)
        return super().forward(x)


def brevitas_int8(model: nn.Module) -> nn.Module:
    """Swap DynaQuant's layers for Brevitas's stock int8 layers, in place; weights are copied.

    Weights ``Int8WeightPerChannelFloat`` (per output channel, scale from ``max |w|``), inputs
    ``Int8ActPerTensorFloat`` (per tensor, scale from percentile statistics, then learned),
    straight-through rounding; outputs stay float so GDN and the entropy models see plain tensors.
    """
    from brevitas.nn import QuantConvTranspose2d, QuantLinear
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
        elif type(f) is nn.Conv2d or isinstance(f, MaskedConv2d):
            conv = _MaskedQuantConv2d if isinstance(f, MaskedConv2d) else QuantConv2d
            q = conv(f.in_channels, f.out_channels, f.kernel_size, stride=f.stride, padding=f.padding,
                     dilation=f.dilation, groups=f.groups, padding_mode=f.padding_mode, bias=bias, **quant)
            if isinstance(f, MaskedConv2d):
                q.register_buffer("mask", f.mask.detach().clone())
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



# --------------------------------------------------------------------------- models


def around_prepare(model: nn.Module, cfg: TrainConfig, batches, static: str, prefer: float) -> nn.Module:
    """``train``'s ``prepare`` of an ``around`` method: the trained static model ``static`` made
    dynamic around its profile on the float ``model``, its selectors starting at the profile."""
    from dynaquant_brevitas.io.checkpoint import load_model
    from dynaquant_brevitas.transform import unfreeze

    return unfreeze(load_model(static), model, cfg.dynaquant_config(), widen=True, prefer=prefer)


def train_method(method: Method, cfg: TrainConfig, calibration_batches: int, static: Optional[str] = None) -> Path:
    """Fine-tune with the library's loop (resuming an interrupted run); returns ``final.pt``.
    ``static``: the trained static model an ``around`` method starts from."""
    out = Path(cfg.train.output)
    if not (out / FINAL).exists():
        prepare = {}
        if method.kind == "brevitas":
            prepare = {"prepare": functools.partial(brevitas_prepare, calibration_batches=calibration_batches)}
        if method.around:
            prepare = {"prepare": functools.partial(around_prepare, static=static, prefer=method.prefer)}
        resume = (out / LAST).exists()
        print(f"  fine-tuning {method.name}: {cfg.train.steps} steps of {cfg.data.batch_size} crops of "
              f"{cfg.data.patch_size} px, seed {cfg.train.seed}" + (" (resuming)" if resume else "")
              + f" -> {out}", flush=True)
        train(cfg, resume=resume, overwrite=True, **prepare)
    return out / FINAL


def post_training(method: Method, reference: Dict[str, Any], cfg: TrainConfig, ptq_settings: Dict[str, Any]) -> nn.Module:
    """The model of a post-training method: ``transform.ptq.ptq`` on seeded training images
    (``ptq``), or ``dynaquantize`` + calibration on the first training batches (``calibrated``)."""
    from dynaquant_brevitas.io.checkpoint import load_model

    if method.kind == "ptq":
        from dynaquant_brevitas.transform.ptq import ptq

        crops, size = int(ptq_settings["crops"]), int(ptq_settings["crop_size"])
        print(f"  post-training quantization of {method.name}: {crops} crops of {size} px, seed {cfg.train.seed}",
              flush=True)
        images = training_images(cfg.data.root, crops, cfg.train.seed)
        return ptq(load_model(reference["checkpoint"]), images, method.config, crops=crops, crop_size=size,
                   rounding=str(ptq_settings.get("rounding", "gptq")), seed=cfg.train.seed,
                   progress=bool(ptq_settings.get("progress", True)))
    from dynaquant_brevitas.io.images import ImageFolderCrops
    from dynaquant_brevitas.training import dynaquant_prepare
    from dynaquant_brevitas.training.data_order import batches_from, seed_everything
    from dynaquant_brevitas.training.distributed import Dist

    seed_everything(cfg.train.seed)
    batches = batches_from(ImageFolderCrops(cfg.data.root, cfg.data.patch_size), cfg, 0, Dist())
    return dynaquant_prepare(load_model(reference["checkpoint"]), cfg, batches)


def obtain_model(method: Method, reference: Dict[str, Any], cfg: Optional[TrainConfig],
                 calibration_batches: int = 8, ptq_settings: Optional[Dict[str, Any]] = None,
                 static: Optional[str] = None) -> Dict[str, Any]:
    """The evaluable model of one (method, quality, seed), training (or post-training
    quantizing) it first when its ``final.pt`` is not there yet (``static``: see :func:`train_method`).

    Returns ``{"model", "checkpoint", "train_seconds", "trained_now"}``; ``train_seconds`` is the
    wall time of the fine-tuning or post-training quantization (stored beside the run, so a
    cached run keeps it), ``None`` for the float reference; ``trained_now`` says whether this call
    trained.
    """
    from dynaquant_brevitas.evaluation import prepare_for_coding
    from dynaquant_brevitas.io.checkpoint import load_model, save_model

    if method.kind == "float":
        return {"model": prepare_for_coding(load_model(reference["checkpoint"])), "checkpoint": reference["checkpoint"],
                "train_seconds": None, "trained_now": False}
    out = Path(cfg.train.output)
    timing = out / "bench_train.json"
    start = time.time()
    trained_now = not (out / FINAL).exists()
    if method.kind in POST_TRAINING_KINDS:
        final = out / FINAL
        if trained_now:
            out.mkdir(parents=True, exist_ok=True)
            save_model(post_training(method, reference, cfg, ptq_settings or {}), final)
    else:
        final = train_method(method, cfg, calibration_batches, static)
    if method.kind == "brevitas":
        model = brevitas_from_checkpoint(reference["checkpoint"], final)
    else:  # float-ft trains with quant.config None, i.e. in float
        model = load_model(final)
    if trained_now:
        timing.write_text(json.dumps({"train_seconds": time.time() - start, "steps": cfg.train.steps}))
    seconds = json.loads(timing.read_text())["train_seconds"] if timing.exists() else None
    return {"model": prepare_for_coding(model), "checkpoint": str(final), "train_seconds": seconds,
            "trained_now": trained_now}


def refit_selectors(method: Method, got: Dict[str, Any], reference: Dict[str, Any], cfg: TrainConfig,
                    settings: Dict[str, Any]) -> Dict[str, Any]:
    """``got`` (a trained dynamic model, :func:`obtain_model`) with its selectors refitted
    (``training.selector_fit``) on seeded training crops, cached beside the training run."""
    from dynaquant_brevitas.evaluation import prepare_for_coding
    from dynaquant_brevitas.io.checkpoint import load_model, save_model
    from dynaquant_brevitas.io.files import write_json
    from dynaquant_brevitas.training.selector_fit import fit_selectors

    out = Path(cfg.train.output) / f"fit-{method.name}-{key_of(method.fit, settings)[:8]}"
    final = out / FINAL
    if not final.exists():
        start = time.time()
        print(f"  refitting the selectors of {method.name}: {settings['crops']} crops of {settings['crop_size']} px",
              flush=True)
        model, table = selector_table(method, got["checkpoint"], reference, cfg, settings)
        report = fit_selectors(model, table, float(method.fit["budget"]), str(method.fit["cost"]), seed=cfg.train.seed)
        out.mkdir(parents=True, exist_ok=True)
        save_model(model, final)
        write_json(out / "fit.json", dict(report, seconds=time.time() - start, base=table.base))
    report = json.loads((out / "fit.json").read_text())
    seconds = (got["train_seconds"] or 0.0) + report["seconds"]
    return {"model": prepare_for_coding(load_model(final)), "checkpoint": str(final), "train_seconds": seconds,
            "trained_now": got["trained_now"], "fit": report}


def selector_table(method: Method, checkpoint: str, reference: Dict[str, Any], cfg: TrainConfig,
                   settings: Dict[str, Any]) -> Tuple[nn.Module, Any]:
    """The dynamic model of ``method`` from its trained ``checkpoint`` (a static one made dynamic
    around its profile) and its ``training.selector_fit.ChoiceTable`` on the seeded training crops
    of ``settings`` (the ``selector_fit`` section of the benchmark's settings)."""
    from dynaquant_brevitas.io.checkpoint import load_model
    from dynaquant_brevitas.training.selector_fit import choice_table
    from dynaquant_brevitas.transform.ptq import calibration_crops

    crops, size = int(settings["crops"]), int(settings["crop_size"])
    images = training_images(cfg.data.root, int(settings["images"]), cfg.train.seed + 1)
    batch = torch.cat(calibration_crops(images, crops, size, torch.Generator().manual_seed(cfg.train.seed + 1)))
    model, base = load_model(checkpoint), None
    if hasattr(model, "dynaquant_profile"):  # a static model: dynamic around its profile
        from dynaquant_brevitas.transform import unfreeze

        torch.manual_seed(cfg.train.seed)  # the fresh selectors start alike in every run
        model, base = unfreeze(model, load_model(reference["checkpoint"]), method.config, widen=True), model.dynaquant_profile
    return model, choice_table(model, batch, float(reference["lmbda"]), base=base)


def fresh_quantized(method: Method, float_model: nn.Module, cfg: TrainConfig, samples) -> nn.Module:
    """An untrained quantized copy of ``float_model`` for ``method`` (for step timings)."""
    import copy

    from dynaquant_brevitas import calibrate, dynaquantize, freeze

    model = copy.deepcopy(float_model)
    if method.kind == "brevitas":
        model = brevitas_int8(model)
        calibrate_brevitas(model, samples)
    else:
        model = dynaquantize(model, cfg.dynaquant_config())
        profile = cfg.static_profile()
        if profile is not None:
            model = freeze(model, profile)
        calibrate(model, samples)
    return model
