"""The fused fake-quantization node against plain autograd, eager and compiled."""

from __future__ import annotations

import pytest
import torch
from brevitas.function.ops import tensor_clamp

from dynaquant_brevitas.quant.rounding import dgm_round, ste_round
from dynaquant_brevitas.quant import fake_quant


def reference(x, scale, zero_point, qmin, qmax, beta):
    u = x / scale + zero_point
    rounded = dgm_round(u, beta) if beta > 0 else ste_round(u)
    return (tensor_clamp(rounded, qmin, qmax) - zero_point) * scale


def case(per_sample: bool):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.double) * 3
    shape = (3, 4, 1, 1) if per_sample else (1, 4, 1, 1)
    scale = (torch.rand(shape, generator=g, dtype=torch.double) * 0.4 + 0.1).requires_grad_()
    zero_point = torch.randn(shape, generator=g, dtype=torch.double).requires_grad_()
    bounds = torch.tensor([7.0, 31.0, 127.0], dtype=torch.double).reshape(3, 1, 1, 1)
    qmax = bounds if per_sample else torch.tensor(7.0, dtype=torch.double)
    return x.requires_grad_(), scale, zero_point, -qmax, qmax


def grads(fn, x, scale, zero_point, qmin, qmax, beta):
    upstream = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).reshape(x.shape)
    y = fn(x, scale, zero_point, qmin, qmax, beta)
    return (y, *torch.autograd.grad((y * upstream).sum(), (x, scale, zero_point)))


@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
@pytest.mark.parametrize("per_sample", [False, True])
def test_fused_equals_plain_autograd(beta, per_sample):
    inputs = case(per_sample)
    for fused, plain in zip(grads(fake_quant.fake_quantize, *inputs, beta), grads(reference, *inputs, beta)):
        torch.testing.assert_close(fused, plain, rtol=1e-9, atol=1e-9)


def test_compiled_kernels_equal_eager_kernels():
    inputs = case(per_sample=True)
    upstream = torch.randn_like(inputs[0])
    eager = grads(fake_quant.fake_quantize, *inputs, 1.0)
    eager_mixture = fake_quant.mixture_gradient(inputs[0], upstream, *inputs[1:])
    fake_quant.use_compiled_kernels(True)
    try:
        assert fake_quant.compiled_kernels_enabled()
        compiled = grads(fake_quant.fake_quantize, *inputs, 1.0)
        compiled_mixture = fake_quant.mixture_gradient(inputs[0], upstream, *inputs[1:])
    finally:
        fake_quant.use_compiled_kernels(False)
    assert not fake_quant.compiled_kernels_enabled()
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    expected = (upstream * fake_quant.fake_quantize(*inputs)).flatten(1).sum(1).detach()
    torch.testing.assert_close(eager_mixture, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(compiled_mixture, expected, rtol=1e-9, atol=1e-9)
