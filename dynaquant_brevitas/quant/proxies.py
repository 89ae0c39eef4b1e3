"""Brevitas proxies for the content-aware quantizers."""

from __future__ import annotations

from brevitas.proxy import ActQuantProxyFromInjector, WeightQuantProxyFromInjector

__all__ = ["DynaActQuantProxy", "DynaWeightQuantProxy", "register_export_handlers"]


class DynaWeightQuantProxy(WeightQuantProxyFromInjector):
    """Weight proxy; with a per-sample bit choice its value has shape ``(N, *weight.shape)``."""

    def __init__(self, quant_layer, quant_injector) -> None:
        super().__init__(quant_layer, quant_injector)
        register_export_handlers()


class DynaActQuantProxy(ActQuantProxyFromInjector):
    """Activation proxy that hands the layer a plain tensor.

    A per-channel scale with a learned offset has no accumulator scale Brevitas could propagate,
    so wrapping the output in a QuantTensor would only make Brevitas warn on every call.
    Export still reads scale, zero point and bit width from the proxy as usual.
    """

    def __init__(self, quant_layer, quant_injector) -> None:
        super().__init__(quant_layer, quant_injector)
        self.skip_create_quant_tensor = True
        register_export_handlers()

    def retrieve_attribute(self, attribute, force_eval):
        skip, self.skip_create_quant_tensor = self.skip_create_quant_tensor, False
        try:
            return super().retrieve_attribute(attribute, force_eval)
        finally:
            self.skip_create_quant_tensor = skip


_registered = False


def register_export_handlers() -> None:
    """Teach Brevitas's ONNX export managers our proxies, once: the first DynaQuant proxy built
    does it, so Brevitas's own ``export_qonnx`` and ``export_onnx_qcdq`` work on our layers.

    Brevitas matches proxy handlers by exact type, so each handler of the stock weight and
    activation proxies is subclassed once for ours. Without the export extra this is a no-op.
    """
    global _registered
    if _registered:
        return
    _registered = True
    try:
        from brevitas.export.onnx.qonnx.manager import QONNXManager
        from brevitas.export.onnx.standard.qcdq.manager import StdQCDQONNXManager
    except ImportError:  # onnx not installed
        return
    ours = {WeightQuantProxyFromInjector: DynaWeightQuantProxy, ActQuantProxyFromInjector: DynaActQuantProxy}
    for manager in (QONNXManager, StdQCDQONNXManager):
        for handler in list(manager.handlers):
            proxy = ours.get(getattr(handler, "handled_layer", None))
            if proxy is not None and not any(h.handled_layer is proxy for h in manager.handlers):
                manager.handlers.append(
                    type(f"Dyna{handler.__name__}", (handler,), {"handled_layer": proxy})
                )

