"""Every script in ``examples/`` runs end to end in a small configuration and says what it should."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


@pytest.fixture
def example(monkeypatch, capsys):
    """``example(NAME, *args)``: stdout of the script's ``main(args)``, run in this process.

    ``python examples/NAME args`` runs the same ``main``; in process, the tests share the
    imports of torch, Brevitas and CompressAI instead of paying for them once per script.
    """

    def call(name: str, *args: str) -> str:
        monkeypatch.syspath_prepend(str(EXAMPLES))
        spec = importlib.util.spec_from_file_location(f"example_{Path(name).stem}", EXAMPLES / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        capsys.readouterr()
        module.main(list(args))
        return capsys.readouterr().out

    return call


def test_every_example_is_tested():
    tested = {"quickstart.py", "custom_model_quantizers.py", "finetune_and_evaluate.py", "export_for_finn.py"}
    helpers = {"sample_images.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested | helpers


def test_quickstart_codes_float_dynamic_and_frozen(example):
    out = example("quickstart.py", "--size", "64")
    assert out.startswith("weights: ")
    assert ("RANDOM" in out) != ("trained checkpoint" in out)
    rows = {m.group(1).strip(): m.groups()[1:] for m in re.finditer(
        r"^(float \(FP32\)|DynaQuant static INT8|DynaQuant \(dynamic\)|DynaQuant frozen \(mode\))"
        r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(.*)$", out, re.MULTILINE)}
    assert set(rows) == {"float (FP32)", "DynaQuant static INT8", "DynaQuant (dynamic)", "DynaQuant frozen (mode)"}
    assert all(float(bpp) > 0 and float(size) > 0 for bpp, _, size, _ in rows.values())
    assert float(rows["DynaQuant frozen (mode)"][2]) < float(rows["float (FP32)"][2]) / 2
    assert rows["float (FP32)"][3] == "32 (float)"
    assert rows["DynaQuant static INT8"][3].split(":")[1].split() == ["8"] * 6
    for name in ("DynaQuant (dynamic)", "DynaQuant frozen (mode)"):
        chosen = rows[name][3].split(":")[1].split()
        assert len(chosen) == 6 and set(chosen) <= {"4", "6", "8"}


def test_quickstart_rejects_a_bad_size(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example("quickstart.py", "--size", "100")
    assert exit_info.value.code == 2 and "--size must be a positive multiple of 64" in capsys.readouterr().err


def test_custom_model_quantizers_switch_bit_width(example):
    out = example("custom_model_quantizers.py", "--float-steps", "3", "--qat-steps", "2", "--size", "32", "--bits", "3")
    assert "8-bit DynaQuant, fine-tuned: held-out PSNR" in out
    levels, limit = map(int, re.search(r"first filter uses (\d+) distinct weight values \(at most (\d+)\)", out).groups())
    assert limit == 7 and 2 <= levels <= limit


def test_finetune_and_evaluate_writes_checkpoints_and_results(example, tmp_path):
    out = example("finetune_and_evaluate.py", "--steps", "2", "--channels", "8", "12", "--workdir", str(tmp_path))
    assert (tmp_path / "float" / "final.pt").is_file() and (tmp_path / "dynaquant" / "final.pt").is_file()
    dynamic = json.loads((tmp_path / "eval-dynaquant.json").read_text())["results"]
    assert 4 <= dynamic["avg_bits"][0] <= 8 and dynamic["bpp"][0] > 0
    assert "avg_bits" not in json.loads((tmp_path / "eval-float.json").read_text())["results"]
    assert re.search(r"DynaQuant: [\d.]+ bpp, [\d.]+ dB, [\d.]+ average bits", out)


def test_export_for_finn_writes_a_verified_qonnx_graph(example, tmp_path, monkeypatch):
    finn = importlib.util.find_spec("finn") is not None
    args = ["--channels", "8", "12", "--size", "32", "--out", str(tmp_path)] + (["--finn"] if finn else [])
    monkeypatch.setenv("FINN_BUILD_DIR", str(tmp_path / "finn_build"))
    out = example("export_for_finn.py", *args)
    assert (tmp_path / "g_a.onnx").is_file()
    steps = float(re.search(r"max \|qonnx - torch\| = \S+ \((\S+) output steps", out).group(1))
    assert steps < 1
    assert "pre-check on the GDN model refuses it" in out and "(GDN)" in out
    if finn:
        assert re.search(r"FINN: \d+ hardware layers \(4 MVAU\)", out) and "'fps'" in out
    else:
        pytest.skip("finn-plus is not installed: QONNX part checked, FINN part skipped")
