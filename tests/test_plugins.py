"""The registry and plugins: built-ins registered where defined, a real installed plugin package,
broken and clashing plugins, and that a broken plugin cannot break what does not need it.

Installed plugins are real distributions on a temporary ``sys.path`` entry (``pip install
--target`` of ``examples/plugin_package``, or a hand-written ``.dist-info``), read through
``importlib.metadata``; the shared virtual environment is not touched.
"""

from __future__ import annotations

import os
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
from dynaquant_brevitas import registry
from dynaquant_brevitas.cli import main as cli_main
from dynaquant_brevitas.nn import BitSelector, DynaQuantConv2d
from dynaquant_brevitas.registry import PluginError, hookimpl, register_estimator
from dynaquant_brevitas.transform import ModelAdapter

REPO = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGE = REPO / "examples" / "plugin_package"
PLUGIN_MODULES = ("dynaquant_example_plugin", "clashing_plugin", "exiting_plugin")
BROKEN = "[dynaquant]\nbroken = no_such_module_for_dynaquant\n"


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
def clean_registry(monkeypatch):
    """The registry as it is now, restored after the test; ``load(*paths)`` loads the plugins
    installed on ``paths``."""
    saved = {kind: dict(regs) for kind, regs in registry._registry.items()}
    monkeypatch.setattr(registry, "_plugins_loaded", False)

    def load(*paths: Path) -> None:
        for path in paths:
            monkeypatch.syspath_prepend(str(path))
        registry.load_plugins(force=True)

    yield load
    for kind, regs in saved.items():
        registry._registry[kind].clear()
        registry._registry[kind].update(regs)
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


def _python(code: str, *paths: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, paths)))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300)


# -- the registry ---------------------------------------------------------------------------------------


def test_builtins_register_where_they_are_defined():
    names = {kind: {reg.name for reg in registry.registrations(kind).values()} for kind in registry.KINDS}
    assert {"dgm", "ste"} <= names["estimator"] and "mlp" in names["selector"]
    assert {"compressai", "autoregressive-context"} <= names["adapter"]
    assert "torch.nn.modules.conv.Conv2d" in names["handler"]
    assert all(r.source == "built-in" for r in registry.registrations("estimator").values() if r.name in ("dgm", "ste"))


def test_the_registry_imports_nothing_of_the_package_and_no_pluggy():
    done = _python("""
        import sys
        import dynaquant_brevitas.registry
        print(*sorted(m for m in sys.modules if m.startswith("dynaquant_brevitas")), "pluggy" in sys.modules)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["dynaquant_brevitas", "dynaquant_brevitas._lazy", "dynaquant_brevitas.registry", "False"]


def test_config_and_presets_work_with_a_broken_plugin_installed(tmp_path):
    site = write_distribution(tmp_path, "broken-plugin", BROKEN)
    done = _python("""
        import sys
        from brevitas.nn import QuantConv2d
        from dynaquant_brevitas import DynaQuantConfig, DynaWeightQuant
        DynaQuantConfig()
        QuantConv2d(3, 4, 3, weight_quant=DynaWeightQuant)
        print("pluggy" in sys.modules)
    """, site)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_decorated_estimator_is_usable_by_name(clean_registry):
    @register_estimator("floor-test", source="test")
    class Floor(nn.Module):
        def __init__(self):
            super().__init__()

        def forward(self, x):
            return x + (torch.floor(x) - x).detach()

    assert registry.lookup("estimator", "floor-test") is Floor
    assert DynaQuantConfig(rounding="floor-test").rounding == "floor-test"
    registry.unregister("estimator", "floor-test")
    with pytest.raises(ValueError, match="rounding: unknown rounding estimator 'floor-test'; known: dgm, ste"):
        DynaQuantConfig(rounding="floor-test")


# -- the example plugin package, installed --------------------------------------------------------


def test_installed_plugin_package_adds_its_estimator_and_handler(plugin_site, clean_registry):
    from_site = _import_example(plugin_site)
    with pytest.raises(UnsupportedModuleError, match="ScaledConv2d"):  # not installed yet
        dynaquantize(_Tiny(from_site.ScaledConv2d(4, 4, 3, padding=1)))
    sys.modules.pop("dynaquant_example_plugin", None)
    clean_registry(plugin_site)
    example = sys.modules["dynaquant_example_plugin"]
    estimators = registry.registrations("estimator")
    assert estimators["triangle"].source.startswith("plugin 'example = dynaquant_example_plugin' (distribution dynaquant-example-plugin 0.1.0)")

    float_layer = example.ScaledConv2d(4, 4, 3, padding=1)
    with torch.no_grad():
        float_layer.gain.fill_(2.0)
    model = dynaquantize(_Tiny(float_layer), DynaQuantConfig(rounding="triangle", candidate_bits=(4, 8)))
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
    quant.fake_quantize(weight).sum().backward()
    qp = quant.qparams()
    u = weight.detach() / qp.scale + qp.zero_point
    inside = (torch.round(u) >= qp.qmin) & (torch.round(u) <= qp.qmax)
    assert torch.allclose(weight.grad[inside], example.triangle_multiplier(u)[inside])
    assert not torch.allclose(weight.grad, torch.ones_like(weight.grad))


def _import_example(site: Path):
    sys.path.insert(0, str(site))
    try:
        import dynaquant_example_plugin

        return dynaquant_example_plugin
    finally:
        sys.path.remove(str(site))


def test_plugins_command_lists_the_installed_plugin(plugin_site, clean_registry, capsys):
    clean_registry(plugin_site)
    assert cli_main(["plugins"]) == 0
    rows = {tuple(line.split()[:2]): line for line in capsys.readouterr().out.splitlines()}
    assert "dynaquant-example-plugin 0.1.0" in rows[("estimator", "triangle")]
    assert "built-in" in rows[("estimator", "dgm")]
    assert "DynaQuantScaledConv2d" in rows[("handler", "dynaquant_example_plugin.ScaledConv2d")]


# -- broken and clashing plugins -----------------------------------------------------------------------


def test_plugin_that_fails_to_import_is_named(tmp_path, clean_registry, capsys):
    site = write_distribution(tmp_path, "broken-plugin", BROKEN)
    with pytest.raises(PluginError) as info:
        clean_registry(site)
    message = str(info.value)
    assert "'broken = no_such_module_for_dynaquant' (distribution broken-plugin 0.1)" in message
    assert "ModuleNotFoundError" in message and "DYNAQUANT_DISABLE_PLUGIN_AUTOLOAD" in message
    registry._plugins_loaded = False
    assert cli_main(["plugins"]) == 2
    assert "dynaquant plugins: error: plugin 'broken = no_such_module_for_dynaquant'" in capsys.readouterr().err


def test_plugin_that_exits_while_imported_is_reported_not_obeyed(tmp_path, clean_registry):
    site = write_distribution(tmp_path, "exiting-plugin", "[dynaquant]\nexiting = exiting_plugin\n",
                              {"exiting_plugin": "import sys\nsys.exit(0)\n"})
    with pytest.raises(PluginError, match="'exiting = exiting_plugin'.*SystemExit"):
        clean_registry(site)


def test_autoload_can_be_disabled(tmp_path, clean_registry, monkeypatch):
    site = write_distribution(tmp_path, "broken-plugin", BROKEN)
    monkeypatch.setenv("DYNAQUANT_DISABLE_PLUGIN_AUTOLOAD", "1")
    clean_registry(site)  # nothing loaded, so nothing fails
    assert plan_quantization(ScaleHyperprior(8, 12)).adapter == "compressai"


def test_installed_plugin_taking_a_builtin_name_is_refused(tmp_path, clean_registry):
    code = """
        import torch
        from dynaquant_brevitas.registry import hookimpl

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
        clean_registry(site)
    assert "registers rounding estimator 'dgm', which is already registered by built-in; choose another name" in str(info.value)
    assert "'clash = clashing_plugin' (distribution clashing-plugin 0.1)" in str(info.value)


def test_runtime_handler_clash_is_refused_and_nothing_is_registered(clean_registry):
    class Other(DynaQuantConv2d):
        pass

    class Clash:
        @hookimpl
        def dynaquant_layer_handlers(self):
            return {nn.Conv1d: Other, nn.Conv2d: Other}  # the first is new, the second taken

    with pytest.raises(PluginError, match="layer handler 'torch.nn.modules.conv.Conv2d', which is already registered by built-in"):
        registry.register_plugin(Clash())
    assert registry.handler_for(nn.Conv2d(1, 1, 1)) is DynaQuantConv2d
    assert registry.handler_for(nn.Conv1d(1, 1, 1)) is None

    class Bad:
        @hookimpl
        def dynaquant_layer_handlers(self):
            return {nn.Conv3d: object}  # no from_float

    with pytest.raises(PluginError, match="bad layer handler"):
        registry.register_plugin(Bad())


def test_unknown_hook_name_is_rejected():
    class Typo:
        @hookimpl
        def dynaquant_rounding_estimator(self):  # missing "s"
            return {}

    with pytest.raises(PluginError, match="dynaquant_rounding_estimator.*dynaquant_rounding_estimators"):
        registry.register_plugin(Typo())


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


def test_selector_plugin_is_built_by_dynaquantize(clean_registry):
    registry.register_plugin(_SelectorPlugin())
    model = dynaquantize(ScaleHyperprior(8, 12), DynaQuantConfig(selector="lowest", candidate_bits=(4, 8)))
    assert all(type(s) is _LowestBits for s in model.dynaquant.selectors.values())
    calibrate(model, [torch.rand(1, 3, 64, 64)])
    bits = model.eval()(torch.rand(2, 3, 64, 64))["bits"]["bits"]
    assert bits.unique().tolist() == [4.0]
    registry.unregister("selector", "lowest")
    with pytest.raises(ValueError, match="selector: unknown bit-width selector 'lowest'; known: mlp"):
        DynaQuantConfig(selector="lowest")


class _DecoderFixed(ModelAdapter):
    model_types = (ScaleHyperprior,)

    def fixed_modules(self, model, config):
        return ["g_s.*"]


def test_model_adapter_plugin_decides_the_plan(clean_registry):
    registry.register("adapter", "decoder-fixed", _DecoderFixed(), source="test")
    plan = plan_quantization(ScaleHyperprior(8, 12))
    assert plan.adapter == "decoder-fixed"
    assert plan.dynamic["decoder"] == [] and plan.dynamic["encoder"] == ["g_a.2", "g_a.4", "g_a.6"]
    assert {"g_s.0", "g_s.2", "g_s.4", "g_s.6"} <= set(plan.fixed)
    model = dynaquantize(ScaleHyperprior(8, 12))
    assert set(model.dynaquant.selectors) == {"encoder"}
    registry.unregister("adapter", "decoder-fixed")
    assert plan_quantization(ScaleHyperprior(8, 12)).adapter == "compressai"


def test_adapters_at_the_same_priority_are_ambiguous(clean_registry):
    from compressai.models import JointAutoregressiveHierarchicalPriors

    class Mbt(ModelAdapter):
        model_types = (JointAutoregressiveHierarchicalPriors,)

    registry.register("adapter", "my-mbt", Mbt(), source="test")
    with pytest.raises(PluginError, match="'autoregressive-context' \\(built-in\\), 'my-mbt'.*priority 0"):
        plan_quantization(JointAutoregressiveHierarchicalPriors(8, 12))
    registry.unregister("adapter", "my-mbt")
    plan = plan_quantization(JointAutoregressiveHierarchicalPriors(8, 12))
    assert plan.adapter == "autoregressive-context" and "context_prediction" in plan.float
