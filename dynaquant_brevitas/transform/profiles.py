"""Static profiles: the bits a dynaquantized model chose per image, and ``freeze`` to one profile.

Example:
    >>> import torch
    >>> from compressai.models import ScaleHyperprior
    >>> from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
    >>> model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(4, 8)))
    >>> calibrate(model, [torch.rand(2, 3, 64, 64)])
    >>> static = freeze(model, "min")
    >>> sorted(set(static.dynaquant_profile.values()))
    [4, 8]
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..nn import Bits
from .adapters import DECODER, ENCODER
from .config import DynaQuantConfig
from .cost import layer_costs
from .dynaquantize import dynaquant_layers, dynaquant_state, dynaquantize

__all__ = ["Profile", "chosen_bits", "freeze", "profile_entry", "resolve_profile", "selection_set_aside", "unfreeze"]

Profile = Union[str, Mapping[str, Bits]]


def chosen_bits(model: nn.Module, images: Iterable[Tensor]) -> Tuple[List[str], List[List[Tuple[int, int]]]]:
    """``(dynamic layer names, chosen (weight, activation) widths per image)`` of an eval-mode run
    over ``images``. Each image is ``(3, H, W)`` or ``(N, 3, H, W)``; a batch gives one row per image.
    """
    state = dynaquant_state(model)
    layers: List[str] = []
    rows: List[List[Tuple[int, int]]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for image in images:
                model(image if image.dim() == 4 else image.unsqueeze(0))
                if state.last:
                    record = state.bits_record()
                    layers = record["layers"]
                    pairs = zip(record["weight_bits"].tolist(), record["activation_bits"].tolist())
                    rows.extend([[(int(w), int(a)) for w, a in zip(*row)] for row in pairs])
    finally:
        model.train(was_training)
    return layers, rows


def _mode_profile(model: nn.Module, images: Iterable[Tensor]) -> Dict[str, Tuple[int, int]]:
    layers, rows = chosen_bits(model, images)
    if not rows:
        raise ValueError('profile "mode" needs at least one image')
    return {name: Counter(row[i] for row in rows).most_common(1)[0][0] for i, name in enumerate(layers)}


def resolve_profile(model: nn.Module, profile: Profile, images: Optional[Iterable[Tensor]] = None) -> Dict[str, Tuple[int, int]]:
    """Per-layer ``(weight, activation)`` widths from ``"max"``, ``"min"``, ``"mode"`` or a mapping.

    A mapping names every dynamic layer (with one of the candidates: a width, or a
    ``[weight, activation]`` pair) and may name fixed layers too, with any widths from 2 to 16: a
    frozen model's own ``dynaquant_profile`` is accepted.
    """
    state = dynaquant_state(model)
    names = [n for side in (ENCODER, DECODER) for n in state.layer_names[side]]
    pairs = state.config.pairs
    if isinstance(profile, str):
        if profile in ("max", "min"):
            return {name: pairs[-1 if profile == "max" else 0] for name in names}
        if profile == "mode":
            if images is None:
                raise ValueError('profile "mode" needs images=...')
            return _mode_profile(model, images)
        raise ValueError(f"unknown profile {profile!r}: use 'max', 'min', 'mode' or a mapping")
    if not isinstance(profile, Mapping):
        raise ValueError(f"a profile is 'max', 'min', 'mode' or a {{layer: bits}} mapping, not {type(profile).__name__}")
    mapping = {str(k): _widths(k, v) for k, v in profile.items()}
    quantized = {name for name, _ in dynaquant_layers(model)}
    unknown = sorted(set(mapping) - quantized)
    missing = sorted(set(names) - set(mapping))
    if unknown or missing:
        raise ValueError(f"profile does not match the model's quantized layers: unknown {unknown}, missing dynamic {missing}")
    bad = {k: mapping[k] for k in names if mapping[k] not in pairs}
    if bad:
        raise ValueError(f"profile bit widths {bad} are not among the candidates {list(pairs)}")
    return mapping


def _widths(name: object, value: object) -> Tuple[int, int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(values) != 2 or not all(_valid_width(v) for v in values):
        raise ValueError(f"profile: {name}: a width or a [weight, activation] pair of integers from 2 to 16, got {value!r}")
    return int(values[0]), int(values[1])


def _valid_width(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and int(value) == value and 2 <= value <= 16


def profile_entry(weight_bits: int, activation_bits: Optional[int]) -> Bits:
    """How a profile records a layer's widths: one number when they are equal (or the input is
    not quantized), else ``[weight, activation]``."""
    if activation_bits is None or activation_bits == weight_bits:
        return int(weight_bits)
    return [int(weight_bits), int(activation_bits)]


@contextmanager
def selection_set_aside(model: nn.Module) -> Iterator[None]:
    """Drop the last forward's selection while inside (it may hold a training graph, which
    ``copy.deepcopy`` refuses; a forward inside would replace it), and put it back afterwards."""
    state = dynaquant_state(model)
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
        profile: ``"max"`` (every dynamic layer at the most expensive candidate), ``"min"``,
            ``"mode"`` (each layer's most frequent choice over ``images``) or a ``{layer name:
            bits}`` map (a width, or a ``[weight, activation]`` pair).
        images: images for ``"mode"``, each ``(3, H, W)`` or ``(N, 3, H, W)``.

    Returns:
        A deep copy whose dynamic layers run at fixed bit widths; ``frozen.dynaquant_profile``
        records every quantized layer's width and ``frozen.dynaquant_config`` the configuration
        (:func:`~dynaquant_brevitas.io.save_model` stores both). Export builds on it.
    """
    bits = resolve_profile(model, profile, images)
    with selection_set_aside(model):
        frozen = copy.deepcopy(model)
    state = dynaquant_state(frozen)
    for module in frozen.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k, hook in hooks.items() if getattr(hook, "__self__", None) is state]:
                del hooks[key]
    del frozen.dynaquant
    frozen.dynaquant_config = state.config
    layers = dict(dynaquant_layers(frozen))
    for name, (weight, activation) in bits.items():
        layers[name].set_bit_width(weight, activation)
    for layer in layers.values():
        layer.set_bit_choice(None)
    frozen.dynaquant_profile = {name: profile_entry(*layer.widths) for name, layer in layers.items()}
    return frozen


def _widened(config: DynaQuantConfig, widths: Iterable[Tuple[int, int]]) -> DynaQuantConfig:
    """``config`` with ``widths`` ((weight, activation) pairs) added to its weight and activation widths."""
    widths = list(widths)
    weights = sorted(set(config.weight_bits or config.candidate_bits) | {w for w, _ in widths})
    activations = sorted(set(config.activation_bits or config.candidate_bits) | {a for _, a in widths})
    return dataclasses.replace(config, weight_bits=tuple(weights), activation_bits=tuple(activations))


def unfreeze(frozen: nn.Module, float_model: nn.Module, config: Optional[DynaQuantConfig] = None,
             widen: bool = False, prefer: float = 0.0) -> nn.Module:
    """A dynamic model around a static one: ``float_model`` (left unchanged) dynaquantized with
    ``config`` (default: the frozen model's), with the frozen model's trained weights and ranges
    and every fixed layer at its frozen widths. The selectors are new: fit them to the model
    (:func:`~dynaquant_brevitas.training.selector_fit.fit_selectors`) around the frozen profile.

    The bit costs count the fixed layers at their frozen widths. Each dynamic layer's frozen
    widths must be among the candidates, so that the frozen profile stays one of the choices;
    ``widen=True`` adds the dynamic layers' frozen weight and activation widths to ``config``'s
    instead (the model's ``dynaquant_config`` says which it got). ``prefer`` > 0 starts the
    selectors at the frozen profile (:meth:`~dynaquant_brevitas.nn.BitSelector.start_at` with that
    margin), for training codec and selectors together from the static model.

    Raises:
        ValueError: if ``frozen`` is not a frozen model of the same architecture, or (without
            ``widen``) a dynamic layer's frozen widths are not a candidate, or ``prefer`` is
            negative or NaN.
    """
    if not prefer >= 0:
        raise ValueError(f"unfreeze: prefer is a logit margin >= 0, got {prefer}")
    profile = getattr(frozen, "dynaquant_profile", None)
    if profile is None:
        raise ValueError("unfreeze needs a frozen model (freeze(...), or a static DynaQuant checkpoint)")
    config = config or frozen.dynaquant_config
    model = dynaquantize(copy.deepcopy(float_model), config)
    state = dynaquant_state(model)
    widths = {name: _widths(name, value) for name, value in profile.items()}
    layers = dict(dynaquant_layers(model))
    if set(widths) != set(layers):
        raise ValueError(f"the frozen model's quantized layers {sorted(widths)} are not this model's {sorted(layers)}")
    dynamic = [n for side in (ENCODER, DECODER) for n in state.layer_names[side]]
    outside = {n: widths[n] for n in dynamic if widths[n] not in config.pairs}
    if outside and widen:
        return unfreeze(frozen, float_model, _widened(config, outside.values()), prefer=prefer)
    if outside:
        raise ValueError(f"frozen widths {outside} are not among the candidates {list(config.pairs)}")
    skipped = set(model.load_state_dict(frozen.state_dict(), strict=False).missing_keys)
    if any(not key.startswith("dynaquant.") for key in skipped):
        raise ValueError(f"the frozen model lacks tensors of this model: {sorted(skipped)[:5]}")
    fixed = {n: w for n, w in widths.items() if n not in dynamic}
    for name, (weight, activation) in fixed.items():
        layers[name].set_bit_width(weight, activation)
    state.costs = layer_costs(float_model, dynamic, fixed)
    if prefer > 0:
        for side, selector in state.selectors.items():
            selector.start_at([config.pairs.index(widths[n]) for n in state.layer_names[side]], prefer)
    return model
