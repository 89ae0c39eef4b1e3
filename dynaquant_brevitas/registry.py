"""Registries: plain dicts of what ``dynaquantize`` can use, filled by decorators where things are defined.

Four kinds, each a dict:

- ``handler``: float module type -> DynaQuant layer class with ``from_float(module, bits, **options)``
  (:func:`register_handler`);
- ``estimator``: name -> rounding module class, a Brevitas ``float_to_int_impl``
  (:func:`register_estimator`);
- ``selector``: name -> bit-width selector class (:func:`register_selector`);
- ``adapter``: name -> model adapter instance (:func:`register_adapter`).

This module imports nothing of the package: each built-in registers itself where it is defined
(``quant.rounding``, ``nn.layers``, ``nn.selector``, ``transform.adapters``). Third-party plugins
are installed packages with entry points in the group ``dynaquant``; they are loaded with pluggy
only when asked for: on the first lookup of a name nobody registered, or by :func:`load_plugins`
(which planning a model calls). ``DYNAQUANT_DISABLE_PLUGIN_AUTOLOAD=1`` skips them.

Example:
    >>> @register_estimator("floor-ste", source="doctest")
    ... class FloorSTE:
    ...     pass
    >>> lookup("estimator", "floor-ste").__name__
    'FloorSTE'
    >>> unregister("estimator", "floor-ste")
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BUILTIN", "ENTRY_POINT_GROUP", "KINDS", "PluginError", "Registration", "handler_for", "hookimpl",
    "hookspec", "load_plugins", "lookup", "register", "register_adapter", "register_estimator",
    "register_handler", "register_plugin", "register_selector", "registrations", "unregister"
]

PROJECT = ENTRY_POINT_GROUP = "dynaquant"
DISABLE_AUTOLOAD = "DYNAQUANT_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN = "built-in"

#: kind -> what it is called in messages
KINDS: dict[str, str] = {
    "handler": "layer handler",
    "estimator": "rounding estimator",
    "selector": "bit-width selector",
    "adapter": "model adapter",
}
#: kind -> the pluggy hook through which a third-party plugin returns its mapping
HOOKS: dict[str, str] = {
    "handler": "dynaquant_layer_handlers",
    "estimator": "dynaquant_rounding_estimators",
    "selector": "dynaquant_bit_selectors",
    "adapter": "dynaquant_model_adapters",
}


class PluginError(ValueError):
    """A plugin failed to load, registered something unusable, or took a name already taken."""


@dataclass(frozen=True)
class Registration:
    """One registered thing: its kind, name, value and where it comes from."""

    kind: str
    name: str
    value: Any
    source: str


_registry: dict[str, dict[Any, Registration]] = {kind: {} for kind in KINDS}
_plugins_loaded = False


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _problem(kind: str, key: Any, value: Any) -> str | None:
    """Why ``key -> value`` cannot be registered as ``kind`` (``None`` when it can)."""
    if kind == "handler":
        if not isinstance(key, type):
            return f"key {key!r} is not a module class"
        if not callable(getattr(value, "from_float", None)):
            return f"{value!r} for {_type_name(key)} has no from_float(module, bits, **options)"
        return None
    if not isinstance(key, str) or not key:
        return f"name {key!r} is not a non-empty string"
    if kind == "adapter":
        missing = [a for a in ("applies_to", "priority", "taps", "float_modules", "fixed_modules") if not hasattr(value, a)]
        return f"{value!r} is not a model adapter (no {', '.join(missing)})" if missing else None
    return None if isinstance(value, type) else f"{key!r}: expected a class, got {value!r}"


def register(kind: str, key: Any, value: Any, source: str = BUILTIN) -> None:
    """Register ``value`` under ``key``; registering the same value again is a no-op.

    Raises:
        PluginError: if ``key`` is taken by another value, or the value does not fit ``kind``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}")
    problem = _problem(kind, key, value)
    if problem:
        raise PluginError(f"{source}: bad {KINDS[kind]}: {problem}")
    name = _type_name(key) if kind == "handler" else key
    taken = _registry[kind].get(key)
    if taken is not None and taken.value is not value:
        raise PluginError(
            f"{source} registers {KINDS[kind]} {name!r}, which is already registered by {taken.source}; "
            "choose another name"
        )
    _registry[kind].setdefault(key, Registration(kind, name, value, source))


def unregister(kind: str, key: Any) -> None:
    """Remove a registration (tests, interactive use)."""
    _registry[kind].pop(key, None)


def _decorator(kind: str, key: Any, source: str) -> Callable[[Any], Any]:
    def decorate(value: Any) -> Any:
        register(kind, key, value, source)
        return value

    return decorate


def register_handler(float_type: type, source: str = BUILTIN) -> Callable[[type], type]:
    """Class decorator: the DynaQuant layer class that replaces modules of ``float_type``."""
    return _decorator("handler", float_type, source)


def register_estimator(name: str, source: str = BUILTIN) -> Callable[[type], type]:
    """Class decorator: a rounding module (Brevitas ``float_to_int_impl``) known as ``name``."""
    return _decorator("estimator", name, source)


def register_selector(name: str, source: str = BUILTIN) -> Callable[[type], type]:
    """Class decorator: a bit-width selector class known as ``name``."""
    return _decorator("selector", name, source)


def register_adapter(name: str, source: str = BUILTIN) -> Callable[[type], type]:
    """Class decorator: an instance of the decorated model-adapter class is registered as ``name``."""

    def decorate(cls: type) -> type:
        register("adapter", name, cls(), source)
        return cls

    return decorate


def registrations(kind: str) -> dict[Any, Registration]:
    """Everything registered as ``kind`` so far (a copy)."""
    if kind not in KINDS:
        raise ValueError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}")
    return dict(_registry[kind])


def lookup(kind: str, name: str) -> Any:
    """The value registered as ``name``; installed plugins are loaded first if nobody registered it.

    Example:
        >>> lookup("estimator", "nearest")
        Traceback (most recent call last):
        ...
        ValueError: unknown rounding estimator 'nearest'; known: dgm, ste
    """
    if name not in _registry[kind]:
        load_plugins()
    if name not in _registry[kind]:
        known = ", ".join(sorted(map(str, (r.name for r in _registry[kind].values()))))
        raise ValueError(f"unknown {KINDS[kind]} {name!r}; known: {known}")
    return _registry[kind][name].value


def handler_for(module: Any) -> type | None:
    """The handler of the closest registered class in ``module``'s MRO whose ``forward`` it keeps."""
    handlers = _registry["handler"]
    for cls in type(module).__mro__:
        reg = handlers.get(cls)
        if reg is not None:
            return reg.value if type(module).forward is cls.forward else None
    return None


# -- third-party plugins (pluggy, entry points) ------------------------------------------------------


def _pluggy() -> Any:
    import pluggy

    return pluggy


def hookspec(function: Callable) -> Callable:
    """pluggy's hook-specification marker for the ``dynaquant`` project."""
    return _pluggy().HookspecMarker(PROJECT)(function)


def hookimpl(function: Callable | None = None, **options: Any) -> Any:
    """Mark a plugin's function as the implementation of a ``dynaquant`` hook (pluggy's marker:
    ``@hookimpl`` or ``@hookimpl(tryfirst=True)``)."""
    return _pluggy().HookimplMarker(PROJECT)(function, **options)


class HookSpecs:
    """The hooks a ``dynaquant`` plugin may implement; each returns a mapping for one registry."""

    def dynaquant_layer_handlers(self) -> Mapping[type, type]:
        """Float module types -> DynaQuant layer classes (``from_float(module, bits, **options)``)."""

    def dynaquant_rounding_estimators(self) -> Mapping[str, type]:
        """Rounding module classes by name (Brevitas ``float_to_int_impl``, optional ``grad_multiplier``)."""

    def dynaquant_bit_selectors(self) -> Mapping[str, type]:
        """Bit-width selector classes by name (as :class:`~dynaquant_brevitas.nn.selector.BitSelector`)."""

    def dynaquant_model_adapters(self) -> Mapping[str, Any]:
        """Model adapter instances by name (as :class:`~dynaquant_brevitas.transform.adapters.ModelAdapter`)."""


def _manager() -> Any:
    pluggy = _pluggy()
    pm = pluggy.PluginManager(PROJECT)
    for name in HOOKS.values():
        setattr(HookSpecs, name, hookspec(getattr(HookSpecs, name)))
    pm.add_hookspecs(HookSpecs)
    return pm


def register_plugin(plugin: object, source: str | None = None) -> None:
    """Register every mapping a plugin object or module returns from its ``dynaquant_*`` hooks.

    Nothing is registered when one of its entries is refused.

    Raises:
        PluginError: for a hook name that matches no hook, a hook that fails or returns a bad
            value, or a name another plugin owns.
    """
    source = source or getattr(plugin, "__name__", None) or repr(plugin)
    pm = _manager()
    try:
        pm.register(plugin, name=source)
        pm.check_pending()
    except Exception as error:
        raise PluginError(f"plugin {source}: {error}; hooks: {', '.join(HOOKS.values())}") from None
    entries = []
    for kind, hook in HOOKS.items():
        for impl in getattr(pm.hook, hook).get_hookimpls():
            try:
                entries += [(kind, key, value) for key, value in dict(impl.function() or {}).items()]
            except BaseException as error:
                _reraise_interrupt(error)
                raise PluginError(f"plugin {source}: hook {hook} failed: {type(error).__name__}: {error}") from error
    added: list[tuple[str, Any]] = []
    try:
        for kind, key, value in entries:
            if key not in _registry[kind]:
                added.append((kind, key))
            register(kind, key, value, source=f"plugin {source}")
    except PluginError:
        for kind, key in added:
            unregister(kind, key)
        raise


def _reraise_interrupt(error: BaseException) -> None:
    if isinstance(error, KeyboardInterrupt):
        raise error


def _entry_points() -> Iterator[tuple[Any, str]]:
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                yield ep, f"'{ep.name} = {ep.value}' (distribution {dist.metadata['name']} {dist.version})"


def load_plugins(force: bool = False) -> None:
    """Load the installed plugins (entry-point group ``dynaquant``) once; ``force`` loads again.

    A plugin that fails while being imported, even by calling ``sys.exit``, is reported with
    its entry point; a Ctrl-C is not swallowed.

    Raises:
        PluginError: naming the entry point that failed, or the clash.
    """
    global _plugins_loaded
    if (_plugins_loaded and not force) or os.environ.get(DISABLE_AUTOLOAD):
        return
    _plugins_loaded = True
    seen: set[str] = set()
    for ep, where in _entry_points():
        if ep.name in seen:
            continue
        seen.add(ep.name)
        try:
            plugin = ep.load()
        except BaseException as error:
            _reraise_interrupt(error)
            raise PluginError(
                f"plugin {where} in entry-point group {ENTRY_POINT_GROUP!r} failed to load: "
                f"{type(error).__name__}: {error}; fix or uninstall it, or set {DISABLE_AUTOLOAD}=1"
            ) from error
        register_plugin(plugin, source=f"{where}")
