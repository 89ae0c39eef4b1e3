"""Plugins: pluggy hook specifications and the registries ``dynaquantize`` reads.

Five kinds of things can be added without touching this package. Each has a hook that returns a
mapping; the built-ins (``dynaquant_brevitas.builtin_plugins``) use the same hooks.

- ``handler`` (``dynaquant_layer_handlers``): float module type -> DynaQuant layer class with
  ``from_float(module, bits, **options)``;
- ``estimator`` (``dynaquant_rounding_estimators``): name -> rounding module class, a Brevitas
  ``float_to_int_impl`` (optionally with ``grad_multiplier(u)``);
- ``selector`` (``dynaquant_bit_selectors``): name -> bit-width selector class;
- ``adapter`` (``dynaquant_model_adapters``): name -> ``ModelAdapter`` instance;
- ``exporter`` (``dynaquant_exporters``): name -> ``f(module, path, input_shape, **kwargs)``.

Installed packages are loaded from the entry-point group ``dynaquant``; set
``DYNAQUANT_DISABLE_PLUGIN_AUTOLOAD=1`` to skip them. A plugin that cannot be imported, returns
something of the wrong type, or registers a name another plugin owns raises ``PluginError``
naming both.

Example:
    >>> sorted(rounding_estimators())[:2]
    ['dgm', 'ste']
    >>> handler_for(nn.Conv2d(1, 1, 1)).__name__
    'DynaQuantConv2d'
    >>> registrations("selector")["mlp"].source
    'built-in'
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Type

import pluggy
from torch import nn

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "ModelAdapter",
    "PluginError",
    "Registration",
    "RegistryView",
    "adapter_for",
    "bit_selectors",
    "exporters",
    "handler_for",
    "hookimpl",
    "hookspec",
    "layer_handlers",
    "lookup",
    "model_adapters",
    "plugin_manager",
    "register",
    "registrations",
    "rounding_estimators",
    "unregister",
]

PROJECT = "dynaquant"
ENTRY_POINT_GROUP = "dynaquant"
DISABLE_AUTOLOAD = "DYNAQUANT_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN = "built-in"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

ENCODER, DECODER = "encoder", "decoder"


class PluginError(ValueError):
    """A plugin failed to load, returned something unusable, or took a name already taken."""


class HookSpecs:
    """The hooks a ``dynaquant`` plugin may implement (decorate yours with :data:`hookimpl`)."""

    @hookspec
    def dynaquant_layer_handlers(self) -> Mapping[Type[nn.Module], type]:
        """Float module types and the DynaQuant layer class that replaces them.

        The layer class needs ``from_float(module, bits, **options)`` (see
        :class:`~dynaquant_brevitas.layers.DynaQuantLayer`). The most specific type in a module's
        MRO wins, and only while the module keeps that type's ``forward``.
        """

    @hookspec
    def dynaquant_rounding_estimators(self) -> Mapping[str, Type[nn.Module]]:
        """Rounding modules by name, for ``DynaQuantConfig(estimator=...)`` and ``rounding=``.

        A class fits Brevitas's ``float_to_int_impl`` slot: an explicit ``__init__`` whose
        arguments Brevitas can inject (e.g. ``rounding_beta``), ``forward(x) -> round(x)``. With
        a ``grad_multiplier(u)`` method (the backward's factor at ``u``, or ``None`` for 1) the
        quantizer uses its fused kernel; without one, plain autograd through ``forward``.
        """

    @hookspec
    def dynaquant_bit_selectors(self) -> Mapping[str, Type[nn.Module]]:
        """Bit-width selector classes by name, for ``DynaQuantConfig(selector=...)``.

        Contract (as :class:`~dynaquant_brevitas.selector.BitSelector`):
        ``cls(channels, layers, candidates, hidden=..., pool=..., dropout=...)``, a
        ``temperature`` buffer, and ``forward(features) -> Selection``.
        """

    @hookspec
    def dynaquant_model_adapters(self) -> Mapping[str, "ModelAdapter"]:
        """:class:`ModelAdapter` instances by name: per-architecture rules for ``dynaquantize``."""

    @hookspec
    def dynaquant_exporters(self) -> Mapping[str, Callable[..., Any]]:
        """Exporters by name: ``f(module, path, input_shape, **kwargs)``."""


class ModelAdapter:
    """How ``dynaquantize`` reads one family of models; override what differs.

    Of the adapters whose :meth:`applies_to` is true for a model, the one with the highest
    ``priority`` is used; two at the same priority are an error. The built-in ``"compressai"``
    adapter (priority -1) applies to every model and gives the defaults below.

    Example:
        >>> from compressai.models import ScaleHyperprior
        >>> class HyperOnly(ModelAdapter):
        ...     model_types = (ScaleHyperprior,)
        ...     def fixed_modules(self, model, config):
        ...         return ["g_s.*"]  # decoder at fixed precision: no decoder selector
        >>> HyperOnly().applies_to(ScaleHyperprior(8, 12))
        True
    """

    #: Model classes (and subclasses) this adapter is for.
    model_types: Tuple[type, ...] = ()
    priority: int = 0

    def applies_to(self, model: nn.Module) -> bool:
        """Whether this adapter is meant for ``model`` (default: an instance of ``model_types``)."""
        return isinstance(model, self.model_types)

    def taps(self, model: nn.Module, config: Any) -> Dict[str, str]:
        """Module names whose outputs feed the encoder and decoder selectors.

        Default: the first child of ``config.analysis`` and of ``config.synthesis``.

        Raises:
            ValueError: if a transform is missing.
        """
        taps = {}
        for side, attr in ((ENCODER, config.analysis), (DECODER, config.synthesis)):
            transform = getattr(model, attr, None)
            if not isinstance(transform, nn.Module):
                raise ValueError(
                    f"{type(model).__name__} has no module {attr!r} to use as the {side} transform; "
                    f"set DynaQuantConfig(analysis=..., synthesis=...) to its attribute names"
                )
            first = next(iter(transform.named_children()), None)
            taps[side] = f"{attr}.{first[0]}" if first else attr
        return taps

    def float_modules(self, model: nn.Module, config: Any) -> List[str]:
        """Module-name patterns (``fnmatch``) kept in floating point, besides ``config.float_modules``."""
        return []

    def fixed_modules(self, model: nn.Module, config: Any) -> List[str]:
        """Module-name patterns kept at ``config.fixed_bits`` even inside the transforms."""
        return []


@dataclass(frozen=True)
class Registration:
    """One registered thing: its kind, name, value and where it comes from."""

    kind: str
    name: str
    value: Any
    source: str


@dataclass(frozen=True)
class _Kind:
    hook: str
    label: str
    check: Callable[[Any, Any], Optional[str]]  # (key, value) -> problem or None


def _is_module_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, nn.Module)


def _check_handler(key: Any, value: Any) -> Optional[str]:
    if not _is_module_class(key):
        return f"key {key!r} is not an nn.Module subclass"
    if not callable(getattr(value, "from_float", None)):
        return f"{value!r} for {_type_name(key)} has no from_float(module, bits, **options)"
    return None


def _check_class(key: Any, value: Any) -> Optional[str]:
    if not isinstance(key, str) or not _is_module_class(value):
        return f"{key!r}: expected a name -> nn.Module subclass, got {value!r}"
    return None


def _check_adapter(key: Any, value: Any) -> Optional[str]:
    if not isinstance(key, str) or not isinstance(value, ModelAdapter):
        return f"{key!r}: expected a name -> ModelAdapter instance, got {value!r}"
    return None


def _check_callable(key: Any, value: Any) -> Optional[str]:
    if not isinstance(key, str) or not callable(value):
        return f"{key!r}: expected a name -> callable, got {value!r}"
    return None


#: kind -> hook, label and check of what the hook returns.
KINDS: Dict[str, _Kind] = {
    "handler": _Kind("dynaquant_layer_handlers", "layer handler", _check_handler),
    "estimator": _Kind("dynaquant_rounding_estimators", "rounding estimator", _check_class),
    "selector": _Kind("dynaquant_bit_selectors", "bit-width selector", _check_class),
    "adapter": _Kind("dynaquant_model_adapters", "model adapter", _check_adapter),
    "exporter": _Kind("dynaquant_exporters", "exporter", _check_callable),
}


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# -- the plugin manager ---------------------------------------------------------------------------

_manager: Optional[pluggy.PluginManager] = None
_cache: Dict[str, Any] = {}


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager: built-ins plus the ``dynaquant`` entry points.

    Raises:
        PluginError: if an installed plugin fails to import or clashes with another.
    """
    global _manager
    if _manager is None:
        from . import builtin_plugins

        pm = pluggy.PluginManager(PROJECT)
        pm.add_hookspecs(HookSpecs)
        pm.register(builtin_plugins, name=BUILTIN)
        if not os.environ.get(DISABLE_AUTOLOAD):
            _load_entry_points(pm)
        _check_hook_names(pm)
        _build(pm)  # raises on a clash or a bad value, before anyone uses the registries
        _manager = pm
    return _manager


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as error:
        failed = _failing_entry_point(pm)
        where = f"plugin {failed} " if failed else "a plugin "
        raise PluginError(
            f"{where}in entry-point group {ENTRY_POINT_GROUP!r} failed to load: "
            f"{type(error).__name__}: {error}; fix or uninstall it, or set {DISABLE_AUTOLOAD}=1"
        ) from error


def _failing_entry_point(pm: pluggy.PluginManager) -> Optional[str]:
    """``'NAME = VALUE' (distribution D)`` of the first entry point that does not load."""
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or pm.get_plugin(ep.name) is not None:
                continue
            try:
                ep.load()
            except Exception:
                return f"'{ep.name} = {ep.value}' (distribution {dist.metadata['name']} {dist.version})"
    return None


def _source(pm: pluggy.PluginManager, plugin: object) -> str:
    name = pm.get_name(plugin)
    if name == BUILTIN:
        return BUILTIN
    for registered, dist in pm.list_plugin_distinfo():
        if registered is plugin:
            return f"{dist.project_name} {dist.version} ({name})"
    return getattr(plugin, "__name__", None) or name or repr(plugin)


def _collect(pm: pluggy.PluginManager, kind: str) -> Dict[Any, Registration]:
    """Every registration of ``kind``, checked; built-ins first, then in registration order."""
    spec = KINDS[kind]
    found: Dict[Any, Registration] = {}
    for impl in getattr(pm.hook, spec.hook).get_hookimpls():
        source = _source(pm, impl.plugin)
        try:
            mapping = impl.function() or {}
            items = list(dict(mapping).items())
        except Exception as error:
            raise PluginError(f"plugin {source}: hook {spec.hook} failed: {type(error).__name__}: {error}") from error
        for key, value in items:
            problem = spec.check(key, value)
            if problem:
                raise PluginError(f"plugin {source}: {spec.hook} returned a bad {spec.label}: {problem}")
            name = _type_name(key) if kind == "handler" else key
            taken = found.get(key)
            if taken is not None and taken.value is not value:
                raise PluginError(
                    f"plugin {source} registers {spec.label} {name!r}, which is already registered "
                    f"by {taken.source}; choose another name"
                )
            found.setdefault(key, Registration(kind, name, value, source))
    return found


def _build(pm: pluggy.PluginManager) -> Dict[str, Dict[Any, Registration]]:
    key = tuple(id(p) for p in pm.get_plugins())
    if _cache.get("key") != key:
        built = {kind: _collect(pm, kind) for kind in KINDS}
        _cache.clear()
        _cache.update(key=key, registry=built)
    return _cache["registry"]


def register(plugin: object, name: Optional[str] = None) -> object:
    """Register a plugin object or module at run time (as an installed one would be).

    Raises:
        PluginError: if it clashes with what is registered; nothing is registered then.
    """
    pm = plugin_manager()
    if pm.is_registered(plugin):
        return plugin
    pm.register(plugin, name=name)
    try:
        _check_hook_names(pm)
        _build(pm)
    except PluginError:
        pm.unregister(plugin)
        raise
    return plugin


def _check_hook_names(pm: pluggy.PluginManager) -> None:
    """Refuse ``dynaquant_*`` functions that match no hook (a typo would otherwise go unnoticed)."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(f"plugin {_source(pm, error.plugin)}: {error}; hooks: {', '.join(k.hook for k in KINDS.values())}") from None


def unregister(plugin: object) -> None:
    """Remove a plugin registered with :func:`register`."""
    plugin_manager().unregister(plugin)


# -- registries -------------------------------------------------------------------------------------


def registrations(kind: str) -> Dict[Any, Registration]:
    """All registrations of ``kind`` (one of :data:`KINDS`), keyed as their hook keys them."""
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
    return dict(_build(plugin_manager())[kind])


def _values(kind: str) -> Dict[Any, Any]:
    return {key: reg.value for key, reg in registrations(kind).items()}


def layer_handlers() -> Dict[Type[nn.Module], type]:
    """Float module type -> DynaQuant layer class."""
    return _values("handler")


def rounding_estimators() -> Dict[str, Type[nn.Module]]:
    """Rounding estimator name -> module class."""
    return _values("estimator")


def bit_selectors() -> Dict[str, Type[nn.Module]]:
    """Bit-width selector name -> class."""
    return _values("selector")


def model_adapters() -> Dict[str, ModelAdapter]:
    """Model adapter name -> adapter."""
    return _values("adapter")


def exporters() -> Dict[str, Callable[..., Any]]:
    """Exporter name -> ``f(module, path, input_shape, **kwargs)``."""
    return _values("exporter")


def lookup(kind: str, name: str) -> Any:
    """The value registered as ``name``; a clear error listing the known names otherwise.

    Example:
        >>> lookup("estimator", "nearest")
        Traceback (most recent call last):
        ...
        ValueError: unknown rounding estimator 'nearest'; known: dgm, ste
    """
    values = _values(kind)
    if name not in values:
        known = ", ".join(sorted(map(str, values)))
        raise ValueError(f"unknown {KINDS[kind].label} {name!r}; known: {known}")
    return values[name]


def handler_for(module: nn.Module) -> Optional[type]:
    """The handler of the closest float class whose ``forward`` the module still uses."""
    handlers = layer_handlers()
    for cls in type(module).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return handler if type(module).forward is cls.forward else None
    return None


def adapter_for(model: nn.Module) -> Tuple[str, ModelAdapter]:
    """``(name, adapter)`` of the highest-priority adapter that applies to ``model``.

    Raises:
        PluginError: if none applies, or two apply at the same priority.
    """
    regs = registrations("adapter")
    matching = [reg for reg in regs.values() if reg.value.applies_to(model)]
    if not matching:
        raise PluginError(f"no model adapter applies to {type(model).__name__}")
    top = max(reg.value.priority for reg in matching)
    best = [reg for reg in matching if reg.value.priority == top]
    if len(best) > 1:
        names = ", ".join(f"{reg.name!r} ({reg.source})" for reg in best)
        raise PluginError(
            f"model adapters {names} all apply to {type(model).__name__} at priority {top}; "
            "give the more specific one a higher priority"
        )
    return best[0].name, best[0].value


class RegistryView(Mapping):
    """A read-only, always current mapping of one kind's registrations (no second copy).

    Example:
        >>> "dgm" in RegistryView("estimator")
        True
    """

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
        self.kind = kind

    def __getitem__(self, key: Any) -> Any:
        return registrations(self.kind)[key].value

    def __iter__(self) -> Iterator[Any]:
        return iter(registrations(self.kind))

    def __len__(self) -> int:
        return len(registrations(self.kind))

    def __repr__(self) -> str:
        return f"RegistryView({self.kind!r}: {sorted(map(str, self))})"

