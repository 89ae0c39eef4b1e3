"""Plugins: built-ins through the hooks, a real installed plugin package, broken and clashing plugins.

Installed plugins are real distributions on a temporary ``sys.path`` entry (``pip install
--target`` of ``examples/plugin_package``, or a hand-written ``.dist-info``), read through
``importlib.metadata`` by a fresh plugin manager; the shared virtual environment is not touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from compressai.models import ScaleHyperprior
from torch import nn

from dynaquant_brevitas import DynaQuantConfig, UnsupportedModuleError, calibrate, dynaquantize, plan_quantization
from dynaquant_brevitas import plugins
from dynaquant_brevitas.cli import main as cli_main
from dynaquant_brevitas.gradients import ROUNDING_ESTIMATORS, DGMRound, register_rounding_estimator
from dynaquant_brevitas.layers import DynaQuantConv2d
from dynaquant_brevitas.plugins import ModelAdapter, PluginError, hookimpl
from dynaquant_brevitas.selector import BitSelector

REPO = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGE = REPO / "examples" / "plugin_package"
PLUGIN_MODULES = ("dynaquant_example_plugin", "clashing_plugin")


# -- helpers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """``examples/plugin_package`` installed with pip into a temporary directory."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN_PACKAGE, root / "src")  # keep build files out of the repository
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    return site


def write_distribution(site: Path, name: str, entry_points: str, modules: dict | None = None) -> Path:
    """A minimal installed distribution: ``NAME-0.1.dist-info`` with entry points, plus modules."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, code in (modules or {}).items():
        (site / f"{module}.py").write_text(textwrap.dedent(code))
    return site


@pytest.fixture
def fresh_manager(monkeypatch):
    """``load(*paths)``: a new plugin manager that sees distributions on ``paths``; restored after."""

    def load(*paths: Path):
        for path in paths:
            monkeypatch.syspath_prepend(str(path))
        monkeypatch.setattr(plugins, "_manager", None)
        monkeypatch.setattr(plugins, "_cache", {})
        return plugins.plugin_manager()

    yield load
    for name in PLUGIN_MODULES:
        sys.modules.pop(name, None)


class _Tiny(nn.Module):
    """g_a/g_s codec whose encoder uses ``layer`` (e.g. the plugin's ScaledConv2d)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.g_a = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), layer)
        self.g_s = nn.Sequential(
            nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1)
        )

    def forward(self, x):
        return {"x_hat": self.g_s(self.g_a(x)), "likelihoods": {}}


# -- built-ins ------------------------------------------------------------------------------------------


def test_builtins_are_registered_through_the_hooks():
    names = {kind: {reg.name for reg in plugins.registrations(kind).values()} for kind in plugins.KINDS}
    assert {"dgm", "ste"} <= names["estimator"] and "mlp" in names["selector"]
    assert {"compressai", "autoregressive-context"} <= names["adapter"]
    assert "torch.nn.modules.conv.Conv2d" in names["handler"] and "qonnx" in names["exporter"]
    assert all(reg.source == "built-in" for reg in plugins.registrations("estimator").values() if reg.name in ("dgm", "ste"))
    assert plugins.plugin_manager().get_plugin("built-in") is not None


def test_rounding_estimators_view_is_the_plugin_registry():
    class Floor(nn.Module):
        def __init__(self):
            super().__init__()

        def forward(self, x):
            return x + (torch.floor(x) - x).detach()

    register_rounding_estimator("floor-test")(Floor)
    try:
        assert ROUNDING_ESTIMATORS["floor-test"] is Floor is plugins.rounding_estimators()["floor-test"]
        assert DynaQuantConfig(estimator="floor-test").estimator == "floor-test"
    finally:
        plugins.unregister(plugins.plugin_manager().get_plugin(f"estimator:floor-test:{__name__}.{Floor.__qualname__}"))
    assert "floor-test" not in ROUNDING_ESTIMATORS
    with pytest.raises(ValueError, match="estimator: unknown rounding estimator 'floor-test'; known: dgm, ste"):
        DynaQuantConfig(estimator="floor-test")


def test_exporter_registry_delegates_to_the_qonnx_export(tmp_path):
    from brevitas.nn import QuantConv2d

    from dynaquant_brevitas import DynaActQuant, DynaWeightQuant

    conv = QuantConv2d(3, 4, 3, padding=1, weight_quant=DynaWeightQuant, input_quant=DynaActQuant)
    calibrate(conv, [torch.rand(2, 3, 8, 8)])
    result = plugins.exporters()["qonnx"](conv.eval(), str(tmp_path / "conv.onnx"), (1, 3, 8, 8))
    assert (tmp_path / "conv.onnx").is_file() and result.max_error_steps < 1


# -- the example plugin package, installed --------------------------------------------------------


def test_installed_plugin_package_adds_its_estimator_and_handler(plugin_site, fresh_manager):
    from_site = _import_example(plugin_site)
    with pytest.raises(UnsupportedModuleError, match="ScaledConv2d"):  # before the plugin is loaded
        dynaquantize(_Tiny(from_site.ScaledConv2d(4, 4, 3, padding=1)))
    fresh_manager(plugin_site)
    example = sys.modules["dynaquant_example_plugin"]
    estimators = plugins.registrations("estimator")
    assert estimators["triangle"].source == "dynaquant-example-plugin 0.1.0 (example)"

    float_layer = example.ScaledConv2d(4, 4, 3, padding=1)
    with torch.no_grad():
        float_layer.gain.fill_(2.0)
    model = dynaquantize(_Tiny(float_layer), DynaQuantConfig(estimator="triangle", candidate_bits=(4, 8)))
    layer = model.g_a[2]
    assert type(layer) is example.DynaQuantScaledConv2d and torch.equal(layer.gain, float_layer.gain)
    assert "g_a.2" in model.dynaquant.layer_names["encoder"]
    impls = [q.float_to_int_impl for q in layer.tensor_quants()]
    assert len(impls) == 2 and all(type(impl) is example.TriangleRound for impl in impls)
    calibrate(model, [torch.rand(2, 3, 16, 16)])
    model.train()(torch.rand(2, 3, 16, 16))["x_hat"].sum().backward()
    assert layer.gain.grad is not None

    # The fused quantizer's input gradient is the plugin's triangle multiplier inside the grid.
    layer.set_bit_choice(None)  # the static width, without the last forward's selection
    quant = next(layer.tensor_quants())
    weight = layer.weight.detach().clone().requires_grad_(True)
    x_hat, scale, zero_point, _ = quant(weight)
    x_hat.sum().backward()
    u = weight.detach() / scale.detach() + zero_point.detach()
    qmin, qmax = quant.levels(int(quant.static_bit_width))
    inside = (torch.round(u) >= qmin) & (torch.round(u) <= qmax)
    assert torch.allclose(weight.grad[inside], example.triangle_multiplier(u)[inside])
    assert not torch.allclose(weight.grad, torch.ones_like(weight.grad))


def _import_example(site: Path):
    sys.path.insert(0, str(site))
    try:
        import dynaquant_example_plugin

        return dynaquant_example_plugin
    finally:
        sys.path.remove(str(site))


def test_plugins_command_lists_the_installed_plugin(plugin_site, fresh_manager, capsys):
    fresh_manager(plugin_site)
    assert cli_main(["plugins"]) == 0
    rows = {tuple(line.split()[:2]): line for line in capsys.readouterr().out.splitlines()}
    assert "dynaquant-example-plugin 0.1.0 (example)" in rows[("estimator", "triangle")]
    assert "built-in" in rows[("estimator", "dgm")]
    assert "DynaQuantScaledConv2d" in rows[("handler", "dynaquant_example_plugin.ScaledConv2d")]


def test_plugins_command_reports_a_broken_plugin(tmp_path, fresh_manager, capsys):
    site = write_distribution(tmp_path, "broken-plugin", "[dynaquant]\nbroken = no_such_module_for_dynaquant\n")
    with pytest.raises(PluginError):
        fresh_manager(site)
    assert cli_main(["plugins"]) == 2
    assert "dynaquant plugins: error: plugin 'broken = no_such_module_for_dynaquant'" in capsys.readouterr().err


# -- broken and clashing plugins -----------------------------------------------------------------------


def test_plugin_that_fails_to_import_is_named(tmp_path, fresh_manager):
    site = write_distribution(tmp_path, "broken-plugin", "[dynaquant]\nbroken = no_such_module_for_dynaquant\n")
    with pytest.raises(PluginError) as info:
        fresh_manager(site)
    message = str(info.value)
    assert "'broken = no_such_module_for_dynaquant' (distribution broken-plugin 0.1)" in message
    assert "ModuleNotFoundError" in message and "DYNAQUANT_DISABLE_PLUGIN_AUTOLOAD" in message


def test_autoload_can_be_disabled(tmp_path, fresh_manager, monkeypatch):
    site = write_distribution(tmp_path, "broken-plugin", "[dynaquant]\nbroken = no_such_module_for_dynaquant\n")
    monkeypatch.setenv("DYNAQUANT_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert [fresh_manager(site).get_name(p) for p in fresh_manager(site).get_plugins()] == ["built-in"]


def test_installed_plugin_taking_a_builtin_name_is_refused(tmp_path, fresh_manager):
    code = """
        import torch
        from dynaquant_brevitas.plugins import hookimpl

        class MyRound(torch.nn.Module):
            def __init__(self):
                super().__init__()

            def forward(self, x):
                return torch.round(x)

        @hookimpl
        def dynaquant_rounding_estimators():
            return {"dgm": MyRound}
    """
    site = write_distribution(tmp_path, "clashing-plugin", "[dynaquant]\nclash = clashing_plugin\n", {"clashing_plugin": code})
    with pytest.raises(PluginError) as info:
        fresh_manager(site)
    assert str(info.value) == (
        "plugin clashing-plugin 0.1 (clash) registers rounding estimator 'dgm', which is already "
        "registered by built-in; choose another name"
    )


def test_runtime_handler_clash_is_refused_and_nothing_is_registered():
    class Conv2dPlugin:
        @hookimpl
        def dynaquant_layer_handlers(self):
            return {nn.Conv2d: object}  # no from_float

    with pytest.raises(PluginError, match="returned a bad layer handler"):
        plugins.register(Conv2dPlugin())

    class Other(DynaQuantConv2d):
        pass

    class Clash:
        @hookimpl
        def dynaquant_layer_handlers(self):
            return {nn.Conv2d: Other}

    with pytest.raises(PluginError, match="layer handler 'torch.nn.modules.conv.Conv2d', which is already registered by built-in"):
        plugins.register(Clash())
    assert plugins.layer_handlers()[nn.Conv2d] is DynaQuantConv2d


def test_unknown_hook_name_is_rejected_by_pluggy():
    class Typo:
        @hookimpl
        def dynaquant_rounding_estimator(self):  # missing "s"
            return {}

    typo = Typo()
    with pytest.raises(PluginError, match="unknown hook 'dynaquant_rounding_estimator'.*dynaquant_rounding_estimators"):
        plugins.register(typo)
    assert not plugins.plugin_manager().is_registered(typo)


# -- selectors and adapters from plugins ------------------------------------------------------------


class _LowestBits(BitSelector):
    """Always picks the smallest candidate (a selector plugin for the test)."""

    def forward(self, x):
        selection = super().forward(x)
        selection.weights = torch.zeros_like(selection.weights)
        selection.weights[..., 0] = 1.0
        return selection


class _SelectorPlugin:
    @hookimpl
    def dynaquant_bit_selectors(self):
        return {"lowest": _LowestBits}


def test_selector_plugin_is_built_by_dynaquantize():
    plugin = plugins.register(_SelectorPlugin())
    try:
        model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(selector="lowest", candidate_bits=(4, 8)))
        assert all(type(s) is _LowestBits for s in model.dynaquant.selectors.values())
        calibrate(model, [torch.rand(1, 3, 64, 64)])
        bits = model.eval()(torch.rand(2, 3, 64, 64))["bits"]["bits"]
        assert bits.unique().tolist() == [4.0]
    finally:
        plugins.unregister(plugin)
    with pytest.raises(ValueError, match="selector: unknown bit-width selector 'lowest'; known: mlp"):
        DynaQuantConfig(selector="lowest")


class _DecoderFixed(ModelAdapter):
    model_types = (ScaleHyperprior,)

    def fixed_modules(self, model, config):
        return ["g_s.*"]


class _AdapterPlugin:
    def __init__(self, priority: int) -> None:
        self.adapter = _DecoderFixed()
        self.adapter.priority = priority

    @hookimpl
    def dynaquant_model_adapters(self):
        return {"decoder-fixed": self.adapter}


def test_model_adapter_plugin_decides_the_plan():
    plugin = plugins.register(_AdapterPlugin(priority=0))
    try:
        plan = plan_quantization(ScaleHyperprior(8, 12))
        assert plan.adapter == "decoder-fixed"
        assert plan.dynamic["decoder"] == [] and plan.dynamic["encoder"] == ["g_a.2", "g_a.4", "g_a.6"]
        assert {"g_s.0", "g_s.2", "g_s.4", "g_s.6"} <= set(plan.fixed)
        model = dynaquantize(ScaleHyperprior(8, 12))
        assert set(model.dynaquant.selectors) == {"encoder"}
    finally:
        plugins.unregister(plugin)
    assert plan_quantization(ScaleHyperprior(8, 12)).adapter == "compressai"


def test_adapters_at_the_same_priority_are_ambiguous():
    from compressai.models import JointAutoregressiveHierarchicalPriors

    class Mbt(ModelAdapter):
        model_types = (JointAutoregressiveHierarchicalPriors,)

    class Plugin:
        @hookimpl
        def dynaquant_model_adapters(self):
            return {"my-mbt": Mbt()}

    plugin = plugins.register(Plugin())
    try:
        with pytest.raises(PluginError, match="'autoregressive-context' \\(built-in\\), 'my-mbt'.*priority 0"):
            plan_quantization(JointAutoregressiveHierarchicalPriors(8, 12))
    finally:
        plugins.unregister(plugin)
    plan = plan_quantization(JointAutoregressiveHierarchicalPriors(8, 12))
    assert plan.adapter == "autoregressive-context" and "context_prediction" in plan.float
