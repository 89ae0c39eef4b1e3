"""Model adapters: how ``dynaquantize`` reads one family of models (taps, float and fixed modules).

Two are built in: ``compressai`` (every model; the selectors read the first module of ``g_a`` and
``g_s``) and ``autoregressive-context`` (context models whose coding loop reads their weight stay
float). A plugin adds its own with :func:`~dynaquant_brevitas.registry.register_adapter` or the
``dynaquant_model_adapters`` hook.

Example:
    >>> from compressai.models import JointAutoregressiveHierarchicalPriors as Mbt2018
    >>> name, adapter = adapter_for(Mbt2018(8, 12))
    >>> name, adapter.float_modules(Mbt2018(8, 12), None)
    ('autoregressive-context', ['context_prediction'])
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from torch import nn

from ..registry import PluginError, load_plugins, register_adapter, registrations

__all__ = ["DECODER", "ENCODER", "AutoregressiveContextAdapter", "CompressAIAdapter", "ModelAdapter", "adapter_for"]

ENCODER, DECODER = "encoder", "decoder"


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

        Default: ``{}``, which lets the plan take the first module that runs in
        ``config.analysis`` and in ``config.synthesis`` (found with a probe forward).
        """
        return {}

    def float_modules(self, model: nn.Module, config: Any) -> List[str]:
        """Module-name patterns (``fnmatch``) kept in floating point, besides ``config.float_modules``."""
        return []

    def fixed_modules(self, model: nn.Module, config: Any) -> List[str]:
        """Module-name patterns kept at ``config.fixed_bits`` even inside the transforms."""
        return []


@register_adapter("compressai")
class CompressAIAdapter(ModelAdapter):
    """The default for every model: the plan described in :mod:`dynaquant_brevitas.transform`."""

    model_types = (nn.Module,)
    priority = -1


@register_adapter("autoregressive-context")
class AutoregressiveContextAdapter(CompressAIAdapter):
    """Keeps autoregressive context models in float.

    CompressAI's coding loops for ``mbt2018`` / ``cheng2020-anchor/attn`` and its raster-scan
    latent codec read ``context_prediction.weight`` directly; a quantized context model would
    make the training forward and the coded bitstream disagree.
    """

    priority = 0

    def applies_to(self, model: nn.Module) -> bool:
        return bool(self.float_modules(model, None))

    def float_modules(self, model: nn.Module, config: Any) -> List[str]:
        from compressai.latent_codecs.rasterscan import RasterScanLatentCodec
        from compressai.models import JointAutoregressiveHierarchicalPriors

        names = []
        if isinstance(model, JointAutoregressiveHierarchicalPriors):
            names.append("context_prediction")
        for name, module in model.named_modules():
            if isinstance(module, RasterScanLatentCodec):
                names.append(f"{name}.context_prediction")
        return names


def adapter_for(model: nn.Module) -> Tuple[str, ModelAdapter]:
    """``(name, adapter)`` of the highest-priority adapter that applies to ``model``.

    Installed plugins are loaded first, since one of them may be meant for this model.

    Raises:
        PluginError: if none applies, or two apply at the same priority.
    """
    load_plugins()
    matching = [reg for reg in registrations("adapter").values() if reg.value.applies_to(model)]
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
