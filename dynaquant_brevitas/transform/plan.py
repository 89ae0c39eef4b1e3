"""The plan: what ``dynaquantize`` does to each module of a model, decided without changing it.

* **dynamic** - layers a registered handler quantizes (Conv2d, ConvTranspose2d, MaskedConv2d,
  Linear built in) inside the analysis transform ``g_a`` and the synthesis transform ``g_s``,
  after their *tap*: the first module of the transform that runs. A selector picks their bit
  width per image from the tap's output.
* **fixed** - the same layer types everywhere else: the taps, the hyper transforms,
  entropy-parameter and channel-context networks, layers of a transform that did not run in the
  probe, and layers whose handler has no per-image widths (``dynamic_bits = False``, e.g.
  multi-head attention). They run at ``config.fixed_bits``.
* **float** - GDN/IGDN, the entropy models, normalisations and PReLU, the autoregressive context
  models (the ``autoregressive-context`` adapter) and ``config.float_modules``.
* anything else with parameters is **unsupported**: an error naming it, or a warning with
  ``config.unsupported == "skip"``.

Taps and the order of layers come from a probe forward of both transforms on a small random
batch (the order modules really run, not the order they were registered in); a dynamic layer
that runs before its tap has produced the selector's input is refused.

Example:
    >>> from compressai.models import ScaleHyperprior
    >>> plan = plan_quantization(ScaleHyperprior(8, 12))
    >>> plan.taps, plan.dynamic["encoder"]
    ({'encoder': 'g_a.0', 'decoder': 'g_s.0'}, ['g_a.2', 'g_a.4', 'g_a.6'])
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple, Type

import torch
from compressai.entropy_models import EntropyModel
from compressai.layers import GDN
from torch import nn

from ..nn import layers as _layers  # noqa: F401  (registers the built-in layer handlers)
from ..registry import handler_for, load_plugins, registrations
from .adapters import DECODER, ENCODER, adapter_for
from .config import DynaQuantConfig

__all__ = ["FLOAT_BY_DESIGN", "QuantizationPlan", "UnsupportedModuleError", "plan_quantization"]

#: module types left in floating point by design (see the module docstring).
FLOAT_BY_DESIGN: Tuple[Type[nn.Module], ...] = (
    GDN,
    EntropyModel,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.PReLU,
)

PROBE_SIZE = 64


class UnsupportedModuleError(TypeError):
    """A module with parameters that no layer handler can quantize."""


@dataclass
class QuantizationPlan:
    """Which module becomes what; built by :func:`plan_quantization`.

    ``dynamic`` lists each side's layers in the order they run; ``tap_channels`` is the channel
    count of each tap's output (the selectors' input).
    """

    dynamic: Dict[str, List[str]] = field(default_factory=lambda: {ENCODER: [], DECODER: []})
    fixed: List[str] = field(default_factory=list)
    float: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)
    taps: Dict[str, str] = field(default_factory=dict)
    tap_channels: Dict[str, int] = field(default_factory=dict)
    adapter: str = ""

    @property
    def quantized(self) -> List[str]:
        """Every layer that gets quantized: fixed ones, then each side's dynamic ones."""
        return self.fixed + self.dynamic[ENCODER] + self.dynamic[DECODER]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plan_quantization(model: nn.Module, config: Optional[DynaQuantConfig] = None) -> QuantizationPlan:
    """Decide, without changing anything, what ``dynaquantize`` does to each module.

    The model adapter that applies to ``model`` (:func:`~dynaquant_brevitas.transform.adapters.adapter_for`)
    may name the taps and the modules kept float or at fixed precision; the registered layer
    handlers (installed plugins included) decide what can be quantized.

    Raises:
        UnsupportedModuleError: for a module no handler quantizes (``unsupported="error"``).
        ValueError: if a transform is missing, cannot run on a small image, or runs a dynamic
            layer before its tap.
    """
    config = config or DynaQuantConfig()
    load_plugins()
    plan = QuantizationPlan()
    plan.adapter, adapter = adapter_for(model)
    float_patterns = list(config.float_modules) + list(adapter.float_modules(model, config))
    quantizable = _classify(model, config, plan, float_patterns)
    modules = dict(model.named_modules())
    per_image = [name for name in quantizable if getattr(handler_for(modules[name]), "dynamic_bits", True)]
    order = _probe(model, config)
    fixed_patterns = list(adapter.fixed_modules(model, config))
    given = adapter.taps(model, config)
    for side, attr in ((ENCODER, config.analysis), (DECODER, config.synthesis)):
        plan.taps[side] = given.get(side) or _first_child_run(model, attr, order.events)
        plan.tap_channels[side] = order.channels.get(plan.taps[side], 0)
    assigned = set()
    for side, attr in ((ENCODER, config.analysis), (DECODER, config.synthesis)):
        tap = plan.taps[side]
        members = [
            name
            for name in order.first_run(per_image)
            if name.startswith(attr + ".") and not _inside(name, tap) and not _matches(name, fixed_patterns)
        ]
        _check_after_tap(members, tap, order.events, side)
        plan.dynamic[side] = members
        assigned.update(members)
    plan.fixed = [name for name in quantizable if name not in assigned]
    return plan


def _inside(name: str, parent: str) -> bool:
    return name == parent or name.startswith(parent + ".")


def _classify(model: nn.Module, config: DynaQuantConfig, plan: QuantizationPlan, float_patterns: List[str]) -> List[str]:
    """Fill ``plan.float`` / ``plan.skipped``; return the quantizable layer names (model order)."""
    quantizable: List[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if _matches(name, float_patterns):
                plan.float.append(name)
            elif handler_for(child) is not None:
                quantizable.append(name)
            elif isinstance(child, FLOAT_BY_DESIGN):
                plan.float.append(name)
            elif any(True for _ in child.parameters(recurse=False)):
                _unsupported(name, child, config, plan)
            else:
                visit(child, name)

    visit(model, "")
    return quantizable


@dataclass
class _RunOrder:
    """What the probe saw: ``(name, "start"|"end")`` events in order, and output channels."""

    events: List[Tuple[str, str]]
    channels: Dict[str, int]

    def first_run(self, names: Iterable[str]) -> List[str]:
        """``names`` that ran, in the order they first started."""
        wanted, seen = set(names), []
        for name, kind in self.events:
            if kind == "start" and name in wanted and name not in seen:
                seen.append(name)
        return seen


def _probe(model: nn.Module, config: DynaQuantConfig) -> _RunOrder:
    """Run the analysis transform on a 2-image batch and the synthesis transform on its output."""
    events: List[Tuple[str, str]] = []
    channels: Dict[str, int] = {}
    handles = []
    for attr in (config.analysis, config.synthesis):
        transform = getattr(model, attr, None)
        if not isinstance(transform, nn.Module):
            raise ValueError(
                f"{type(model).__name__} has no module {attr!r} to use as a transform; "
                "set DynaQuantConfig(analysis=..., synthesis=...) to its attribute names"
            )
        for sub, module in transform.named_modules():
            name = f"{attr}.{sub}" if sub else attr
            handles.append(module.register_forward_pre_hook(lambda m, i, n=name: events.append((n, "start"))))
            handles.append(module.register_forward_hook(lambda m, i, o, n=name: _ended(n, o, events, channels)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            first = next(model.parameters())
            x = torch.rand(2, 3, PROBE_SIZE, PROBE_SIZE, generator=torch.Generator().manual_seed(0))
            y = getattr(model, config.analysis)(x.to(first.device, first.dtype))
            getattr(model, config.synthesis)(y)
    except Exception as error:
        raise ValueError(
            f"could not run {config.analysis}/{config.synthesis} of {type(model).__name__} on a "
            f"2x3x{PROBE_SIZE}x{PROBE_SIZE} batch to find the order its layers run in: {error}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return _RunOrder(events, channels)


def _ended(name: str, output: object, events: List[Tuple[str, str]], channels: Dict[str, int]) -> None:
    events.append((name, "end"))
    if isinstance(output, torch.Tensor) and output.dim() >= 2:
        channels.setdefault(name, int(output.shape[1]))


def _first_child_run(model: nn.Module, attr: str, events: List[Tuple[str, str]]) -> str:
    children = {f"{attr}.{child}" for child, _ in getattr(model, attr).named_children()}
    for name, kind in events:
        if kind == "start" and name in children:
            return name
    return attr


def _check_after_tap(members: List[str], tap: str, events: List[Tuple[str, str]], side: str) -> None:
    """Refuse dynamic layers that start before the tap has ended (they would run on a stale choice)."""
    tap_end = next((i for i, event in enumerate(events) if event == (tap, "end")), None)
    early = [name for name in members if tap_end is None or events.index((name, "start")) < tap_end]
    if early:
        raise ValueError(
            f"{', '.join(early)} run(s) before {tap!r}, whose output the {side} bit-width selector reads; "
            "keep them at fixed precision (a model adapter's fixed_modules), in float "
            "(DynaQuantConfig(float_modules=...)), or tap another module (a model adapter's taps)"
        )


def _unsupported(name: str, module: nn.Module, config: DynaQuantConfig, plan: QuantizationPlan) -> None:
    supported = ", ".join(sorted(reg.name for reg in registrations("handler").values()))
    message = (
        f"cannot quantize module {name!r} of type {type(module).__module__}.{type(module).__qualname__}: "
        f"no layer handler for it (supported: {supported}, and subclasses that keep their forward)"
    )
    if config.unsupported == "error":
        raise UnsupportedModuleError(
            message + '; register a handler plugin, or pass DynaQuantConfig(unsupported="skip") '
            "to leave it in floating point"
        )
    warnings.warn(message + "; left in floating point", stacklevel=4)
    plan.skipped.append(name)
