"""Checkpoints: atomic writes, model rebuilding, weight fingerprints.

A checkpoint is a plain dict saved with :func:`torch.save`::

    {"format": "dynaquant-checkpoint", "version": 1,
     "arch": "bmshj2018-hyperprior", "model_kwargs": {"N": 64, "M": 96},
     "state_dict": ..., "dynaquant": None or DynaQuantConfig.to_dict(),
     "train_config": {...}, "step": 1000,
     "optimizers": {...}, "scheduler": {...}, "rng": {...}}   # resume only

Besides its own checkpoints, :func:`load_any` (used by ``load_model``, ``eval``, ``encode``,
``decode``) reads a plain CompressAI state dict saved with ``torch.save(model.state_dict())``,
also nested under ``state_dict``/``model``/``model_state_dict``/``net`` (as CompressAI's
training example saves it) and with DataParallel/DDP ``module.`` prefixes; the architecture is
the one given, or the only CompressAI architecture the tensors fit.

Example:
    >>> import tempfile, os
    >>> model = build_model("bmshj2018-factorized", {"N": 8, "M": 12})
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
    >>> _ = save_atomic(make_checkpoint(model, "bmshj2018-factorized", {"N": 8, "M": 12}), path)
    >>> type(load_model(path)).__name__
    'FactorizedPrior'
"""

from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..nn import DynaQuantLayer
from ..transform import DynaQuantConfig, dynaquantize, freeze
from .files import write_atomic

FORMAT = "dynaquant-checkpoint"
VERSION = 1
#: Keys under which training scripts commonly nest a model's state dict.
NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")
#: Entropy-coder buffers whose shape follows ``update()``; CompressAI's ``load_state_dict`` resizes them.
_CODER_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or cannot be rebuilt into a model."""


def architectures() -> dict[str, type[nn.Module]]:
    """CompressAI image architectures by registry/zoo name (both spellings of names accepted).

    >>> architectures()["bmshj2018-hyperprior"].__name__
    'ScaleHyperprior'
    """
    from compressai.registry import MODELS
    from compressai.zoo.image import model_architectures

    archs = dict(MODELS)
    archs.update(model_architectures)
    # The zoo spells this one with underscores; the registry with dashes.
    archs["bmshj2018-factorized-relu"] = archs.get(
        "bmshj2018-factorized-relu", archs.get("bmshj2018_factorized_relu")
    )
    return {name: cls for name, cls in archs.items() if cls is not None}


def build_model(arch: str, model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Instantiate a CompressAI architecture by name and constructor arguments.

    >>> type(build_model("bmshj2018-hyperprior", {"N": 64, "M": 96})).__name__
    'ScaleHyperprior'
    """
    archs = architectures()
    if arch not in archs:
        known = ", ".join(sorted(archs))
        raise CheckpointError(f"unknown architecture {arch!r}; known: {known}")
    try:
        return archs[arch](**dict(model_kwargs or {}))
    except TypeError as err:
        raise CheckpointError(f"cannot build {arch!r} with {dict(model_kwargs or {})}: {err}") from err


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return (
        model.module
        if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel)
        else model
    )


def make_checkpoint(
    model: nn.Module,
    arch: str,
    model_kwargs: Mapping[str, Any],
    *,
    dynaquant: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    step: int = 0,
    **resume_state: Any,
) -> dict[str, Any]:
    """Bundle a model and its provenance; extra keyword arguments (optimizers, rng, ...) are stored as is."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "model_kwargs": dict(model_kwargs),
        "state_dict": state,
        "dynaquant": dict(dynaquant) if dynaquant is not None else None,
        "train_config": dict(train_config or {}),
        "step": int(step),
        **resume_state,
    }


def weights_only(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint without optimizer, scheduler and RNG state (small, for distribution)."""
    keep = ("format", "version", "arch", "model_kwargs", "state_dict", "integer_weights", "dynaquant", "profile",
            "train_config", "step")
    return {k: checkpoint[k] for k in keep if k in checkpoint}


def _static_weight_layers(model: nn.Module, config: DynaQuantConfig | None, frozen: bool) -> list[tuple[str, nn.Module]]:
    """DynaQuant layers whose weight has one width for every image (all of them in a frozen or a
    static model, none in a dynamic one)."""
    if config is None or (config.dynamic and not frozen):
        return []
    return [(name, m) for name, m in unwrap(model).named_modules() if isinstance(m, DynaQuantLayer)]


def _smallest_int_dtype(low: int, high: int) -> torch.dtype:
    for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return torch.int64


@torch.no_grad()
def compact_checkpoint(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """``checkpoint`` (of ``model``, static or frozen) with every quantized weight stored as its
    integers (int8 for widths up to 8) instead of float32: about 4x smaller, and
    :func:`model_from_checkpoint` rebuilds exactly the same model. A dynamic model's weights
    stay float (each image may quantize them at another width).

    Example:
        >>> import tempfile, torch
        >>> from compressai.models import ScaleHyperprior
        >>> from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize
        >>> model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(8,)))
        >>> calibrate(model, [torch.rand(1, 3, 64, 64)])
        >>> path = save_model(model, tempfile.mkdtemp() + "/int8.pt", compact=True)
        >>> small = load_checkpoint(path)
        >>> small["state_dict"]["g_a.0.weight"].dtype, len(small["integer_weights"])
        (torch.int8, 14)
        >>> rebuilt = model_from_checkpoint(small)
        >>> bool(torch.equal(rebuilt.g_a[0].quant_weight().value, model.g_a[0].quant_weight().value))
        True
    """
    config = DynaQuantConfig.from_dict(checkpoint["dynaquant"]) if checkpoint.get("dynaquant") else None
    state = dict(checkpoint["state_dict"])
    integer: dict[str, int] = {}
    for name, layer in _static_weight_layers(model, config, checkpoint.get("profile") is not None):
        quant = layer.weight_quant.tensor_quant
        bits = int(quant.static_bit_width)
        qmin, qmax = quant.levels(bits)
        key = f"{name}.weight" if name else "weight"
        state[key] = quant.qparams(bits).quantize(layer.weight).to(_smallest_int_dtype(qmin, qmax)).cpu()
        integer[key] = bits
    return {**checkpoint, "state_dict": state, "integer_weights": integer}


@torch.no_grad()
def _expand_integer_weights(model: nn.Module, integer: Mapping[str, int]) -> None:
    """Replace the integers a compact checkpoint stored (loaded as floats) by the weights they stand for."""
    modules = dict(unwrap(model).named_modules())
    for key, bits in integer.items():
        layer = modules.get(key.rpartition(".")[0])
        if not isinstance(layer, DynaQuantLayer) or not key.endswith(".weight"):
            raise CheckpointError(f"integer_weights names {key!r}, which is not the weight of a quantized layer")
        layer.weight.copy_(layer.weight_quant.tensor_quant.qparams(int(bits)).dequantize(layer.weight))


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Save with :func:`torch.save` through :func:`~dynaquant_brevitas.io.files.write_atomic`, so
    ``path`` always holds a complete file (a crash leaves the old one)."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_atomic`; raises :class:`CheckpointError` if unusable.

    Loads with ``weights_only=True``: tensors and plain data only, never arbitrary pickled code.
    """
    path = Path(path)
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a dynaquant checkpoint (missing format tag)")
    return ckpt


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with a one-line :class:`CheckpointError` for unusable files."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_unpickling_message(path, err)) from err
    except Exception as err:  # torch raises several types for truncated/corrupt files
        with open(path, "rb") as f:
            damaged = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
        if damaged:
            raise CheckpointError(
                f"{path} is truncated or damaged (torch cannot read its archive: {_first_line(err)})"
            ) from err
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not written by torch.save)") from err


def _unpickling_message(path: Path, err: BaseException) -> str:
    unsupported = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(err))
    if not unsupported:
        return f"{path} is not a PyTorch checkpoint (not written by torch.save)"
    return (
        f"{path} holds Python objects other than tensors and plain data; not unpickling it "
        f"(torch.load weights_only refuses {unsupported.group(1)})"
    )


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def load_any(path: str | os.PathLike, arch: str | None = None) -> dict[str, Any]:
    """A dynaquant checkpoint, or a CompressAI state dict wrapped as one (see the module docs).

    ``arch`` names the architecture of a bare state dict (inferred when ``None``); for a
    dynaquant checkpoint it must agree with the stored one.
    """
    path = Path(path)
    obj = _torch_load(path)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        if arch is not None and arch != obj.get("arch"):
            raise CheckpointError(f"{path} holds a {obj.get('arch')} model, not {arch}")
        return dict(obj)
    state = strip_wrappers(find_state_dict(obj, path), path)
    name, kwargs = infer_architecture(state, path, arch)
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": name,
        "model_kwargs": kwargs,
        "state_dict": state,
        "dynaquant": None,
        "step": None,
    }


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model tensors of a dynaquant checkpoint or of a (nested, prefixed) CompressAI state dict."""
    obj = _torch_load(Path(path))
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return dict(obj["state_dict"])
    return strip_wrappers(find_state_dict(obj, path), path)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def find_state_dict(obj: Any, source: str | os.PathLike = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of ``obj``: ``obj`` itself or what it nests under one of :data:`NESTED_KEYS`."""
    for _ in range(3):
        if _is_state_dict(obj):
            return dict(obj)
        nested = [k for k in NESTED_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
        if len(nested) > 1:
            raise CheckpointError(f"{source} is ambiguous: it nests state dicts under {', '.join(nested)}")
        if not nested:
            break
        obj = obj[nested[0]]
    raise CheckpointError(
        f"{source} is neither a dynaquant checkpoint nor a model state dict "
        f"(no format tag, no tensors at the top or under {', '.join(NESTED_KEYS)})"
    )


def strip_wrappers(
    state: Mapping[str, torch.Tensor], source: str | os.PathLike = "state_dict"
) -> dict[str, torch.Tensor]:
    """``state`` without DataParallel/DDP ``module.`` prefixes, with CompressAI's legacy key names updated."""
    from compressai.zoo.pretrained import rename_key

    state = dict(state)
    prefix = "module."
    while state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items()}
    if any(k.startswith(prefix) for k in state):
        raise CheckpointError(f"{source}: some keys start with {prefix!r} and others do not")
    return {rename_key(k): v for k, v in state.items()}


class _Built(Exception):
    """Raised by a probe constructor to capture the arguments ``from_state_dict`` would use."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        super().__init__()
        self.call = (args, kwargs)


def constructor_kwargs(cls: type[nn.Module], state: Mapping[str, torch.Tensor]) -> dict[str, Any] | None:
    """The constructor arguments ``cls.from_state_dict(state)`` infers, without building (None if none)."""
    if not callable(getattr(cls, "from_state_dict", None)):
        return None

    def capture(self: Any, *args: Any, **kwargs: Any) -> None:
        raise _Built(args, kwargs)

    probe = type(f"_Probe{cls.__name__}", (cls,), {"__init__": capture})
    try:
        probe.from_state_dict(dict(state))
    except _Built as built:
        args, kwargs = built.call
        bound = inspect.signature(cls).bind(*args, **kwargs)
        inferred = {**bound.kwargs, **dict(zip(inspect.signature(cls).parameters, bound.args))}
        return {**_channel_groups(state), **inferred} if "groups" in inspect.signature(cls).parameters else inferred
    except Exception:  # its size inference reads keys this state dict does not have
        return None
    return None


def _channel_groups(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """``M`` and ``groups`` of a channel-grouped latent codec (ELIC) from its tensors, which
    CompressAI's ``from_state_dict`` does not read: the context network of group ``k > 0`` ends in
    its means and scales (twice its channels), the hyper-analysis takes all ``M`` ({} if the keys
    are not there)."""
    hyper = state.get("latent_codec.hyper.h_a.0.weight")
    last: dict[int, tuple[int, int]] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"latent_codec\.y\.channel_context\.y(\d+)\.(\d+)\.weight", key):
            group, layer = int(m.group(1)), int(m.group(2))
            last[group] = max(last.get(group, (-1, 0)), (layer, int(value.shape[0]) // 2))
    if hyper is None or not last:
        return {}
    later = [last[group][1] for group in sorted(last)]
    return {"M": int(hyper.shape[1]), "groups": [int(hyper.shape[1]) - sum(later)] + later}


def infer_architecture(
    state: Mapping[str, torch.Tensor], source: str | os.PathLike = "checkpoint", arch: str | None = None
) -> tuple[str, dict[str, Any]]:
    """``(arch, model_kwargs)`` of the CompressAI architecture whose keys and shapes ``state`` fits.

    With ``arch`` given, only that one is tried; without, every image architecture is, and more
    than one fit is refused as ambiguous.
    """
    if arch is not None and arch not in architectures():
        build_model(arch)  # raises the unknown-architecture error naming the known ones
    fits, problems = [], {}
    for name in [arch] if arch is not None else _architecture_names():
        trial = _try_architecture(name, state)
        if trial is None:
            continue
        kwargs, problems[name] = trial
        if not any(problems[name]):
            fits.append((name, kwargs))
    if len(fits) == 1:
        return fits[0]
    if fits:
        names = ", ".join(n for n, _ in fits)
        raise CheckpointError(f"{source} fits several architectures ({names}); name one (--arch)")
    if problems:
        name = min(problems, key=lambda n: sum(map(len, problems[n])))
        raise CheckpointError(f"{source} does not fit {name}: {_describe(*problems[name])}")
    what = f"architecture {arch}" if arch else "any CompressAI image architecture"
    raise CheckpointError(f"{source}: cannot infer the constructor arguments of {what} from its tensors")


def _try_architecture(name: str, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], tuple] | None:
    """``name``'s constructor arguments inferred from ``state`` and its mismatches (None if not inferable)."""
    kwargs = constructor_kwargs(architectures()[name], state)
    if kwargs is None:
        return None
    try:
        model = build_model(name, kwargs)
    except (CheckpointError, ValueError, RuntimeError):
        return None
    return kwargs, _mismatch(model, state)


def _architecture_names() -> list[str]:
    """One name per CompressAI class that can size itself from a state dict."""
    names: dict[type, str] = {}
    for name, cls in sorted(architectures().items()):
        names.setdefault(cls, name)
    return [name for cls, name in names.items() if callable(getattr(cls, "from_state_dict", None))]


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys and shape mismatches of ``state`` against ``model``."""
    expected = model.state_dict()
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if k.rsplit(".", 1)[-1] not in _CODER_BUFFERS and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    return sorted(set(expected) - set(state)), sorted(set(state) - set(expected)), shapes


def _describe(missing: list[str], unexpected: list[str], shapes: list[str], limit: int = 5) -> str:
    labels = ("missing keys", "unexpected keys", "shape mismatches (checkpoint vs model)")
    groups = zip(labels, (missing, unexpected, shapes))
    parts = [f"{label}: {_listed(items, limit)}" for label, items in groups if items]
    return "; ".join(parts)


def state_dict_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """What keeps ``state`` from loading into ``model`` (missing/unexpected keys, shapes); '' if nothing."""
    return _describe(*_mismatch(model, state))


def _listed(items: list[str], limit: int) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], what: str = "the model") -> None:
    """``model.load_state_dict(state)`` with a one-line :class:`CheckpointError` naming what does not fit."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        problem = state_dict_mismatch(model, state) or _first_line(err)
        raise CheckpointError(f"state_dict does not fit {what}: {problem}") from err


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers holding NaN or inf."""
    return [
        name
        for name, t in unwrap(model).state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


def check_finite(model: nn.Module, what: str = "model") -> None:
    """Raise :class:`CheckpointError` if any parameter or buffer holds NaN or inf."""
    bad = nonfinite_tensors(model)
    if bad:
        raise CheckpointError(f"{what} has NaN or inf values in {_listed(bad, 5)}")


def model_from_checkpoint(ckpt: Mapping[str, Any], source: str | os.PathLike | None = None) -> nn.Module:
    """Rebuild the model stored in a loaded checkpoint (float, dynaquantized, or frozen to a
    ``profile``), in eval mode.

    Refuses state dicts that do not fit (naming missing and unexpected keys and shape
    mismatches) and weights holding NaN or inf; ``source`` (the file) prefixes the message.
    """
    model = build_model(ckpt["arch"], ckpt["model_kwargs"])
    if ckpt.get("dynaquant") is not None:
        model = dynaquantize(model, DynaQuantConfig.from_dict(ckpt["dynaquant"]))
        if ckpt.get("profile") is not None:
            model = freeze(model, ckpt["profile"])
    what = f"{ckpt['arch']}{dict(ckpt['model_kwargs'])}"
    integer = dict(ckpt.get("integer_weights") or {})
    state = {k: v.float() if k in integer else v for k, v in strip_wrappers(ckpt["state_dict"]).items()}
    try:
        load_weights(model, state, what)
        _expand_integer_weights(model, integer)
        check_finite(model, "the checkpoint")
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}" if source else str(err)) from err
    return model.eval()


def load_model(path: str | os.PathLike, arch: str | None = None) -> nn.Module:
    """A model saved by :func:`save_model` or ``dynaquant train``, or a CompressAI state dict
    (``arch`` names its architecture; inferred from its tensors when ``None``)."""
    return model_from_checkpoint(load_any(path, arch), path)


def save_model(model: nn.Module, path: str | os.PathLike, arch: str | None = None, compact: bool = False,
               model_kwargs: Mapping[str, Any] | None = None) -> Path:
    """Save a float, dynaquantized or frozen CompressAI model in one file that :func:`load_model`
    rebuilds without the original Python objects: architecture, constructor arguments,
    ``DynaQuantConfig``, frozen profile and weights.

    ``arch`` is the CompressAI registry name; by default the one whose class ``model`` is, with
    the constructor arguments inferred from its weights (``model_kwargs`` gives them instead); a
    model those arguments would not rebuild is refused before anything is written. ``compact`` stores quantized weights as integers (:func:`compact_checkpoint`).

    Example:
        >>> import tempfile, torch
        >>> from compressai.models import ScaleHyperprior
        >>> from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, freeze
        >>> model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(candidate_bits=(4, 8)))
        >>> calibrate(model, [torch.rand(1, 3, 64, 64)])
        >>> path = save_model(freeze(model, "min"), tempfile.mkdtemp() + "/frozen.pt")
        >>> sorted(set(load_model(path).dynaquant_profile.values()))
        [4, 8]
    """
    arch = arch or _registry_name(model)
    state = _float_view(unwrap(model).state_dict())
    kwargs = dict(model_kwargs) if model_kwargs is not None else constructor_kwargs(architectures()[arch], state)
    if kwargs is None:
        raise CheckpointError(f"cannot infer the constructor arguments of {arch} from the model's weights; "
                              "pass them as model_kwargs")
    problem = state_dict_mismatch(build_model(arch, kwargs), state)
    if problem:
        raise CheckpointError(f"{arch}{kwargs} would not rebuild this model ({problem}); pass its constructor "
                              "arguments as model_kwargs")
    ckpt = make_checkpoint(model, arch, kwargs, dynaquant=quant_config_of(model))
    if getattr(model, "dynaquant_profile", None) is not None:
        ckpt["profile"] = dict(model.dynaquant_profile)
    return save_atomic(compact_checkpoint(ckpt, model) if compact else ckpt, path)


def quant_config_of(model: nn.Module) -> dict[str, Any] | None:
    """The ``DynaQuantConfig`` (as a dict) a dynaquantized or frozen model was built with; ``None``
    for a float model. What a checkpoint stores, so that it rebuilds the model as it is (a config
    widened by ``unfreeze`` included)."""
    model = unwrap(model)
    config = getattr(getattr(model, "dynaquant", None), "config", None) or getattr(model, "dynaquant_config", None)
    return config.to_dict() if config is not None else None


def _registry_name(model: nn.Module) -> str:
    names = [name for name, cls in architectures().items() if type(unwrap(model)) is cls]
    if not names:
        raise CheckpointError(
            f"{type(model).__name__} is not a CompressAI registry architecture: pass arch=, or save its "
            "state_dict with torch.save and rebuild the model yourself"
        )
    return sorted(names, key=lambda n: ("_" in n, n))[0]


def _float_view(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors a float model of the same architecture has (quantizer and selector entries dropped)."""
    return {k: v for k, v in state.items() if "_quant." not in k and not k.startswith("dynaquant.")}


def state_dict_fingerprint(model: nn.Module, length: int = 16) -> bytes:
    """A SHA-256 prefix over parameter/buffer names, shapes, dtypes and values.

    Two models give the same fingerprint exactly when their state_dicts are equal, so it
    identifies both the architecture and the weights.

    >>> m = build_model("bmshj2018-factorized", {"N": 8, "M": 12})
    >>> state_dict_fingerprint(m) == state_dict_fingerprint(m)
    True
    """
    h = hashlib.sha256()
    for name, tensor in sorted(unwrap(model).state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.digest()[:length]
