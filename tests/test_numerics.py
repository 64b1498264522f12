"""Numerics: saturation, huge inputs, NaN/inf, high orders, float32 error growth."""
import math

import numpy as np
import pytest
import torch

import diagramc
from diagramc.combinatorics import multi_index as mi

from .reference import random_params, reference_derivatives


def _kernel(kernel_dir, sizes=(2, 5, 4, 1), activation="tanh", order=4, backend="torch"):
    return diagramc.compile(diagramc.Architecture(sizes, activation), order, backend, out_dir=kernel_dir)


def test_saturated_and_huge_inputs_stay_finite_and_correct(kernel_dir):
    mod = _kernel(kernel_dir)
    params = random_params((2, 5, 4, 1), torch.Generator().manual_seed(0))
    x = torch.tensor([[40.0, -35.0], [1e6, 1e6], [-1e300, 3.0]], dtype=torch.float64)
    got = mod.derivatives(params, x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, reference_derivatives(params, x, "tanh", mod.MULTI_INDICES), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("activation", ["sigmoid", "softplus", "silu", "gelu"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_no_overflow_far_out(activation, backend, kernel_dir):
    mod = _kernel(kernel_dir, activation=activation, order=3, backend=backend)
    params = random_params((2, 5, 4, 1), torch.Generator().manual_seed(1), scale=50.0)
    x = torch.tensor([[30.0, -30.0], [-800.0, 700.0]], dtype=torch.float64)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
        got = mod.derivatives(*((params, x) if backend == "torch" else ([p.numpy() for p in params], x.numpy())))
    assert np.isfinite(np.asarray(got)).all()


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_nan_and_inf_propagate_row_by_row(backend, kernel_dir):
    mod = _kernel(kernel_dir, backend=backend)
    params = random_params((2, 5, 4, 1), torch.Generator().manual_seed(2))
    x = torch.tensor([[0.1, 0.2], [math.nan, 0.0], [math.inf, 0.0]], dtype=torch.float64)
    p, xx = (params, x) if backend == "torch" else ([q.numpy() for q in params], x.numpy())
    with np.errstate(invalid="ignore"):
        got = np.asarray(mod.derivatives(p, xx))
    assert np.isfinite(got[0]).all()
    assert np.isnan(got[1]).all()
    # tanh saturates: at an infinite input the value is the limit and its derivatives vanish
    assert not np.isnan(got[2, :, 0]).any()


def test_high_order_univariate_no_factorial_overflow(kernel_dir):
    mod = _kernel(kernel_dir, sizes=(1, 4, 3, 1), order=10)
    params = random_params((1, 4, 3, 1), torch.Generator().manual_seed(3))
    x = torch.tensor([[0.3], [-0.7]], dtype=torch.float64)
    want = reference_derivatives(params, x, "tanh", mod.MULTI_INDICES)
    got = mod.derivatives(params, x)
    rel = ((got - want).norm(dim=(0, 1)) / want.norm(dim=(0, 1)).clamp(min=1e-300))
    assert rel.max() < 1e-9
    assert mod._KERNEL._FACTORIALS[-1] == math.factorial(10)


def test_float32_error_grows_mildly_with_order(kernel_dir):
    """Relative error of float32 against float64, per order: documented in the README."""
    sizes = (3, 32, 32, 32, 1)
    mod = _kernel(kernel_dir, sizes=sizes, order=5)
    params = random_params(sizes, torch.Generator().manual_seed(4))
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    d64 = mod.derivatives(params, x)
    d32 = mod.derivatives([p.float() for p in params], x.float()).double()
    orders = torch.tensor([sum(a) for a in mod.MULTI_INDICES])
    errors = [((d32 - d64)[..., orders == k].norm() / d64[..., orders == k].norm()).item() for k in range(6)]
    assert all(e < 1e-4 for e in errors), errors
    assert mi.up_to_order(3, 5) == list(mod.MULTI_INDICES)
