"""Generated kernels against nested torch.func.jacfwd (float64), both backends.

Networks with 1 to 4 hidden layers and random widths, every named activation and
custom expressions, orders up to 5 (6 for d <= 2), random non-zero expansion points,
subsets of multi-indices, float32, and gradients through the torch kernel.
"""
from __future__ import annotations

import importlib.util
import random
import types

import numpy as np
import pytest
import torch

import diagramc
from diagramc.combinatorics import multi_index as mi

from .reference import TORCH_ACTIVATIONS, random_params, reference_derivatives

HAS_NUMBA = importlib.util.find_spec("numba") is not None
QUADRATIC = "x + x**2/4"  # its third derivative vanishes: vertices of order 2 only


def _case(seed, activation, order, d=None, hidden=None):
    rng = random.Random(seed)
    d = d or rng.randint(1, 3)
    hidden = hidden if hidden is not None else rng.randint(1, 4)
    sizes = (d,) + tuple(rng.randint(1, 5) for _ in range(hidden)) + (rng.randint(1, 2),)
    gen = torch.Generator().manual_seed(seed)
    params = random_params(sizes, gen)
    x = torch.randn(3, d, generator=gen, dtype=torch.float64)  # non-zero expansion points
    return diagramc.Architecture(sizes, activation), params, x


def _assert_matches(got, want, rtol=1e-9):
    got = torch.as_tensor(got)
    scale = want.abs().max().clamp(min=1.0)
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale)


CASES = [
    (seed, act, order)
    for seed, act in enumerate(TORCH_ACTIVATIONS)
    for order in (3, 5)
]


@pytest.mark.parametrize("seed,activation,order", CASES)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_all_multi_indices_match_jacfwd(seed, activation, order, backend, kernel_dir):
    arch, params, x = _case(seed, activation, order)
    mod = diagramc.compile(arch, order, backend, out_dir=kernel_dir)
    assert mod.MULTI_INDICES == tuple(mi.up_to_order(arch.inputs, order))
    want = reference_derivatives(params, x, activation, mod.MULTI_INDICES)
    if backend == "numpy":
        got = mod.derivatives([p.numpy() for p in params], x.numpy())
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
    else:
        got = mod.derivatives(params, x)
        assert got.dtype == torch.float64
    assert got.shape == (x.shape[0], arch.outputs, len(mod.MULTI_INDICES))
    _assert_matches(got, want)


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "gelu", "sin"])
def test_order_six_two_inputs(activation, kernel_dir):
    arch, params, x = _case(100, activation, 6, d=2, hidden=3)
    mod = diagramc.compile(arch, 6, "torch", out_dir=kernel_dir)
    want = reference_derivatives(params, x, activation, mod.MULTI_INDICES)
    _assert_matches(mod.derivatives(params, x), want)


@pytest.mark.parametrize("hidden", [2, 4])
def test_four_inputs_order_five_deep(hidden, kernel_dir):
    arch, params, x = _case(7 + hidden, "tanh", 5, d=4, hidden=hidden)
    mod = diagramc.compile(arch, 5, "numpy", out_dir=kernel_dir)
    want = reference_derivatives(params, x, "tanh", mod.MULTI_INDICES)
    _assert_matches(mod.derivatives([p.numpy() for p in params], x.numpy()), want)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("order", [2, 4])  # at 2 NumPy goes point by point and applies alpha! there itself
def test_taylor_coefficients_are_derivatives_over_factorials(backend, order, kernel_dir):
    arch, params, x = _case(3, "silu", order, d=3, hidden=2)
    mod = diagramc.compile(arch, order, backend, out_dir=kernel_dir)
    p = params if backend == "torch" else [q.numpy() for q in params]
    fact = np.array([mi.factorial(a) for a in mod.MULTI_INDICES], dtype=float)
    for points in (x, x[:1], x.repeat(4, 1)):  # and one point, and layer 1 folded
        xx = points if backend == "torch" else points.numpy()
        np.testing.assert_allclose(
            np.asarray(mod.taylor_coefficients(p, xx)) * fact, np.asarray(mod.derivatives(p, xx)), rtol=1e-13
        )


SUBSETS = [
    [(0, 0, 4)],
    [(2, 0, 1), (0, 0, 0), (1, 1, 1)],
    [(0, 3, 0), (1, 0, 0)],
    [(1, 2, 2), (0, 0, 1)],
]


@pytest.mark.parametrize("subset", SUBSETS)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_subsets_of_multi_indices(subset, backend, kernel_dir):
    arch, params, x = _case(11, "tanh", 5, d=3, hidden=3)
    mod = diagramc.compile(arch, 5, backend, multi_indices=subset, out_dir=kernel_dir)
    assert list(mod.MULTI_INDICES) == mi.sort_canonical(subset)
    want = reference_derivatives(params, x, "tanh", mod.MULTI_INDICES)
    p = params if backend == "torch" else [q.numpy() for q in params]
    got = mod.derivatives(p, x if backend == "torch" else x.numpy())
    _assert_matches(got, want)


@pytest.mark.parametrize("subset", SUBSETS + [None])
@pytest.mark.parametrize("activation,line_rows", [("tanh", True), ("tanh", False), ("gelu", True)])
def test_torch_gpu_path_subsets_and_one_point(subset, activation, line_rows, kernel_dir, monkeypatch):
    """What a GPU runs, forced on the CPU, for subsets (products off the series are dropped),
    at one point (every product then one outer product, _power_classes(k, one_point)), with
    layer 1 folded (K by one scatter-add), and with the top order's left factors by block
    and term or from one series (_line_rows)."""
    arch, params, x = _case(12, activation, 5, d=3, hidden=3)
    mod = diagramc.compile(arch, 5, "torch", multi_indices=subset, out_dir=kernel_dir)
    monkeypatch.setattr(mod._KERNEL, "_scatters", lambda Z: True)
    monkeypatch.setattr(mod._KERNEL, "_LINE_ROWS", line_rows)
    for points in (x[:1], x, torch.cat([x, 0.5 * x, -x])):  # 9 points: layer 1 folded into K
        _assert_matches(mod.derivatives(params, points), reference_derivatives(params, points, activation,
                                                                              mod.MULTI_INDICES))


@pytest.mark.parametrize(
    "backend,activation,order,d,hidden,outputs,subset,by_tangent",
    [("numpy", "tanh", 5, 2, 3, 1, None, True),  # by the activation's equation in NumPy from order 5
     ("numpy", "sin", 3, 3, 2, 1, None, True),  # by the powers of Z
     ("numpy", "tanh", 4, 3, 3, 2, None, True),  # two outputs: 2 x 3 tangent rows, 10 next-to-top rows
     ("numpy", "gelu", 4, 2, 1, 1, None, True),  # one hidden layer: no tangent, the line alone
     ("numpy", QUADRATIC, 4, 3, 2, 1, None, True),  # third derivative zero: sigma'' the one vertex
     ("numpy", "tanh", 4, 3, 2, 1, [(3, 1, 0), (0, 2, 2), (1, 0, 0)], True),
     ("numpy", "tanh", 3, 2, 2, 2, None, False),  # 2 x 2 tangent rows, not fewer than 3 next-to-top rows
     ("torch", "tanh", 4, 8, 2, 1, None, True),  # torch: 12 x 8 tangent rows < 120 next-to-top rows
     ("torch", "sin", 5, 5, 3, 1, None, True),  # 12 x 5 < 70
     ("torch", "tanh", 4, 8, 1, 1, [(1, 1, 1, 1, 0, 0, 0, 0), (0, 0, 0, 0, 2, 1, 1, 0)], False),  # 12 x 7 > 7
     ("torch", "tanh", 5, 2, 3, 1, None, False)],  # 12 x 2 > 5: pushed
)
def test_next_to_top_order_by_the_tangent(activation, order, d, hidden, outputs, subset, by_tangent, backend,
                                          kernel_dir, monkeypatch):
    """From order 3 the next-to-top order is made at the vertices (its coefficients against the
    output line, its part of the top order against the line's tangent) where the backend's factor
    (NumPy 1, torch 12) x OUTPUTS x first-order rows are fewer than its rows; both ways match
    jacfwd at 1, 3 and 9 points (layer 1 folded); torch's also on the path a GPU takes (forced)."""
    rng = random.Random(order * 10 + d)
    sizes = (d,) + tuple(rng.randint(2, 6) for _ in range(hidden)) + (outputs,)
    gen = torch.Generator().manual_seed(order + d)
    params = random_params(sizes, gen)
    x = torch.randn(9, d, generator=gen, dtype=torch.float64)
    mod = diagramc.compile(diagramc.Architecture(sizes, activation), order, backend, multi_indices=subset,
                           out_dir=kernel_dir)
    assert mod._KERNEL._BY_TANGENT == by_tangent
    assert mod._KERNEL._PUSHED == (mod._KERNEL._START[order - 1] if by_tangent else mod._KERNEL._LOW)
    p = params if backend == "torch" else [q.numpy() for q in params]
    for gpu_path in (False, True) if backend == "torch" else (False,):
        if gpu_path:
            monkeypatch.setattr(mod._KERNEL, "_scatters", lambda Z: True)
        for points in (x[:1], x[:3], x):
            got = mod.derivatives(p, points if backend == "torch" else points.numpy())
            _assert_matches(got, reference_derivatives(params, points, activation, mod.MULTI_INDICES))


def test_multiply_adds_count_the_tangent_as_torch_counts_its_products(kernel_dir):
    """MULTIPLY_ADDS's matrix products by the tangent (the next-to-top order against the line,
    the tangent's Gram entries and sweep), as torch's FlopCounterMode counts a call (batch 16:
    layer 1 folded, the path the count states)."""
    from diagramc.bench.ours import _counted_gemm_macs

    for sizes, order, activation in [((8, 5, 7, 6, 1), 4, "tanh"), ((5, 4, 6, 1), 5, "sin")]:
        mod = diagramc.compile(diagramc.Architecture(sizes, activation), order, "torch", out_dir=kernel_dir)
        assert mod._KERNEL._BY_TANGENT
        gen = torch.Generator().manual_seed(order)
        params = random_params(sizes, gen)
        x = torch.randn(16, sizes[0], generator=gen, dtype=torch.float64)
        assert _counted_gemm_macs(mod, params, x) == mod.MULTIPLY_ADDS["gemm"]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("activation", ["tanh", "gelu", "softplus"])
def test_float32_within_1e4_relative(backend, activation, kernel_dir):
    arch, params, x = _case(21, activation, 4, d=3, hidden=3)
    mod = diagramc.compile(arch, 4, backend, out_dir=kernel_dir)
    want = reference_derivatives(params, x, activation, mod.MULTI_INDICES)
    p32 = [q.float() for q in params]
    if backend == "numpy":
        got = mod.derivatives([q.numpy() for q in p32], x.float().numpy())
        assert got.dtype == np.float32
    else:
        got = mod.derivatives(p32, x.float())
        assert got.dtype == torch.float32
    got = torch.as_tensor(got).double()
    rel = (got - want).norm() / want.norm()
    assert rel < 1e-4


def test_relu_has_no_vertices(kernel_dir):
    arch, params, x = _case(5, "relu", 4, d=2, hidden=3)
    mod = diagramc.compile(arch, 4, "torch", out_dir=kernel_dir)
    got = mod.derivatives(params, x)
    orders = torch.tensor([sum(a) for a in mod.MULTI_INDICES])
    assert torch.all(got[:, :, orders >= 2] == 0)
    _assert_matches(got, reference_derivatives(params, x, "relu", mod.MULTI_INDICES))


def test_no_hidden_layers_is_affine(kernel_dir):
    arch, params, x = _case(6, "tanh", 3, d=3, hidden=0)
    mod = diagramc.compile(arch, 3, "numpy", out_dir=kernel_dir)
    assert mod.HIDDEN_LAYERS == 0
    _assert_matches(
        mod.derivatives([p.numpy() for p in params], x.numpy()),
        reference_derivatives(params, x, "tanh", mod.MULTI_INDICES),
    )


def test_gradients_equal_double_backward(kernel_dir):
    """Gradients of a loss on the kernel's output equal those through nested jacfwd."""
    arch, params, x = _case(31, "tanh", 3, d=2, hidden=2)
    mod = diagramc.compile(arch, 3, "torch", out_dir=kernel_dir)
    weights = torch.randn(x.shape[0], arch.outputs, len(mod.MULTI_INDICES), dtype=torch.float64)

    def grads(evaluate):
        ps = [p.clone().requires_grad_(True) for p in params]
        xx = x.clone().requires_grad_(True)
        loss = (evaluate(ps, xx) * weights).sum() ** 2
        return torch.autograd.grad(loss, ps + [xx])

    ours = grads(mod.derivatives)
    ref = grads(lambda ps, xx: reference_derivatives(ps, xx, "tanh", mod.MULTI_INDICES))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # second order through the kernel itself (a loss on a gradient penalty)
    ps = [p.clone().requires_grad_(True) for p in params]
    g = torch.autograd.grad(mod.derivatives(ps, x).sum(), ps, create_graph=True)
    second = torch.autograd.grad(sum((gi**2).sum() for gi in g), ps, allow_unused=True)
    assert second[0] is not None and torch.isfinite(second[0]).all()


def test_torch_model_convenience():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1)
    ).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    coeffs = diagramc.taylor(model, x, 3)
    params = diagramc.params_from_torch(model)
    want = reference_derivatives([p.detach() for p in params], x, "tanh", mi.up_to_order(2, 3))
    fact = torch.tensor([mi.factorial(a) for a in mi.up_to_order(2, 3)], dtype=torch.float64)
    torch.testing.assert_close(coeffs * fact, want, rtol=1e-10, atol=1e-10)
    coeffs.sum().backward()
    assert model[0].weight.grad is not None


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("batch", [8, 37])
def test_larger_batches_fold_layer_one_and_match(backend, batch, kernel_dir):
    """From a batch of 8 the kernel folds layer 1's top order into one matrix; check it."""
    arch, params, _ = _case(41, "tanh", 4, d=3, hidden=3)
    x = torch.randn(batch, 3, generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
    mod = diagramc.compile(arch, 4, backend, out_dir=kernel_dir)
    want = reference_derivatives(params, x, "tanh", mod.MULTI_INDICES)
    p, xx = (params, x) if backend == "torch" else ([q.numpy() for q in params], x.numpy())
    _assert_matches(mod.derivatives(p, xx), want)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_no_fold_where_k_would_be_too_large(backend, kernel_dir, monkeypatch):
    """Where K would be too large to make, a large batch goes through layer 1's Gram matrices."""
    arch, params, _ = _case(41, "tanh", 4, d=3, hidden=3)
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mod = diagramc.compile(arch, 4, backend, out_dir=kernel_dir)
    p, xx = (params, x) if backend == "torch" else ([q.numpy() for q in params], x.numpy())
    assert mod._KERNEL._folds(p, mod._KERNEL._prepare(p, xx)[2], 9)
    folded = np.asarray(mod.derivatives(p, xx))
    monkeypatch.setattr(mod._KERNEL, "_FOLD_MAX_NUMBERS", 0)
    assert not mod._KERNEL._folds(p, mod._KERNEL._prepare(p, xx)[2], 9)
    np.testing.assert_allclose(np.asarray(mod.derivatives(p, xx)), folded, rtol=1e-12, atol=1e-12)
    _assert_matches(mod.derivatives(p, xx), reference_derivatives(params, x, "tanh", mod.MULTI_INDICES))


def _without_numba(module):
    """The module's kernel on NumPy operations alone, as where numba is missing."""
    from diagramc.runtime.taylor_numpy import NumpyTaylorKernel
    kernel = NumpyTaylorKernel(module.PLAN, module._activation, fused=False)
    return types.SimpleNamespace(_KERNEL=kernel, MULTI_INDICES=module.MULTI_INDICES, derivatives=kernel.derivatives)


def _fresh_import(path):
    """The module at path imported anew (its kernel with empty caches)."""
    spec = importlib.util.spec_from_file_location("kernel_fresh", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "activation,order,d,hidden,subset",
    [("tanh", 4, 3, 3, None), ("sin", 5, 2, 2, None), (QUADRATIC, 4, 3, 2, None), ("gelu", 3, 4, 1, None),
     ("softplus", 4, 3, 2, [(0, 0, 0), (2, 1, 0), (0, 2, 2), (1, 1, 1)]),
     # with numba these follow the activation's equation from layer 2 on, without it the powers of Z
     ("tanh", 7, 2, 3, None), ("sigmoid", 6, 2, 2, None), ("tanh", 5, 4, 2, None), ("sigmoid", 5, 3, 4, None),
     ("tanh", 6, 3, 2, [(0, 0, 6), (3, 2, 1), (1, 4, 0), (2, 2, 0), (0, 1, 0)])],
)
def test_fused_loops_and_numpy_operations_agree(activation, order, d, hidden, subset, kernel_dir, monkeypatch):
    """With numba the truncated products and the activation's sums run as fused loops (for tanh
    and sigmoid from order 4 the activation's equation sigma' = p(sigma), Taylor mode), from
    order 3 all in one compiled call (taylor_loops) or called one by one, without it as NumPy
    operations on the powers of Z: all match jacfwd and each other, in float64 and float32,
    for one point (layer 1 unfolded) and nine (folded)."""
    arch, params, _ = _case(53, activation, order, d=d, hidden=hidden)
    fused = diagramc.compile(arch, order, "numpy", multi_indices=subset, out_dir=kernel_dir)
    plain = _without_numba(fused)
    assert not plain._KERNEL._FUSED and not any("fused" in table for table in plain._KERNEL._TABLES["powers"].values())
    by_equation = HAS_NUMBA and activation in ("tanh", "sigmoid") and order >= 4
    assert fused._KERNEL._BY_EQUATION == (activation in ("tanh", "sigmoid") and order >= 4)
    calls = []
    if by_equation:
        assert "equation" in fused._KERNEL._TABLES and "equation" not in plain._KERNEL._TABLES
        equation_series = fused._KERNEL._equation_series
        monkeypatch.setattr(fused._KERNEL, "_equation_series", lambda *args: calls.append(1) or equation_series(*args))
    if HAS_NUMBA:
        assert fused._KERNEL._FUSED and all("fused" in table for table in fused._KERNEL._TABLES["powers"].values())
    compiled = fused._KERNEL._TABLES.get("compiled_chunks")
    assert (compiled is not None) == HAS_NUMBA

    def one_by_one(*args):  # the fused loops called one by one from Python
        monkeypatch.setitem(fused._KERNEL._TABLES, "compiled_chunks", None)
        try:
            return fused.derivatives(*args)
        finally:
            monkeypatch.setitem(fused._KERNEL._TABLES, "compiled_chunks", compiled)

    for batch in (1, 9):
        x = torch.randn(batch, d, generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
        want = reference_derivatives(params, x, activation, fused.MULTI_INDICES)
        p = [q.numpy() for q in params]
        got = fused.derivatives(p, x.numpy())
        _assert_matches(got, want)
        for other in (plain.derivatives, one_by_one):
            np.testing.assert_allclose(other(p, x.numpy()), got, rtol=1e-13, atol=1e-13 * float(np.abs(got).max()))
        p32, x32 = [q.astype(np.float32) for q in p], x.numpy().astype(np.float32)
        single = [fused.derivatives(p32, x32), plain.derivatives(p32, x32), one_by_one(p32, x32)]
        assert all(s.dtype == np.float32 for s in single)
        for other in single[1:]:
            np.testing.assert_allclose(other, single[0], rtol=1e-4, atol=1e-4 * float(np.abs(got).max()))
    assert len(calls) == (4 * (hidden - 1) if by_equation else 0)  # layers 2.. of each call one by one


@pytest.mark.skipif(not HAS_NUMBA, reason="the equation's loops need numba")
@pytest.mark.parametrize("batch", [40, 5])
def test_equation_loops_over_tiles_and_onto_the_top_order(batch, kernel_dir, monkeypatch):
    """The equation's series loop takes rows in tiles: rows of 40 x 16 numbers span a whole
    tile and part of one. Its top-order loop writes every block's Gram entries onto the top
    order, alone (40 points: layer 1 folded) or onto layer 1's Gram (5 points): called from
    Python, and within the chunk's one compiled call (taylor_loops)."""
    from diagramc.runtime.numpy_loops import EQUATION_TILE
    sizes = (3, 16, 16, 2)
    params = random_params(sizes, torch.Generator().manual_seed(7))
    mod = diagramc.compile(diagramc.Architecture(sizes, "tanh"), 5, "numpy", out_dir=kernel_dir)
    assert mod._KERNEL._BY_EQUATION and 40 * 16 % EQUATION_TILE and 40 * 16 > EQUATION_TILE
    calls = []
    top = mod._KERNEL._fused_equation_top
    monkeypatch.setattr(mod._KERNEL, "_fused_equation_top", lambda *args: calls.append(args[-1]) or top(*args))
    x = torch.randn(batch, 3, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    want = reference_derivatives(params, x, "tanh", mod.MULTI_INDICES)
    _assert_matches(mod.derivatives([q.numpy() for q in params], x.numpy()), want)
    assert calls == []  # all within the compiled call
    monkeypatch.setitem(mod._KERNEL._TABLES, "compiled_chunks", None)
    _assert_matches(mod.derivatives([q.numpy() for q in params], x.numpy()), want)
    assert calls == [False]  # one equation layer (layer 2), the first to reach the top order


@pytest.mark.skipif(not HAS_NUMBA, reason="the Gram pieces by BLAS are numba's loops")
@pytest.mark.parametrize("activation,order,sizes", [("tanh", 3, (12, 24, 20, 1)),   # by the powers of Z
                                                    ("tanh", 4, (6, 40, 48, 2))])   # by the equation
def test_large_gram_pieces_by_blas(activation, order, sizes, kernel_dir):
    """Gram pieces of GRAM_BLAS_WORK multiply-adds or more are made by BLAS's gemm (the other
    tests' pieces are smaller: the loop), beside smaller pieces by the loop at order 4, at one
    point (layer 1 unfolded) and at nine (folded), as jacfwd gives them."""
    from diagramc.runtime.numpy_loops import GRAM_BLAS_WORK
    mod = diagramc.compile(diagramc.Architecture(sizes, activation), order, "numpy", out_dir=kernel_dir)
    kernel = mod._KERNEL
    assert kernel._BY_EQUATION == (order >= 4)
    pieces = [(r1 - r0) * (b["cols"].stop - b["cols"].start - c0) for b in kernel._TOP_BLOCKS for r0, r1, c0 in b["pieces"]]
    assert max(pieces) * min(sizes[1:-1]) >= GRAM_BLAS_WORK
    assert order == 3 or min(pieces) * max(sizes[1:-1]) < GRAM_BLAS_WORK  # both ways in one kernel
    params = random_params(sizes, torch.Generator().manual_seed(order))
    for batch in (1, 9):
        x = torch.randn(batch, sizes[0], generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
        _assert_matches(mod.derivatives([q.numpy() for q in params], x.numpy()),
                        reference_derivatives(params, x, activation, mod.MULTI_INDICES))


HAS_SCIPY = importlib.util.find_spec("scipy") is not None


@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_order_two_one_hidden_layer_folded(activation, kernel_dir):
    """One hidden layer with layer 1 folded (9 points): no layer after it makes a Gram matrix
    in _fused_order_two, whose sum must then be zero, not whatever memory it was given (a
    NaN here once; the heap is filled with NaN before each call to show it)."""
    sizes = (2, 3, 2)
    params = random_params(sizes, torch.Generator().manual_seed(7))
    mod = diagramc.compile(diagramc.Architecture(sizes, activation), 2, "numpy", multi_indices=[(0, 0), (2, 0), (1, 1)],
                           out_dir=kernel_dir)
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 1.5
    want = reference_derivatives(params, x, activation, mod.MULTI_INDICES)
    for _ in range(3):
        dirty = [np.full(n, np.nan) for n in (4, 8, 16, 32, 64, 256)]
        del dirty
        _assert_matches(mod.derivatives([q.numpy() for q in params], x.numpy()), want)


@pytest.mark.parametrize("seed,activation", [(0, "tanh"), (1, "gelu"), (2, "x*tanh(x)"), (3, "relu"), (4, QUADRATIC)])
def test_order_two_point_by_point_matches_jacfwd(seed, activation, kernel_dir, monkeypatch):
    """At order 2 the NumPy kernel goes point by point where numba can call SciPy's BLAS
    (_fused_order_two): random widths (1 to 9, so lone rows and columns), 2 to 4 hidden
    layers, 1 to 3 outputs, one point and five (layer 1's Gram in the loop) and eleven
    (layer 1 folded); float64 against jacfwd and against the chunked path, float32 against float64."""
    rng = random.Random(100 + seed)
    d, hidden = rng.randint(1, 6), rng.randint(2, 4)
    sizes = (d,) + tuple(rng.randint(1, 9) for _ in range(hidden)) + (rng.randint(1, 3),)
    params = random_params(sizes, torch.Generator().manual_seed(seed))
    mod = diagramc.compile(diagramc.Architecture(sizes, activation), 2, "numpy", out_dir=kernel_dir)
    expected = HAS_NUMBA and HAS_SCIPY and 2 in mod._KERNEL._VERTEX_ORDERS
    assert getattr(mod._KERNEL, "_BY_POINTS", False) == expected
    calls = []
    if expected:
        from diagramc.runtime import numpy_loops
        loop = numpy_loops.fused_order_two
        monkeypatch.setattr(numpy_loops, "fused_order_two", lambda *args: calls.append(args[3]) or loop(*args))  # (blas, syrk, J, first, ...)
    p = [q.numpy() for q in params]
    for batch in (1, 5, 11):
        x = torch.randn(batch, d, generator=torch.Generator().manual_seed(batch), dtype=torch.float64) * 1.5
        want = reference_derivatives(params, x, activation, mod.MULTI_INDICES)
        got = mod.derivatives(p, x.numpy())
        _assert_matches(got, want)
        with monkeypatch.context() as patch:
            patch.setattr(mod._KERNEL, "_BY_POINTS", False, raising=False)
            chunked = mod.derivatives(p, x.numpy())
        scale = float(np.abs(got).max())
        np.testing.assert_allclose(chunked, got, rtol=1e-12, atol=1e-12 * scale)
        single = mod.derivatives([q.astype(np.float32) for q in p], x.numpy().astype(np.float32))
        assert single.dtype == np.float32
        np.testing.assert_allclose(single, got, rtol=1e-4, atol=1e-4 * scale)
    # per batch, float64 then float32: layer 1's Gram in the loop (1 and 5 points), folded (11)
    assert calls == ([True, True, True, True, False, False] if expected else [])


def test_order_two_point_by_point_sees_parameters_changed_in_place(kernel_dir):
    """Calls with the same parameter arrays reuse them as the fused loops took them: steps taken
    in place (every layer, W1 included) are seen, one point and a batch, against jacfwd."""
    sizes = (3, 5, 4, 1)
    params = [q.numpy().copy() for q in random_params(sizes, torch.Generator().manual_seed(11))]
    mod = diagramc.compile(diagramc.Architecture(sizes, "tanh"), 2, "numpy", out_dir=kernel_dir)
    for batch in (1, 4):
        x = torch.randn(batch, 3, generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
        for step in range(3):
            got = mod.derivatives(params, x.numpy())
            want = reference_derivatives([torch.from_numpy(q) for q in params], x, "tanh", mod.MULTI_INDICES)
            _assert_matches(got, want)
            for q in params:
                q *= 0.9 + 0.1 * step  # an optimizer's step, in place


@pytest.mark.parametrize("batch", [1, 3, 12])
def test_order_two_point_by_point_with_many_outputs(batch, kernel_dir):
    """Six outputs at order 2: more rows than the few-row loops take (the output layer's Z and
    the output lines by BLAS then), one point and a few (layer 1's values by loops) and twelve
    (folded), against jacfwd."""
    sizes = (3, 5, 4, 6)
    params = random_params(sizes, torch.Generator().manual_seed(7))
    mod = diagramc.compile(diagramc.Architecture(sizes, "tanh"), 2, "numpy", out_dir=kernel_dir)
    assert getattr(mod._KERNEL, "_BY_POINTS", False) == (HAS_NUMBA and HAS_SCIPY)
    x = torch.randn(batch, 3, generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
    want = reference_derivatives(params, x, "tanh", mod.MULTI_INDICES)
    _assert_matches(mod.derivatives([q.numpy() for q in params], x.numpy()), want)


@pytest.mark.parametrize("subset,by_points", [([(2, 0, 0), (0, 1, 1), (0, 0, 0)], True), ([(0, 2, 0)], True),
                                               ([(1, 0, 0), (0, 0, 1)], False)])  # the last: no top order
def test_order_two_subsets(subset, by_points, kernel_dir):
    """Subsets of multi-indices at order 2: point by point where a top order is asked for,
    the chunked path where none is (the module still imports and matches)."""
    sizes = (3, 5, 4, 2)
    params = random_params(sizes, torch.Generator().manual_seed(1))
    mod = diagramc.compile(diagramc.Architecture(sizes, "tanh"), 2, "numpy", multi_indices=subset, out_dir=kernel_dir)
    assert mod._KERNEL._BY_POINTS == (by_points and HAS_NUMBA and HAS_SCIPY)
    for batch in (1, 9):
        x = torch.randn(batch, 3, generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
        _assert_matches(mod.derivatives([q.numpy() for q in params], x.numpy()),
                        reference_derivatives(params, x, "tanh", mod.MULTI_INDICES))


@pytest.mark.skipif(not HAS_NUMBA, reason="the point-by-point loop needs numba")
def test_order_two_without_scipy_and_with_strided_arrays(kernel_dir, monkeypatch):
    """Without SciPy's BLAS the order-2 module keeps the chunked path (same numbers); with it,
    Fortran-ordered weights and a strided x give the same numbers as contiguous ones."""
    sizes = (5, 7, 6, 2)
    params = [q.numpy() for q in random_params(sizes, torch.Generator().manual_seed(3))]
    mod = diagramc.compile(diagramc.Architecture(sizes, "softplus"), 2, "numpy", out_dir=kernel_dir)
    from diagramc.runtime import numpy_loops
    from diagramc.runtime.taylor_numpy import NumpyTaylorKernel
    with monkeypatch.context() as patch:
        patch.setattr(numpy_loops, "DGEMM", None)  # as where SciPy's BLAS cannot be loaded
        plain = types.SimpleNamespace(_KERNEL=NumpyTaylorKernel(mod.PLAN, mod._activation, mod._fused_activation))
    plain.derivatives = plain._KERNEL.derivatives
    assert mod._KERNEL._BY_POINTS == HAS_SCIPY and not plain._KERNEL._BY_POINTS
    x = np.random.default_rng(4).normal(size=(12, 10))[:, ::2]  # every other column: strided
    got = mod.derivatives([np.asfortranarray(q) for q in params], x)
    want = plain.derivatives(params, np.ascontiguousarray(x))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * float(np.abs(want).max()))
    _assert_matches(want, reference_derivatives([torch.from_numpy(q) for q in params], torch.from_numpy(
        np.ascontiguousarray(x)), "softplus", mod.MULTI_INDICES))


@pytest.mark.parametrize("dtype,rtol", [(np.float16, 3e-2), (np.longdouble, 1e-12), (np.dtype(">f8"), 1e-12)])
def test_numpy_dtypes_without_fused_loops(dtype, rtol, kernel_dir):
    """float16 and long double take the NumPy operations (the fused loops are for float32 and
    float64 in native byte order) and keep their type; byte-swapped float64 is worked in
    native order, as NumPy returns results."""
    arch, params, _ = _case(59, "tanh", 4, d=2, hidden=2)
    mod = diagramc.compile(arch, 4, "numpy", out_dir=kernel_dir)
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = reference_derivatives(params, x, "tanh", mod.MULTI_INDICES).numpy()
    got = mod.derivatives([q.numpy().astype(dtype) for q in params], x.numpy().astype(dtype))
    assert got.dtype == np.dtype(dtype).newbyteorder("=")  # the same type (NumPy's results are native)
    assert not mod._KERNEL._fuses(x.numpy().astype(dtype))
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=rtol * np.abs(want).max())


@pytest.mark.parametrize("order", [4, 2])
def test_layer_one_is_kept_only_while_w1_is_unchanged(order, kernel_dir):
    """NumPy keeps layer 1's powers and K between calls while W1 is equal entry by entry (K
    made at the first call that folds): a W1 changed in place, or the same values in another
    dtype, get their own. At order 2 (point by point) K^T in the series' order follows K."""
    arch, params, _ = _case(41, "tanh", order, d=3, hidden=3)
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mod = diagramc.compile(arch, order, "numpy", out_dir=kernel_dir)
    p = [q.numpy().copy() for q in params]
    mod._KERNEL._KEPT_FIRST_LAYER[0] = None  # as after import (another test may have called this module)
    _assert_matches(mod.derivatives(p, x.numpy()[:2]), reference_derivatives(params, x[:2], "tanh", mod.MULTI_INDICES))
    kept = mod._KERNEL._KEPT_FIRST_LAYER[0]  # two points: layer 1 unfolded, no K yet
    if order == 2:  # unfolded, layer 1's powers are W1's columns alone: made anew, not kept
        assert kept is None
    else:
        assert kept is not None and np.array_equal(kept[0], p[0]) and kept[2] is None
    _assert_matches(mod.derivatives(p, x.numpy()), reference_derivatives(params, x, "tanh", mod.MULTI_INDICES))
    powers, kept = None if kept is None else kept[1], mod._KERNEL._KEPT_FIRST_LAYER[0]
    assert kept[2] is not None and (powers is None or kept[1] is powers)  # K made from the kept powers
    mod.derivatives(p, x.numpy())
    assert mod._KERNEL._KEPT_FIRST_LAYER[0] is kept  # reused, not made again
    p[0] *= 1.5  # changed in place, as an optimiser step does
    params[0].mul_(1.5)
    _assert_matches(mod.derivatives(p, x.numpy()), reference_derivatives(params, x, "tanh", mod.MULTI_INDICES))
    assert mod._KERNEL._KEPT_FIRST_LAYER[0][1][0] is not kept[1][0] and mod._KERNEL._KEPT_FIRST_LAYER[0][2] is not kept[2]
    single = mod.derivatives([q.astype(np.float32) for q in p], x.numpy().astype(np.float32))
    assert single.dtype == np.float32 and mod._KERNEL._KEPT_FIRST_LAYER[0][2].dtype == np.float32
    _assert_matches(single.astype(np.float64), reference_derivatives(params, x, "tanh", mod.MULTI_INDICES), 1e-4)
    if getattr(mod._KERNEL, "_BY_POINTS", False):
        assert mod._KERNEL._KEPT_FOLD_MATRIX[0][0] is mod._KERNEL._KEPT_FIRST_LAYER[0][2]


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_batches_split_into_chunks_agree_point_by_point(backend, kernel_dir):
    arch, params, _ = _case(43, "gelu", 3, d=4, hidden=2)
    mod = diagramc.compile(arch, 3, backend, out_dir=kernel_dir)
    batch = 3 * mod._KERNEL._CHUNK + 5
    x = torch.randn(batch, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p, xx = (params, x) if backend == "torch" else ([q.numpy() for q in params], x.numpy())
    whole = np.asarray(mod.derivatives(p, xx))
    rows = np.concatenate([np.asarray(mod.derivatives(p, xx[i : i + 1])) for i in range(0, batch, 97)])
    np.testing.assert_allclose(whole[::97], rows, rtol=1e-12, atol=1e-12)
    # and against the independent reference, at points in every chunk (the first, middle, last)
    picked = torch.tensor([0, mod._KERNEL._CHUNK - 1, mod._KERNEL._CHUNK, 2 * mod._KERNEL._CHUNK + 7, batch - 1])
    _assert_matches(torch.as_tensor(whole[picked.numpy()]),
                    reference_derivatives(params, x[picked], "gelu", mod.MULTI_INDICES))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize(
    "d,order,batch,activation", [(20, 2, 9, "tanh"), (6, 4, 3, QUADRATIC), (6, 4, 9, QUADRATIC), (260, 2, 2, "tanh")]
)
def test_symmetric_gram_blocks_in_strips_match(d, order, batch, activation, backend, kernel_dir):
    """A symmetric Gram block (the k = 2 term alone at a = ORDER / 2: always at order 2, at
    order 4 where the third derivative vanishes) is computed in 2 strips from 16 rows and 4
    from 256, on and above its diagonal only; its entries above count twice."""
    arch, params, _ = _case(47, activation, order, d=d, hidden=2)
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    mod = diagramc.compile(arch, order, backend, out_dir=kernel_dir)
    assert max(len(block["pieces"]) for block in mod._KERNEL._TOP_BLOCKS if block["symmetric"]) == (4 if d == 260 else 2)
    want = reference_derivatives(params, x, activation, mod.MULTI_INDICES)
    p, xx = (params, x) if backend == "torch" else ([q.numpy() for q in params], x.numpy())
    _assert_matches(mod.derivatives(p, xx), want)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_few_multi_indices_of_many_inputs_at_high_order(backend, kernel_dir):
    """40 inputs at order 12: the tables' integer keys of monomials (up to 40^12 > 2^63) are
    Python integers. Derivatives in the last two inputs only equal a 2-input network's, the
    other 38 inputs fixed."""
    arch, params, _ = _case(53, "tanh", 12, d=40, hidden=2)
    x = torch.randn(2, 40, generator=torch.Generator().manual_seed(53), dtype=torch.float64) * 0.3
    wanted = [(12, 0), (7, 5), (6, 6), (0, 12), (3, 4), (1, 0)]
    first = (12,) + (0,) * 39  # keys from 0 to past 2^64: wrapped int64 keys would not be sorted
    partial = diagramc.compile(arch, 12, backend, [first] + [(0,) * 38 + a for a in wanted], out_dir=kernel_dir)
    W1, b1 = params[0], params[1]
    small_params = [W1[:, 38:].contiguous(), None] + list(params[2:])
    full = diagramc.compile(diagramc.Architecture((2,) + arch.layer_sizes[1:], "tanh"), 12, backend, out_dir=kernel_dir)
    mine = [i for i, a in enumerate(partial.MULTI_INDICES) if a != first]  # in the kernel's canonical order
    columns = [full.MULTI_INDICES.index(partial.MULTI_INDICES[i][38:]) for i in mine]
    for point in x:  # the other inputs' part of layer 1 joins its bias
        small_params[1] = b1 + W1[:, :38] @ point[:38]
        args = [(params, point[None]), (small_params, point[None, 38:])]
        if backend == "numpy":
            args = [([q.numpy() for q in p], xx.numpy()) for p, xx in args]
        got = np.asarray(partial.derivatives(*args[0]))[..., mine]
        want = np.asarray(full.derivatives(*args[1]))[..., columns]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


def test_cuda_graphed_needs_a_cuda_tensor(kernel_dir):
    arch, params, x = _case(40, "tanh", 2, d=2, hidden=2)
    mod = diagramc.compile(arch, 2, "torch", out_dir=kernel_dir)
    with pytest.raises(diagramc.DiagramcError, match="CUDA device"):
        diagramc.cuda_graphed(mod.derivatives, params, x)


@pytest.mark.parametrize("activation,order,d,hidden", [("tanh", 5, 3, 2), ("gelu", 6, 2, 3), (QUADRATIC, 4, 4, 2),
                                                        ("sigmoid", 7, 2, 2)])
def test_torch_scatter_products_match(activation, order, d, hidden, kernel_dir, monkeypatch):
    """What a GPU runs, forced on the CPU: tanh's and sigmoid's vertex weights as polynomials
    in the activation (one matrix product), the top order's sums as one scatter-add."""
    arch, params, x = _case(50 + order, activation, order, d=d, hidden=hidden)
    mod = diagramc.compile(arch, order, "torch", out_dir=kernel_dir)
    def gradients():
        ps = [p.clone().requires_grad_(True) for p in params]
        mod.derivatives(ps, x).square().sum().backward()
        return [p.grad for p in ps]

    blocked = gradients()
    monkeypatch.setattr(mod._KERNEL, "_scatters", lambda Z: True)
    _assert_matches(mod.derivatives(params, x), reference_derivatives(params, x, activation, mod.MULTI_INDICES))
    for a, b in zip(gradients(), blocked):  # index_add's gradient: the blocks' gradient
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * float(b.abs().max().clamp(min=1.0)))


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("activation", list(TORCH_ACTIVATIONS))
@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_fused_activation_loop_matches_numpy_operations(activation, dtype, rtol, kernel_dir):
    """The vertex weights as one numba loop over scalar math (printing's "scalar" code) against
    the NumPy operations in float64, at ordinary and extreme pre-activations (overflow, the
    kink at 0). In float32 the loop works in float64 inside, so it is checked against float64
    (NumPy's float32 operations lose more to cancellation in the high-order polynomials)."""
    arch = diagramc.Architecture((2, 3, 3, 1), activation)
    mod = diagramc.compile(arch, 6, "numpy", out_dir=kernel_dir)
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 2, (5, 8)), np.array([[0.0, -0.0, 40.0, -40.0, 300.0, -300.0, 1e-8, 3.0],
                                                            [np.nan, np.inf, -np.inf, 710.0, -710.0, 0.5, 1.0, 2.0]])])
    with np.errstate(all="ignore"):
        value, weights = mod._KERNEL._activation(z.astype(dtype).astype(np.float64))
        fused_value, fused_weights = mod._KERNEL._vertex_weights(z.astype(dtype))
    assert fused_value.dtype == dtype
    np.testing.assert_allclose(fused_value, value, rtol=rtol, atol=rtol)
    assert [w is None for w in fused_weights] == [w is None for w in weights]
    for w, f in zip(weights, fused_weights):
        if w is not None:
            np.testing.assert_allclose(f, np.broadcast_to(w, z.shape), rtol=rtol, atol=rtol * max(1.0, np.abs(w).max()))


@pytest.mark.skipif(not HAS_NUMBA, reason="numba is not installed")
@pytest.mark.parametrize("activation", ["sin(x)/x", "x + x**-2"])
def test_fused_activation_loop_divides_by_zero_as_numpy_does(activation, kernel_dir):
    """Negative powers at z = 0 give inf or nan in the fused loop, as in NumPy (numba itself
    would raise ZeroDivisionError for 0.0**-n)."""
    mod = diagramc.compile(diagramc.Architecture((2, 3, 3, 1), activation), 5, "numpy", out_dir=kernel_dir)
    z = np.array([[0.0, -0.0, 0.5, 1.0, 2.0, -3.0]])
    with np.errstate(all="ignore"):
        value, weights = mod._KERNEL._activation(z)
        fused_value, fused_weights = mod._KERNEL._vertex_weights(z)
    for want, got in [(value, fused_value)] + [(w, f) for w, f in zip(weights, fused_weights) if w is not None]:
        want = np.broadcast_to(want, z.shape)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
        finite = np.isfinite(want)
        np.testing.assert_allclose(got[finite], want[finite], rtol=1e-12)


def test_torch_kernel_first_called_in_inference_mode_still_trains(kernel_dir):
    """Tables and alpha! made during a first call under torch.inference_mode serve later
    calls that need gradients."""
    arch, params, x = _case(60, "tanh", 3, d=2, hidden=2)
    mod = diagramc.compile(arch, 3, "torch", out_dir=kernel_dir)
    module = _fresh_import(mod.__file__)  # empty caches
    with torch.inference_mode():
        module.derivatives(params, x)
    ps = [p.clone().requires_grad_(True) for p in params]
    module.derivatives(ps, x).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ps)


@pytest.mark.parametrize(
    "activation,d,order,numpy_takes_it,torch_takes_it",
    [("tanh", 2, 8, True, True), ("sigmoid", 4, 5, True, False), ("tanh", 8, 4, True, False),
     ("tanh", 16, 3, False, False), ("tanh", 64, 2, False, False), ("softplus", 2, 8, False, False),
     ("x*tanh(x)", 2, 8, False, False)],
)
def test_the_equation_is_taken_where_it_does_less_work(activation, d, order, numpy_takes_it, torch_takes_it, kernel_dir):
    """The choice is made from the tables' work counts, for activations with sigma' = p(sigma),
    p quadratic, below each backend's threshold (NumPy 1.1, torch 0.65); MULTIPLY_ADDS counts
    the path taken on a CPU, _MULTIPLY_ADDS_BY_POWERS the powers' (a GPU, NumPy without numba)."""
    arch = diagramc.Architecture((d, 64, 64, 64, 1), activation)
    # the products' choice (torch at (2, 8) goes by directions: test_directions)
    mods = {b: diagramc.compile(arch, order, b, out_dir=kernel_dir, strategy="products") for b in ("numpy", "torch")}
    assert getattr(mods["numpy"]._KERNEL, "_BY_EQUATION", False) == numpy_takes_it
    assert getattr(mods["torch"]._KERNEL, "_BY_EQUATION", False) == torch_takes_it
    powers = [getattr(mod._KERNEL, "_MULTIPLY_ADDS_BY_POWERS", getattr(mod._KERNEL, "_MULTIPLY_ADDS_BY_STRIPS", mod.MULTIPLY_ADDS))
              for mod in mods.values()]
    if mods["numpy"]._KERNEL._BY_TANGENT == mods["torch"]._KERNEL._BY_TANGENT:  # a backend's own choice (see _BY_TANGENT)
        assert powers[0] == powers[1]  # the powers of Z do the same work in both backends
    for (backend, mod), by_powers in zip(mods.items(), powers):
        if getattr(mod._KERNEL, "_BY_EQUATION", False):
            assert mod._KERNEL._layer_work(True) < (1.1 if backend == "numpy" else 0.65) * mod._KERNEL._layer_work(False)
            saved = 2 * 64 * (mod._KERNEL._layer_work(False) - mod._KERNEL._layer_work(True))
            assert mod.MULTIPLY_ADDS["elementwise"] + saved == by_powers["elementwise"]
        else:  # NumPy at order 2, point by point, makes the Gram matrix's triangle alone (_syrk)
            saved = getattr(mod._KERNEL, "_SYRK_SAVES", 0)
            assert (saved > 0) == (backend == "numpy" and getattr(mod._KERNEL, "_BY_POINTS", False))
            assert mod.MULTIPLY_ADDS == {**by_powers, "gemm": by_powers["gemm"] - saved, "total": by_powers["total"] - saved}
    # the bench counts what runs: on a GPU the torch kernels keep the powers
    from diagramc.bench import kernel_multiply_adds
    assert kernel_multiply_adds(mods["torch"], "cuda")["total"] == powers[1]["total"]
    assert kernel_multiply_adds(mods["torch"], "cpu")["total"] == mods["torch"].MULTIPLY_ADDS["total"]


@pytest.mark.parametrize("activation,subset", [("tanh", None), ("sigmoid", None), ("tanh", [(0, 7), (3, 4), (6, 1), (1, 0)])])
def test_torch_series_by_the_activation_equation(activation, subset, kernel_dir, monkeypatch):
    """On a CPU the torch kernels follow the equation at orders 7 and 8: values match jacfwd and
    the powers path, in float64 and float32, and so do the gradients of a loss in every parameter."""
    arch, params, _ = _case(81, activation, 7, d=2, hidden=3)
    mod = diagramc.compile(arch, 7, "torch", multi_indices=subset, out_dir=kernel_dir, strategy="products")
    assert mod._KERNEL._BY_EQUATION and mod._KERNEL._by_equation(params[0], None, None)
    calls, by_equation = [], mod._KERNEL._equation_series
    monkeypatch.setattr(mod._KERNEL, "_equation_series", lambda *args: calls.append(1) or by_equation(*args))
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = reference_derivatives(params, x, activation, mod.MULTI_INDICES)
    ps = [p.clone().requires_grad_(True) for p in params]
    got = mod.derivatives(ps, x)
    _assert_matches(got.detach(), want)
    grads = torch.autograd.grad(got.square().sum(), ps)
    single = mod.derivatives([p.float() for p in params], x.float())
    assert single.dtype == torch.float32
    # float32 vertex weights of order 7 lose 4e-4 of the largest coefficient (the powers path as much)
    torch.testing.assert_close(single.double(), want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))
    assert len(calls) == 2 * (3 - 1)  # layers 2 and 3 of each call
    monkeypatch.setattr(mod._KERNEL, "_BY_EQUATION", False)  # the powers of Z instead
    powers = mod.derivatives(ps, x)
    torch.testing.assert_close(powers.detach(), got.detach(), rtol=1e-12, atol=1e-12 * float(got.abs().max()))
    for a, b in zip(torch.autograd.grad(powers.square().sum(), ps), grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11 * float(b.abs().max()))
    assert len(calls) == 4


# the powers of Z, (from order 7) the activation's equation, and the kernel by directions
@pytest.mark.parametrize("order, strategy", [(4, "products"), (7, "products"), (7, "directions")])
def test_torch_func_transforms_over_x(order, strategy, kernel_dir):
    """torch.func over x works on the torch kernels: vmap gives the batched call's values, and
    jacrev and jacfwd of the value give its first-order coefficients. (vmap over stacked
    parameters does not: the kernels write into their outputs in place; the README says so.)"""
    arch, params, x = _case(90, "tanh", order, d=2, hidden=3)
    mod = diagramc.compile(arch, order, "torch", out_dir=kernel_dir, strategy=strategy)
    if strategy == "products":
        assert mod._KERNEL._BY_EQUATION == (order == 7)
    want = mod.derivatives(params, x)
    got = torch.func.vmap(lambda xi: mod.derivatives(params, xi[None])[0])(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    value = lambda xi: mod.derivatives(params, xi[None])[0, 0, 0]  # noqa: E731
    for jacobian in (torch.func.jacrev, torch.func.jacfwd):
        torch.testing.assert_close(jacobian(value)(x[0]), want[0, 0, 1:3], rtol=1e-12, atol=1e-12)
