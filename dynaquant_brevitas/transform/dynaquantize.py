"""``dynaquantize``: a CompressAI model in, a DynaQuant model out (the plan in :mod:`.plan`).

The model keeps its class and its API: ``forward`` still returns ``x_hat`` and ``likelihoods``
(plus ``bits``, the selection the bit loss needs), and ``update``, ``compress`` and
``decompress`` work on real bitstreams; ``compress`` and ``decompress`` always run in eval mode
(deterministic choices, no statistics gathered), whatever mode the model is in. The encoder-side selector sees only encoder features and
the decoder-side selector only decoder features, so no bit widths are transmitted.

Example:
    >>> import torch
    >>> from compressai.models import ScaleHyperprior
    >>> from dynaquant_brevitas import calibrate
    >>> model = dynaquantize(ScaleHyperprior(8, 12))
    >>> calibrate(model, [torch.rand(2, 3, 64, 64)])
    >>> out = model(torch.rand(2, 3, 64, 64))
    >>> sorted(out), out["bits"]["bits"].shape
    (['bits', 'likelihoods', 'x_hat'], torch.Size([2, 6]))
"""

from __future__ import annotations

from types import MethodType
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..nn import DynaQuantLayer, Selection
from ..nn.integer_path import install as install_integer_path
from ..quant import BitChoice
from ..registry import handler_for, lookup
from .adapters import DECODER, ENCODER
from .config import DynaQuantConfig
from .cost import LayerCosts, layer_costs
from .plan import QuantizationPlan, plan_quantization

__all__ = ["QUANTIZER_OPTIONS", "DynaQuantState", "dynaquant_layers", "dynaquant_state", "dynaquantize"]

#: the ``DynaQuantConfig`` fields every layer handler receives as ``from_float`` options
QUANTIZER_OPTIONS = (
    "rounding",
    "beta",
    "quantize_activations",
    "learn_range",
    "activation_percentile",
    "activation_headroom",
    "activation_range",
    "learn_offset",
    "activation_per_channel",
    "weight_offset",
    "calibration_batches",
    "integer_zero_point",
)


class DynaQuantState(nn.Module):
    """Selectors and bookkeeping attached to a dynaquantized model as ``model.dynaquant``."""

    def __init__(self, config: DynaQuantConfig, plan: QuantizationPlan) -> None:
        super().__init__()
        self.config = config
        self.layer_names = {side: list(plan.dynamic[side]) for side in (ENCODER, DECODER)}
        self.selectors = nn.ModuleDict()
        if config.dynamic:
            selector = lookup("selector", config.selector)
            for side, names in self.layer_names.items():
                if names:
                    self.selectors[side] = selector(
                        plan.tap_channels[side],
                        len(names),
                        config.pairs,
                        hidden=config.selector_hidden,
                        pool=config.selector_pool,
                        dropout=config.selector_dropout,
                    )
        self.layers: Dict[str, List[DynaQuantLayer]] = {ENCODER: [], DECODER: []}
        self.last: Dict[str, Selection] = {}
        self.costs: Optional[LayerCosts] = None  # set by dynaquantize, for the bit loss

    def set_temperature(self, tau: float) -> None:
        """Gumbel-softmax temperature used in training from now on."""
        for selector in self.selectors.values():
            selector.temperature.fill_(float(tau))

    def select(self, side: str, features: Tensor) -> None:
        """Run ``side``'s selector on ``features`` and hand each layer its choice."""
        selection = self.selectors[side](features)
        for i, layer in enumerate(self.layers[side]):
            layer.set_bit_choice(BitChoice(selection.candidates, selection.weights[:, i]))
        self.last[side] = selection

    def _encoder_hook(self, module: nn.Module, inputs, output: Tensor) -> None:
        self.select(ENCODER, output)

    def _decoder_hook(self, module: nn.Module, inputs, output: Tensor) -> None:
        self.select(DECODER, output)

    def reset(self) -> None:
        """Forget the last selection (``compress``/``decompress`` do not pass the forward hooks)."""
        self.last = {}

    def _clear_hook(self, module: nn.Module, inputs) -> None:
        self.reset()

    def _attach_bits_hook(self, module: nn.Module, inputs, output):
        if isinstance(output, dict) and self.last:
            output["bits"] = self.bits_record()
        return output

    def bits_record(self) -> Dict[str, object]:
        """The last forward's selection: ``probs`` and one-hot ``weights`` (N, L, K) over the
        (weight, activation) ``candidates``, the chosen ``weight_bits``, ``activation_bits`` and
        ``bits`` (``sqrt(w a)``) (N, L), the layer ``names`` and their ``costs`` (for the bit loss)."""
        sides = [s for s in (ENCODER, DECODER) if s in self.last]
        record: Dict[str, object] = {
            key: torch.cat([getattr(self.last[s], key) for s in sides], dim=1)
            for key in ("probs", "weights", "bits", "weight_bits", "activation_bits")
        }
        record.update(candidates=self.config.pairs, layers=[name for s in sides for name in self.layer_names[s]])
        if self.costs is not None and len(sides) == len([s for s in (ENCODER, DECODER) if self.layer_names[s]]):
            record["costs"] = self.costs
        return record

    def extra_repr(self) -> str:
        counts = {side: len(names) for side, names in self.layer_names.items()}
        return f"candidates={list(self.config.pairs)}, dynamic layers={counts}"


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def dynaquantize(model: nn.Module, config: Optional[DynaQuantConfig] = None) -> nn.Module:
    """Quantize a CompressAI image model in place with DynaQuant and return it.

    Args:
        model: a ``compressai`` ``CompressionModel`` (or any module with an analysis and a
            synthesis transform built from Conv2d, ConvTranspose2d, MaskedConv2d and Linear).
        config: what to do; ``DynaQuantConfig()`` by default.

    Returns:
        The same model object, with quantized layers, selectors in ``model.dynaquant`` and
        ``out["bits"]`` added to ``forward``'s output. Call :func:`~dynaquant_brevitas.calibrate`
        (or train a few steps) before evaluating it.
    """
    config = config or DynaQuantConfig()
    if isinstance(getattr(model, "dynaquant", None), DynaQuantState):
        raise ValueError("this model is already dynaquantized")
    plan = plan_quantization(model, config)
    dynamic = plan.dynamic[ENCODER] + plan.dynamic[DECODER]
    costs = layer_costs(model, dynamic, {name: config.fixed_bits for name in plan.fixed}) if config.dynamic else None
    options = {name: getattr(config, name) for name in QUANTIZER_OPTIONS}
    modules = dict(model.named_modules())
    top = config.pairs[-1]
    swapped: Dict[str, DynaQuantLayer] = {}
    for name in plan.quantized:
        float_module = modules[name]
        bits = config.fixed_bits if name in plan.fixed else top
        swapped[name] = handler_for(float_module).from_float(float_module, bits, **options)
        swapped[name].dynaquant_name = name  # for error messages
        _replace_module(model, name, swapped[name])
    state = DynaQuantState(config, plan)
    state.costs = costs
    model.dynaquant = state
    for side in (ENCODER, DECODER):
        state.layers[side] = [swapped[name] for name in plan.dynamic[side]]
    if state.selectors:
        modules = dict(model.named_modules())
        if ENCODER in state.selectors:
            modules[plan.taps[ENCODER]].register_forward_hook(state._encoder_hook)
        if DECODER in state.selectors:
            modules[plan.taps[DECODER]].register_forward_hook(state._decoder_hook)
        model.register_forward_pre_hook(state._clear_hook)
        model.register_forward_hook(state._attach_bits_hook)
    for name, method in (("compress", _compress_in_eval_mode), ("decompress", _decompress_in_eval_mode)):
        if callable(getattr(type(model), name, None)):
            setattr(model, name, MethodType(method, model))
    if config.integer_entropy_path:
        install_integer_path(model)
    return model


def _compress_in_eval_mode(model: nn.Module, *args, **kwargs):
    return _coding(model, "compress", args, kwargs)


def _decompress_in_eval_mode(model: nn.Module, *args, **kwargs):
    return _coding(model, "decompress", args, kwargs)


def _coding(model: nn.Module, method: str, args: tuple, kwargs: dict):
    """The model's own ``compress``/``decompress`` with every module in eval mode (restored after):
    deterministic bit choices (no Gumbel noise, no dropout) and no activation statistics gathered
    while coding, whatever mode the caller left the model in, so encoder and decoder agree."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        return getattr(type(model), method)(model, *args, **kwargs)
    finally:
        for module, training in modes:
            module.training = training


def dynaquant_layers(model: nn.Module) -> Iterator[Tuple[str, DynaQuantLayer]]:
    """``(name, layer)`` for every DynaQuant layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, DynaQuantLayer):
            yield name, module


def dynaquant_state(model: nn.Module) -> DynaQuantState:
    """``model.dynaquant``, or a clear error if the model was not dynaquantized."""
    state = getattr(model, "dynaquant", None)
    if not isinstance(state, DynaQuantState):
        raise ValueError("the model is not dynaquantized (no model.dynaquant); call dynaquantize first")
    return state
