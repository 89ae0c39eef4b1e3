"""``dynaquantize``: a CompressAI model in, a DynaQuant model out; ``freeze`` for a static one.

What happens to each module (the *plan*, see :func:`plan_quantization`). The rules below are the
built-in ones; plugins (:mod:`dynaquant_brevitas.plugins`) add layer handlers and per-architecture
model adapters, and the plan follows them:

* **dynamic** - Conv2d, ConvTranspose2d, MaskedConv2d and Linear layers inside the analysis
  transform ``g_a`` and synthesis transform ``g_s``, after their first module. A selector picks
  their bit width per image from the first module's output.
* **fixed** - the same layer types everywhere else: the first module of ``g_a`` and ``g_s``
  (the selectors read its output), the hyper transforms, entropy-parameter and channel-context
  networks. They run at ``config.fixed_bits``.
* **float** - GDN/IGDN (square root and division of a learned normalisation; the next quantized
  layer quantizes their output), the entropy models (their CDFs drive the arithmetic coder), and
  the context model of the autoregressive coders (``mbt2018``, ``cheng2020-anchor/attn``), whose
  coding loop reads ``context_prediction.weight`` directly, so a quantized version would make the
  training forward and the coded bitstream disagree (the built-in ``autoregressive-context``
  model adapter). Elementwise layers with parameters
  (normalisations, PReLU) stay float too.
* anything else with parameters is **unsupported**: an error naming it, or a warning with
  ``config.unsupported == "skip"``.

The model keeps its class and its API: ``forward`` still returns ``x_hat`` and ``likelihoods``
(plus ``bits``, the selection the bit loss needs), and ``update``, ``compress`` and
``decompress`` work on real bitstreams. The encoder-side selector sees only encoder features and
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

import copy
import fnmatch
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Type, Union

import torch
from compressai.entropy_models import EntropyModel
from compressai.layers import GDN
from torch import Tensor, nn

from . import plugins
from .config import DynaQuantConfig
from .layers import DynaQuantLayer
from .plugins import DECODER, ENCODER
from .quant import BitChoice
from .selector import Selection

__all__ = [
    "DynaQuantState",
    "QuantizationPlan",
    "UnsupportedModuleError",
    "chosen_bits",
    "dynaquant_layers",
    "dynaquantize",
    "freeze",
    "plan_quantization",
]

#: module types left in floating point by design (see the module docstring).
FLOAT_BY_DESIGN: Tuple[Type[nn.Module], ...] = (
    GDN,
    EntropyModel,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.PReLU,
)


class UnsupportedModuleError(TypeError):
    """A module with parameters that no layer handler can quantize."""


@dataclass
class QuantizationPlan:
    """Which module becomes what; built by :func:`plan_quantization`."""

    dynamic: Dict[str, List[str]] = field(default_factory=lambda: {ENCODER: [], DECODER: []})
    fixed: List[str] = field(default_factory=list)
    float: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    taps: Dict[str, str] = field(default_factory=dict)
    adapter: str = ""

    def role(self, name: str) -> Optional[str]:
        for side, names in self.dynamic.items():
            if name in names:
                return side
        return "fixed" if name in self.fixed else None


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plan_quantization(model: nn.Module, config: Optional[DynaQuantConfig] = None) -> QuantizationPlan:
    """Decide, without changing anything, what ``dynaquantize`` does to each module.

    The model adapter that applies to ``model`` (:func:`~dynaquant_brevitas.plugins.adapter_for`)
    names the selectors' taps and the modules kept float or at fixed precision; the registered
    layer handlers decide what can be quantized.

    Raises:
        UnsupportedModuleError: for a module no handler quantizes (``unsupported="error"``).
        ValueError: if the analysis or synthesis transform is missing.
    """
    config = config or DynaQuantConfig()
    plan = QuantizationPlan()
    plan.adapter, adapter = plugins.adapter_for(model)
    plan.taps = adapter.taps(model, config)
    transforms = {ENCODER: config.analysis, DECODER: config.synthesis}
    float_patterns = list(config.float_modules) + list(adapter.float_modules(model, config))
    fixed_patterns = list(adapter.fixed_modules(model, config))

    def side_of(name: str) -> Optional[str]:
        for side, attr in transforms.items():
            tap = plan.taps[side]
            inside_tap = name == tap or name.startswith(tap + ".")
            if name.startswith(attr + ".") and not inside_tap and not _matches(name, fixed_patterns):
                return side
        return None

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if _matches(name, float_patterns):
                plan.float.append(name)
            elif plugins.handler_for(child) is not None:
                side = side_of(name)
                (plan.dynamic[side] if side else plan.fixed).append(name)
            elif isinstance(child, FLOAT_BY_DESIGN):
                plan.float.append(name)
            elif any(True for _ in child.parameters(recurse=False)):
                _unsupported(name, child, config, plan)
            else:
                visit(child, name)

    visit(model, "")
    return plan


def _unsupported(name: str, module: nn.Module, config: DynaQuantConfig, plan: QuantizationPlan) -> None:
    supported = ", ".join(sorted(reg.name for reg in plugins.registrations("handler").values()))
    message = (
        f"cannot quantize module {name!r} of type {type(module).__module__}.{type(module).__qualname__}: "
        f"no layer handler for it (supported: {supported}, and subclasses that keep their forward)"
    )
    if config.unsupported == "error":
        raise UnsupportedModuleError(
            message + '; register a handler plugin, or pass DynaQuantConfig(unsupported="skip") '
            "to leave it in floating point"
        )
    warnings.warn(message + "; left in floating point", stacklevel=3)
    plan.skipped.append(name)


class DynaQuantState(nn.Module):
    """Selectors and bookkeeping attached to a dynaquantized model as ``model.dynaquant``."""

    def __init__(self, config: DynaQuantConfig, plan: QuantizationPlan, tap_channels: Mapping[str, int]) -> None:
        super().__init__()
        self.config = config
        self.layer_names = {side: list(plan.dynamic[side]) for side in (ENCODER, DECODER)}
        self.selectors = nn.ModuleDict()
        if config.dynamic:
            selector = plugins.lookup("selector", config.selector)
            for side, names in self.layer_names.items():
                if names:
                    self.selectors[side] = selector(
                        tap_channels[side],
                        len(names),
                        config.candidate_bits,
                        hidden=config.selector_hidden,
                        pool=config.selector_pool,
                        dropout=config.selector_dropout,
                    )
        self.layers: Dict[str, List[DynaQuantLayer]] = {ENCODER: [], DECODER: []}
        self.last: Dict[str, Selection] = {}

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
        """The last forward's selection: ``probs`` (N, L, K), ``bits`` (N, L), names, candidates."""
        sides = [s for s in (ENCODER, DECODER) if s in self.last]
        return {
            "probs": torch.cat([self.last[s].probs for s in sides], dim=1),
            "bits": torch.cat([self.last[s].bits for s in sides], dim=1),
            "candidates": self.config.candidate_bits,
            "layers": [name for s in sides for name in self.layer_names[s]],
        }

    def extra_repr(self) -> str:
        counts = {side: len(names) for side, names in self.layer_names.items()}
        return f"candidates={self.config.candidate_bits}, dynamic layers={counts}"


def _probe_tap_channels(model: nn.Module, plan: QuantizationPlan, config: DynaQuantConfig) -> Dict[str, int]:
    """Channel count at each tap, from one small float forward of the two transforms."""
    modules = dict(model.named_modules())
    seen: Dict[str, int] = {}

    def recorder(side: str):
        def record(module: nn.Module, inputs, output: Tensor) -> None:
            seen.setdefault(side, output.shape[1])

        return record

    handles = [modules[tap].register_forward_hook(recorder(side)) for side, tap in plan.taps.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            first = next(model.parameters())
            x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
            y = getattr(model, config.analysis)(x.to(first.device, first.dtype))
            getattr(model, config.synthesis)(y)
    except Exception as error:
        raise ValueError(
            f"could not run {config.analysis}/{config.synthesis} of {type(model).__name__} on a "
            f"1x3x64x64 image to size the bit-width selectors: {error}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return seen


def _quantizer_options(config: DynaQuantConfig) -> Dict[str, object]:
    return dict(
        rounding=config.estimator,
        beta=config.beta,
        quantize_input=config.quantize_activations,
        learn_scale=config.learn_scale,
        learn_offset=config.learn_offset,
        activation_per_channel=config.activation_per_channel,
        weight_offset=config.weight_offset,
        calibration_steps=config.calibration_steps,
        integer_zero_point=config.integer_zero_point,
    )


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
    tap_channels = _probe_tap_channels(model, plan, config) if config.dynamic else {}
    options = _quantizer_options(config)
    modules = dict(model.named_modules())
    top = max(config.candidate_bits)
    swapped: Dict[str, DynaQuantLayer] = {}
    for name in plan.fixed + plan.dynamic[ENCODER] + plan.dynamic[DECODER]:
        float_module = modules[name]
        bits = config.fixed_bits if name in plan.fixed else top
        swapped[name] = plugins.handler_for(float_module).from_float(float_module, bits, **options)
        _replace_module(model, name, swapped[name])
    state = DynaQuantState(config, plan, tap_channels)
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
    return model


def dynaquant_layers(model: nn.Module) -> Iterator[Tuple[str, DynaQuantLayer]]:
    """``(name, layer)`` for every DynaQuant layer of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, DynaQuantLayer):
            yield name, module


def _state(model: nn.Module) -> DynaQuantState:
    state = getattr(model, "dynaquant", None)
    if not isinstance(state, DynaQuantState):
        raise ValueError("the model is not dynaquantized (no model.dynaquant); call dynaquantize first")
    return state


Profile = Union[str, Mapping[str, int]]


def chosen_bits(model: nn.Module, images: Iterable[Tensor]) -> Tuple[List[str], List[List[int]]]:
    """``(dynamic layer names, chosen bits per image)`` of an eval-mode run over ``images``.

    Each image is ``(3, H, W)`` or ``(N, 3, H, W)``; a batch contributes one row per image.
    """
    state = _state(model)
    layers: List[str] = []
    rows: List[List[int]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for image in images:
                model(image if image.dim() == 4 else image.unsqueeze(0))
                if state.last:
                    record = state.bits_record()
                    layers = record["layers"]
                    rows.extend([[int(b) for b in row] for row in record["bits"].tolist()])
    finally:
        model.train(was_training)
    return layers, rows


def _mode_profile(model: nn.Module, images: Iterable[Tensor]) -> Dict[str, int]:
    layers, rows = chosen_bits(model, images)
    if not rows:
        raise ValueError('profile "mode" needs at least one image')
    return {name: Counter(row[i] for row in rows).most_common(1)[0][0] for i, name in enumerate(layers)}


def resolve_profile(model: nn.Module, profile: Profile, images: Optional[Iterable[Tensor]] = None) -> Dict[str, int]:
    """Per-layer bit widths for the dynamic layers from ``"max"``, ``"mode"`` or a mapping."""
    state = _state(model)
    names = [n for side in (ENCODER, DECODER) for n in state.layer_names[side]]
    candidates = state.config.candidate_bits
    if isinstance(profile, str):
        if profile == "max":
            return {name: max(candidates) for name in names}
        if profile == "min":
            return {name: min(candidates) for name in names}
        if profile == "mode":
            if images is None:
                raise ValueError('profile "mode" needs images=...')
            return _mode_profile(model, images)
        raise ValueError(f"unknown profile {profile!r}: use 'max', 'min', 'mode' or a mapping")
    mapping = {str(k): int(v) for k, v in dict(profile).items()}
    unknown = sorted(set(mapping) - set(names))
    missing = sorted(set(names) - set(mapping))
    if unknown or missing:
        raise ValueError(f"profile does not match the dynamic layers: unknown {unknown}, missing {missing}")
    bad = {k: v for k, v in mapping.items() if v not in candidates}
    if bad:
        raise ValueError(f"profile bit widths {bad} are not among the candidates {candidates}")
    return mapping


@contextmanager
def _selection_set_aside(model: nn.Module) -> Iterator[None]:
    """Drop the last forward's selection while inside (it may hold a training graph, which
    ``copy.deepcopy`` refuses), and put it back afterwards."""
    state = _state(model)
    layers = [layer for _, layer in dynaquant_layers(model)]
    last, choices = state.last, [layer.bit_choice for layer in layers]
    state.last = {}
    for layer in layers:
        layer.set_bit_choice(None)
    try:
        yield
    finally:
        state.last = last
        for layer, choice in zip(layers, choices):
            layer.set_bit_choice(choice)


def freeze(model: nn.Module, profile: Profile = "max", images: Optional[Iterable[Tensor]] = None) -> nn.Module:
    """A static copy of a dynaquantized model: no selectors, one bit width per layer.

    Args:
        model: a model returned by :func:`dynaquantize` (left unchanged).
        profile: ``"max"`` (every dynamic layer at the largest candidate), ``"min"``, ``"mode"``
            (each layer's most frequent choice over ``images``) or a ``{layer name: bits}`` map.
        images: images for ``"mode"``, each ``(3, H, W)`` or ``(N, 3, H, W)``.

    Returns:
        A deep copy whose dynamic layers run at fixed bit widths; ``frozen.dynaquant_profile``
        records them. Export builds on it.
    """
    bits = resolve_profile(model, profile, images)
    with _selection_set_aside(model):
        frozen = copy.deepcopy(model)
    state = _state(frozen)
    for module in frozen.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, hook in hooks.items() if getattr(hook, "__self__", None) is state]:
                del hooks[key]
    del frozen.dynaquant
    layers = dict(dynaquant_layers(frozen))
    for name, b in bits.items():
        layers[name].set_bit_width(b)
    for layer in layers.values():
        layer.set_bit_choice(None)
    frozen.dynaquant_profile = {name: layer.bit_width for name, layer in layers.items()}
    return frozen
