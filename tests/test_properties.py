"""Property-based: random architectures, activations, points and multi-indices against torch.func."""
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diagramc

from .reference import TORCH_ACTIVATIONS, random_params, reference_derivatives

ACTIVATIONS = ["tanh", "sigmoid", "softplus", "sin", "gelu", "silu", "relu", "x*tanh(x)"]


@st.composite
def cases(draw):
    d = draw(st.integers(1, 3))
    hidden = draw(st.integers(1, 3))
    sizes = (d,) + tuple(draw(st.integers(1, 4)) for _ in range(hidden)) + (draw(st.integers(1, 2)),)
    activation = draw(st.sampled_from(ACTIVATIONS))
    alphas = draw(st.lists(st.tuples(*[st.integers(0, 3)] * d), min_size=1, max_size=4, unique=True))
    alphas = [a for a in alphas if sum(a) <= 4] or [(1,) + (0,) * (d - 1)]
    seed = draw(st.integers(0, 2**31 - 1))
    backend = draw(st.sampled_from(["numpy", "torch"]))
    batch = draw(st.integers(1, 12))  # from 8 on, layer 1's top order is folded into one matrix
    return sizes, activation, alphas, seed, backend, batch


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_random_kernels_match_jacfwd(case, tmp_path_factory):
    sizes, activation, alphas, seed, backend, batch = case
    assert activation in TORCH_ACTIVATIONS
    arch = diagramc.Architecture(sizes, activation)
    order = max(sum(a) for a in alphas)
    mod = diagramc.compile(arch, order, backend, multi_indices=alphas,
                           out_dir=tmp_path_factory.getbasetemp() / "kernels")
    gen = torch.Generator().manual_seed(seed)
    params = random_params(sizes, gen)
    x = torch.randn(batch, sizes[0], generator=gen, dtype=torch.float64) * 1.5
    want = reference_derivatives(params, x, activation, mod.MULTI_INDICES)
    if backend == "numpy":
        got = torch.as_tensor(mod.derivatives([p.numpy() for p in params], x.numpy()))
    else:
        got = mod.derivatives(params, x)
    scale = max(1.0, want.abs().max().item())
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9 * scale), (got - want).abs().max()
    assert all(math.isfinite(v) for v in got.flatten().tolist())
