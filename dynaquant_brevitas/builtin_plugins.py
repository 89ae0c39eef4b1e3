"""The built-in plugin: what ``dynaquant`` registers through its own hooks.

* layer handlers for ``Conv2d``, ``ConvTranspose2d``, CompressAI's ``MaskedConv2d`` and ``Linear``;
* rounding estimators ``dgm`` and ``ste``;
* bit-width selector ``mlp`` (:class:`~dynaquant_brevitas.selector.BitSelector`);
* model adapters ``compressai`` (every model: selectors read the first module of ``g_a`` and
  ``g_s``) and ``autoregressive-context`` (context models read by weight stay float);
* exporters ``qonnx`` and ``finn`` (:mod:`dynaquant_brevitas.export`), when the ``export`` extra
  (and, for ``finn``, finn-plus) is installed.

Example:
    >>> from dynaquant_brevitas.plugins import adapter_for
    >>> from compressai.models import JointAutoregressiveHierarchicalPriors as Mbt2018
    >>> name, adapter = adapter_for(Mbt2018(8, 12))
    >>> name, adapter.float_modules(Mbt2018(8, 12), None)
    ('autoregressive-context', ['context_prediction'])
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, Dict, List, Sequence

from torch import nn

from .plugins import ModelAdapter, hookimpl

__all__ = ["AutoregressiveContextAdapter", "CompressAIAdapter"]


@hookimpl
def dynaquant_layer_handlers():
    from compressai.layers import MaskedConv2d

    from .layers import DynaQuantConv2d, DynaQuantConvTranspose2d, DynaQuantLinear, DynaQuantMaskedConv2d

    return {
        MaskedConv2d: DynaQuantMaskedConv2d,
        nn.Conv2d: DynaQuantConv2d,
        nn.ConvTranspose2d: DynaQuantConvTranspose2d,
        nn.Linear: DynaQuantLinear,
    }


@hookimpl
def dynaquant_rounding_estimators():
    from .gradients import DGMRound, STERound

    return {"dgm": DGMRound, "ste": STERound}


@hookimpl
def dynaquant_bit_selectors():
    from .selector import BitSelector

    return {"mlp": BitSelector}


class CompressAIAdapter(ModelAdapter):
    """The default for every model: the plan described in :mod:`dynaquant_brevitas.transform`."""

    model_types = (nn.Module,)
    priority = -1


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


@hookimpl
def dynaquant_model_adapters():
    return {"compressai": CompressAIAdapter(), "autoregressive-context": AutoregressiveContextAdapter()}


def export_qonnx(module: nn.Module, path: str, input_shape: Sequence[int], **kwargs: Any) -> Any:
    """:func:`dynaquant_brevitas.export.export_qonnx` (imported when called)."""
    from .export import export_qonnx as export

    return export(module, path, input_shape, **kwargs)


def export_finn(module: nn.Module, path: str, input_shape: Sequence[int], **kwargs: Any) -> Any:
    """:func:`dynaquant_brevitas.export.finn.export_finn` (imported when called)."""
    from .export.finn import export_finn as export

    return export(module, path, input_shape, **kwargs)


@hookimpl
def dynaquant_exporters():
    available: Dict[str, Callable[..., Any]] = {}
    if importlib.util.find_spec("qonnx") is not None:
        available["qonnx"] = export_qonnx
        if importlib.util.find_spec("finn") is not None:
            available["finn"] = export_finn
    return available
