"""The integer entropy path: exact integer arithmetic, its fake-quantized twin, perturbed decodes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from compressai.entropy_models import GaussianConditional
from compressai.models import MeanScaleHyperprior, ScaleHyperprior

from dynaquant_brevitas import DynaQuantConfig, calibrate, dynaquantize, load_model, save_model
from dynaquant_brevitas.evaluation.coding import decode_image, encode_image, prepare_for_coding
from dynaquant_brevitas.export.integer_path import indexes_numpy, load_program, run_numpy, save_program
from dynaquant_brevitas.nn import integer_path
from dynaquant_brevitas.nn.integer_path import IntegerPathError, build_program, run_program

CONFIG = DynaQuantConfig(candidate_bits=(8,))
INT8_Q4 = Path(__file__).resolve().parents[1] / "checkpoints/quantized/bmshj2018-hyperprior-N64-M96-ablation-int8-no-offset-q4.pt"


def _tiny(cls=ScaleHyperprior, config=CONFIG, seed=0):
    torch.manual_seed(seed)
    model = dynaquantize(cls(16, 24), config)
    calibrate(model, [torch.rand(2, 3, 128, 128)])
    return model.eval()


@pytest.mark.parametrize("cls", [ScaleHyperprior, MeanScaleHyperprior])
def test_integer_program_matches_its_fake_quantized_twin(cls):
    """Same function up to the output grid (half a step, 2^-13) and the rare requantization tie."""
    model = _tiny(cls)
    z_hat = torch.round(torch.randn(2, 16, 3, 4) * 3)
    with torch.no_grad():
        fake = model.h_s(z_hat)
        exact = run_program(build_program(model.h_s), z_hat).float() * integer_path.OUTPUT_STEP
    assert exact.shape == fake.shape
    close = (exact - fake).abs() <= integer_path.OUTPUT_STEP
    assert close.float().mean() > 0.99, float((exact - fake).abs().max())


@pytest.mark.parametrize("cls", [ScaleHyperprior, MeanScaleHyperprior])
def test_numpy_program_gives_the_same_integers_and_indexes(cls, tmp_path):
    model = _tiny(cls)
    program = build_program(model.h_s)
    arrays = load_program(save_program(program, tmp_path / "h_s.npz"))
    z_hat = torch.round(torch.randn(1, 16, 4, 5) * 4) + 0.25
    q_torch = run_program(program, z_hat)
    assert np.array_equal(run_numpy(arrays, z_hat.numpy()), q_torch.numpy())
    model.update(force=True)
    table = model.gaussian_conditional.scale_table
    q_scales = q_torch[:, : q_torch.shape[1] // (2 if cls is MeanScaleHyperprior else 1)]
    ours = integer_path.scale_indexes(q_scales, integer_path.scale_thresholds(table))
    float_indexes = GaussianConditional.build_indexes(model.gaussian_conditional, q_scales.float() * integer_path.OUTPUT_STEP)
    assert torch.equal(ours, float_indexes.to(ours.dtype))
    assert np.array_equal(indexes_numpy(q_scales.numpy(), table.numpy(), integer_path.OUTPUT_STEP), ours.numpy())


def test_training_sees_the_integer_values_and_float_gradients():
    model = integer_path.install(_tiny())
    model.train()
    z_hat = torch.round(torch.randn(1, 16, 3, 3) * 3).requires_grad_(True)
    out = model.h_s(z_hat)
    with torch.no_grad():
        exact = run_program(build_program(model.h_s), z_hat).float() * integer_path.OUTPUT_STEP
    assert torch.equal(out.detach(), exact)
    out.sum().backward()
    assert model.h_s[0].weight.grad is not None and model.h_s[0].weight.grad.abs().sum() > 0


def test_the_config_option_installs_it_and_a_checkpoint_keeps_it(tmp_path):
    model = _tiny(config=DynaQuantConfig(candidate_bits=(8,), integer_entropy_path=True))
    assert integer_path.installed(model)
    again = load_model(save_model(model, tmp_path / "m.pt"))
    assert integer_path.installed(again) and integer_path.installed(copy.deepcopy(again))
    assert not integer_path.installed(integer_path.uninstall(again))


def test_a_float64_decoder_still_decodes_the_same_latents():
    """The decoder computing in float64 (other sums, other roundings): the integer program gives
    the same indexes, so the latents decode exactly."""
    torch.manual_seed(1)
    model = prepare_for_coding(integer_path.install(load_model(INT8_Q4)))
    x = torch.rand(1, 3, 128, 192)
    coded = encode_image(model, x)
    latents = []
    for decoder in (model, prepare_for_coding(copy.deepcopy(model).double())):
        seen = []
        handle = decoder.g_s.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].detach().double()))
        decode_image(decoder, coded.strings, coded.shape, (128, 192))
        handle.remove()
        latents.append(seen[-1])
    assert latents[0].abs().sum() > 0 and torch.equal(latents[0], latents[1])


def test_refusals():
    with pytest.raises(IntegerPathError, match="context models"):
        from compressai.models import JointAutoregressiveHierarchicalPriors

        integer_path.install(dynaquantize(JointAutoregressiveHierarchicalPriors(16, 24), CONFIG))
    model = _tiny(config=DynaQuantConfig(candidate_bits=(8,), learn_offset=True))
    quant = model.h_s[0].input_quant.fused_activation_quant_proxy.tensor_quant
    with torch.no_grad():
        quant.offset.fill_(0.3)
    with pytest.raises(IntegerPathError, match="integer_zero_point"):
        build_program(model.h_s)


def test_a_float64_model_builds_the_same_program():
    """Constants come from the float32 parameters, whatever precision the decoder runs in."""
    model = _tiny(MeanScaleHyperprior)
    a, b = build_program(model.h_s), build_program(copy.deepcopy(model.h_s).double())
    assert all(torch.equal(x.weight, y.weight) and torch.equal(x.bias, y.bias) for x, y in zip(a.layers, b.layers))


def test_training_with_the_option_runs_and_keeps_it(tmp_path):
    from dynaquant_brevitas.training import TrainConfig, train

    cfg = TrainConfig.from_dict({
        "model": {"arch": "bmshj2018-hyperprior", "N": 8, "M": 12},
        "data": {"root": "../shared/data/train", "patch_size": 64, "batch_size": 2},
        "train": {"steps": 2, "output": str(tmp_path), "checkpoint_every": 2, "progress": False},
        "quant": {"config": {"candidate_bits": [8], "integer_entropy_path": True, "calibration_batches": 1}},
    })
    train(cfg)
    model = load_model(tmp_path / "last.pt")
    assert integer_path.installed(model)
    coded = encode_image(prepare_for_coding(model), torch.rand(1, 3, 64, 64))
    assert decode_image(model, coded.strings, coded.shape, (64, 64)).shape == (1, 3, 64, 64)
