"""DynaQuant's quantizers as drop-in Brevitas quantizers in a model of your own.

No ``dynaquantize`` here: a small convolutional autoencoder is written directly with Brevitas
layers and DynaQuant's injectors (``DynaWeightQuant``, ``DynaActQuant``, ``DynaUintActQuant``).
The usual quantization-aware training flow follows, on photos that ship with scikit-image:

1. train the float version for a few steps;
2. build the quantized version, load the float weights, ``calibrate`` the activation ranges;
3. fine-tune with DGM rounding (learned per-channel ranges and offsets);
4. run the same model at a lower bit width without recalibration (ranges do not depend on it).

Run: ``python examples/custom_model_quantizers.py [--float-steps 150] [--qat-steps 40] [--bits 6]``.
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantConvTranspose2d, QuantReLU
from sample_images import holdout_image, train_images
from torch import nn

from dynaquant_brevitas import DynaActQuant, DynaUintActQuant, DynaWeightQuant, calibrate
from dynaquant_brevitas.evaluation.metrics import psnr
from dynaquant_brevitas.quant import ContentAwareIntQuant


def autoencoder(quantized: bool, channels: int = 32, bits: int = 8, rounding: str = "dgm") -> nn.Sequential:
    """Conv encoder / transposed-conv decoder; ``quantized`` puts DynaQuant in every layer."""
    conv, deconv, relu = nn.Conv2d, nn.ConvTranspose2d, nn.ReLU
    weights, inputs, activations = {}, {}, {}
    if quantized:
        conv, deconv, relu = QuantConv2d, QuantConvTranspose2d, QuantReLU
        weights = dict(weight_quant=DynaWeightQuant, weight_bit_width=bits, weight_rounding=rounding)
        inputs = dict(input_quant=DynaActQuant, input_bit_width=bits, input_rounding=rounding)
        activations = dict(act_quant=DynaUintActQuant, bit_width=bits, rounding=rounding)  # no act_ prefix
    return nn.Sequential(
        conv(3, channels, 5, stride=2, padding=2, **weights, **inputs),
        relu(**activations),
        conv(channels, channels, 5, stride=2, padding=2, **weights),
        deconv(channels, channels, 5, stride=2, padding=2, output_padding=1, **weights, **inputs),
        relu(**activations),
        deconv(channels, 3, 5, stride=2, padding=2, output_padding=1, **weights),
    )


def load_float_weights(quantized: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """Float weights into the quantized model; weight ranges are re-derived from them."""
    missing, unexpected = quantized.load_state_dict(state, strict=False)
    assert not unexpected and all(".tensor_quant." in key for key in missing), (missing, unexpected)
    for layer in quantized.modules():
        if hasattr(layer, "weight_quant"):
            layer.weight_quant.init_tensor_quant()


def fit(model: nn.Module, photos: torch.Tensor, steps: int, lr: float, label: str) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(1, steps + 1):
        loss = F.mse_loss(model(photos), photos)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 3) == 0 or step == steps:
            print(f"{label} step {step:4d}  train MSE {loss.item():.5f}")


def set_bit_width(model: nn.Module, bits: int) -> None:
    """Switch every DynaQuant quantizer to ``bits`` (ranges and offsets are kept)."""
    for quantizer in model.modules():
        if isinstance(quantizer, ContentAwareIntQuant):
            quantizer.set_bit_width(bits)


@torch.no_grad()
def quality(model: nn.Module, image: torch.Tensor) -> float:
    return psnr(image, model.eval()(image).clamp(0, 1))


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--float-steps", type=int, default=150, help="float training steps")
    parser.add_argument("--qat-steps", type=int, default=40, help="quantization-aware fine-tuning steps")
    parser.add_argument("--size", type=int, default=64, help="crop side in pixels (multiple of 4)")
    parser.add_argument("--bits", type=int, default=6, help="bit width to switch to after fine-tuning")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (QAT uses a tenth)")
    parser.add_argument("--rounding", default="dgm", help="rounding estimator: dgm, ste or a plugin's")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    photos, image = torch.cat(train_images(args.size)), holdout_image(args.size)

    float_model = autoencoder(quantized=False)
    fit(float_model, photos, args.float_steps, args.lr, "float")
    print(f"float model: held-out PSNR {quality(float_model, image):.2f} dB")

    model = autoencoder(quantized=True, rounding=args.rounding)
    load_float_weights(model, float_model.state_dict())
    calibrate(model, [photos])  # activation ranges and offsets from data, before the optimizer
    print(f"8-bit DynaQuant, calibrated: held-out PSNR {quality(model, image):.2f} dB")
    fit(model, photos, args.qat_steps, args.lr / 10, "QAT")
    print(f"8-bit DynaQuant, fine-tuned: held-out PSNR {quality(model, image):.2f} dB")

    set_bit_width(model, args.bits)
    levels = model[0].quant_weight().value[0].unique().numel()
    print(f"same model at {args.bits} bits: held-out PSNR {quality(model, image):.2f} dB; "
          f"first filter uses {levels} distinct weight values (at most {2 ** args.bits - 1})")


if __name__ == "__main__":
    main()
