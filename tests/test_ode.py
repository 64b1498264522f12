"""Neural-ODE solution derivatives and the Taylor regularizer (contract section 10), against
Lie derivatives by nested torch.func.jvp and finite differences of an accurate solution."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import jvp

import diagramc
import diagramc.applications.ode
import diagramc.compiler.cache

torchdiffeq = pytest.importorskip("torchdiffeq")

ACTIVATIONS = {"tanh": torch.nn.Tanh, "softplus": torch.nn.Softplus, "sigmoid": torch.nn.Sigmoid,
               "gelu": torch.nn.GELU, "silu": torch.nn.SiLU}


def make_model(D, widths, activation, time_input, seed, scale=1.0):
    torch.manual_seed(seed)
    sizes = (D + time_input, *widths, D)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b, dtype=torch.float64))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[activation]())
    model = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for lin in model[::2]:
            lin.weight.normal_().div_(lin.in_features**0.5)
            lin.bias.normal_().mul_(0.5)
        model[-1].weight.mul_(scale)
    return model


def lie_derivatives(model, z, order, t=None):
    """d^k z/dt^k by nested jvp of the flow's vector field on the state (z, t)."""
    D = z.shape[1]
    t = torch.zeros(z.shape[0], dtype=z.dtype) if t is None else torch.as_tensor(t, dtype=z.dtype).expand(z.shape[0])
    timed = model[0].in_features == D + 1

    def field(w):
        return torch.cat([model(w if timed else w[:, :D]), torch.ones_like(w[:, D:])], 1)

    w = torch.cat([z, t[:, None]], 1)
    g, out = (lambda w: w), [w]
    for _ in range(order):
        g = (lambda g: lambda w: jvp(g, (w,), (field(w),))[1])(g)
        out.append(g(w))
    return torch.stack([o[:, :D] for o in out], 2)


@pytest.mark.parametrize(
    "activation, widths, time_input, order",
    [("tanh", (8,), False, 4), ("tanh", (6, 5, 4, 6), True, 3), ("softplus", (7, 5), True, 4),
     ("sigmoid", (6, 6, 6), False, 4), ("gelu", (5, 6), True, 3)],
)
def test_against_lie_derivatives(activation, widths, time_input, order):
    model = make_model(3, widths, activation, time_input, seed=len(widths))
    z = torch.randn(4, 3, dtype=torch.float64)
    t = torch.randn(4, dtype=torch.float64) if time_input else None
    got = diagramc.ode_derivatives(model, z, order, t)
    assert got.shape == (4, 3, order + 1)
    torch.testing.assert_close(got, lie_derivatives(model, z, order, t), rtol=1e-10, atol=1e-11)
    reg = diagramc.taylor_regularizer(model, z, order, t)
    torch.testing.assert_close(reg, (got[..., order] ** 2).mean(1))


def test_against_finite_differences_of_a_solution():
    """Order 6: interpolate an accurate dopri8 solution on 13 points around t0 (steps landing on them)."""
    model = make_model(2, (6, 6), "tanh", True, seed=0, scale=3.0)
    z0, t0, K, h, n = torch.randn(3, 2, dtype=torch.float64), 0.3, 6, 0.03, 6
    got = diagramc.ode_derivatives(model, z0, K, torch.tensor(t0, dtype=torch.float64)).detach().numpy()
    coefficients = got / np.array([math.factorial(k) for k in range(K + 1)])
    ts = torch.tensor([t0 + h * j for j in range(-n, n + 1)], dtype=torch.float64)

    def f(t, z):
        return model(torch.cat([z, t.expand(z.shape[0], 1)], 1))

    with torch.no_grad():
        sides = [torchdiffeq.odeint(f, z0, s, rtol=1e-13, atol=1e-14, method="dopri8", options=dict(step_t=s))
                 for s in (ts[n:], ts[: n + 1].flip(0))]
    Z = torch.cat([sides[1].flip(0)[:-1], sides[0]]).numpy().reshape(2 * n + 1, -1)
    fitted = np.linalg.solve(np.vander(np.arange(-n, n + 1), 2 * n + 1, increasing=True), Z)[: K + 1]
    fitted = np.moveaxis(fitted.reshape(K + 1, 3, 2) / h ** np.arange(K + 1)[:, None, None], 0, 2)
    scale = np.abs(coefficients).max(axis=(0, 1))
    assert np.all(np.abs(fitted - coefficients) <= 1e-4 * scale)


@pytest.mark.parametrize("time_input", [False, True])
def test_gradients_against_double_backward(time_input):
    model = make_model(2, (5, 4), "tanh", time_input, seed=3)
    z = torch.randn(3, 2, dtype=torch.float64)
    t = torch.randn(3, dtype=torch.float64) if time_input else None
    weights = torch.randn(3, 2, 4, dtype=torch.float64)

    def grads(fn):
        zz = z.clone().requires_grad_()
        loss = (fn(model, zz, 3, t) * weights).sum()
        return torch.autograd.grad(loss, [zz, *model.parameters()])

    for a, b in zip(grads(diagramc.ode_derivatives), grads(lie_derivatives)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_regularized_dynamics_with_odeint_and_adjoint():
    model = make_model(2, (8,), "softplus", True, seed=5)
    dynamics = diagramc.TaylorRegularizedODE(model, 2, time_input=True)
    z0 = torch.randn(4, 2, dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    state = (z0, torch.zeros(4, dtype=torch.float64))
    runs = []
    for solve in (torchdiffeq.odeint, torchdiffeq.odeint_adjoint):
        kwargs = dict(adjoint_params=tuple(dynamics.parameters())) if solve is torchdiffeq.odeint_adjoint else {}
        z1, r1 = solve(dynamics, state, ts, rtol=1e-9, atol=1e-9, method="dopri5", **kwargs)
        loss = (z1[-1] ** 2).sum() + r1[-1].sum()
        runs.append((z1[-1].detach(), r1[-1].detach(), torch.autograd.grad(loss, list(model.parameters()))))
    (za, ra, ga), (zb, rb, gb) = runs
    torch.testing.assert_close(za, zb)
    torch.testing.assert_close(ra, rb)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # r(1) is the integral of the regularizer along the solution: trapezoid check on a fine grid
    grid = torch.linspace(0, 1, 401, dtype=torch.float64)
    with torch.no_grad():
        zs = torchdiffeq.odeint(lambda t, z: model(torch.cat([z, t.expand(4, 1)], 1)), z0, grid, rtol=1e-10, atol=1e-10)
        values = torch.stack([diagramc.taylor_regularizer(model, zt, 2, t) for zt, t in zip(zs, grid)])
    torch.testing.assert_close(ra, torch.trapezoid(values, grid, dim=0), rtol=1e-4, atol=1e-8)


def test_no_file_io_per_call(monkeypatch):
    model = make_model(2, (4,), "tanh", False, seed=1)
    z = torch.randn(2, 2, dtype=torch.float64)
    first = diagramc.ode_derivatives(model, z, 3)

    def refuse(*args, **kwargs):
        raise AssertionError("a repeated call went to the compiler or the file cache")

    monkeypatch.setattr(diagramc.compiler.cache, "load", refuse)
    monkeypatch.setattr(diagramc.compiler.cache, "is_intact", refuse)
    monkeypatch.setattr("builtins.open", refuse)
    torch.testing.assert_close(diagramc.ode_derivatives(model, z, 3), first)
    diagramc.taylor_regularizer(model, z, 3)


def test_errors():
    model = make_model(2, (4,), "tanh", False, seed=1)
    with pytest.raises(ValueError, match=r"z has shape \(3, 3\); expected \(batch, 2\)"):
        diagramc.ode_derivatives(model, torch.zeros(3, 3, dtype=torch.float64), 2)
    with pytest.raises(diagramc.DiagramcError, match="order"):
        diagramc.TaylorRegularizedODE(model, 0)
    order0 = diagramc.ode_derivatives(model, torch.ones(3, 2, dtype=torch.float64), 0)
    assert order0.shape == (3, 2, 1)


def _both_paths(monkeypatch, fn):
    """fn() through the compiled pass (tanh, sigmoid on the CPU) and through torch operations."""
    from diagramc.runtime import jet_torch

    compiled = fn()
    monkeypatch.setattr(jet_torch, "_compiled_applies", lambda *args: False)
    recorded = fn()
    monkeypatch.undo()
    return compiled, recorded


@pytest.mark.parametrize("activation, widths, time_input, order",
                         [("tanh", (6, 5, 4), False, 4), ("sigmoid", (6, 5), True, 6), ("tanh", (7,), True, 1),
                          ("tanh", (5, 5), True, 2)])
def test_compiled_pass_and_its_gradient_against_torch_operations(monkeypatch, activation, widths, time_input, order):
    model = make_model(3, widths, activation, time_input, seed=7)
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, dtype=torch.float64, requires_grad=True) if time_input else None
    weights = torch.randn(5, 3, order + 1, dtype=torch.float64)
    inputs = [z, *([t] if time_input else []), *model.parameters()]

    def run():
        out = diagramc.ode_derivatives(model, z, order, t)
        return out, torch.autograd.grad((out * weights).sum(), inputs)

    (a, ga), (b, gb) = _both_paths(monkeypatch, run)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("time_input", [False, True])
def test_parameter_gradients_alone_against_torch_operations(monkeypatch, time_input):
    """z not requiring a gradient (a training step's loss in the parameters only): the pass skips
    dz's product and still gives the parameters' gradients of the torch operations."""
    model = make_model(4, (6, 5, 7), "tanh", time_input, seed=3)
    z = torch.randn(9, 4, dtype=torch.float64)
    t = torch.tensor(0.7, dtype=torch.float64) if time_input else None

    def run():
        reg = diagramc.taylor_regularizer(model, z, 3, t).mean()
        return reg, torch.autograd.grad(reg, list(model.parameters()))

    (a, ga), (b, gb) = _both_paths(monkeypatch, run)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-12)


def test_compiled_pass_twice_differentiable(monkeypatch):
    """A gradient of the gradient (create_graph) goes through torch operations and agrees."""
    model = make_model(2, (5, 4), "tanh", True, seed=4)
    z = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.3, dtype=torch.float64)

    def run():
        reg = diagramc.taylor_regularizer(model, z, 3, t).sum()
        (gz,) = torch.autograd.grad(reg, [z], create_graph=True)
        return gz, torch.autograd.grad((gz**2).sum(), [z, *model.parameters()])

    (a, ga), (b, gb) = _both_paths(monkeypatch, run)
    torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-11)


def test_compiled_pass_in_float32_and_under_torch_func():
    model = make_model(2, (6, 6), "tanh", False, seed=2)
    z = torch.randn(4, 2, dtype=torch.float64)
    exact = diagramc.ode_derivatives(model, z, 4)
    single = diagramc.ode_derivatives(model.float(), z.float(), 4)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), exact, rtol=1e-4, atol=1e-5)
    # torch.func's transforms take the torch operations (the compiled pass has no vmap rule)
    model.double()
    by_func = torch.func.grad(lambda zz: diagramc.taylor_regularizer(model, zz, 3).sum())(z)
    zz = z.clone().requires_grad_()
    (by_autograd,) = torch.autograd.grad(diagramc.taylor_regularizer(model, zz, 3).sum(), [zz])
    torch.testing.assert_close(by_func, by_autograd, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("time_input", [False, True])
def test_compiled_regularizer_and_dynamics_gradients(monkeypatch, time_input):
    """The regularizer folded into the compiled pass, alone and beside dz/dt (TaylorRegularizedODE)."""
    model = make_model(3, (6, 5), "tanh", time_input, seed=9)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.7, dtype=torch.float64)
    dynamics = diagramc.TaylorRegularizedODE(model, 3, time_input=time_input)
    weights = torch.randn(4, 3, dtype=torch.float64)

    def run():
        reg = diagramc.taylor_regularizer(model, z, 3, t if time_input else None)
        dz, dr = dynamics(t, (z, torch.zeros(4, dtype=torch.float64)))
        loss = (reg * torch.arange(4.0, dtype=torch.float64)).sum() + (dz * weights).sum() + dr.sum()
        return reg, dz, torch.autograd.grad(loss, [z, *model.parameters()])

    (ra, da, ga), (rb, db, gb) = _both_paths(monkeypatch, run)
    torch.testing.assert_close(ra, rb, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(da, db, rtol=1e-12, atol=1e-13)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-12)


def test_compiled_pass_sees_parameters_changed_in_place():
    """Values changed in place between calls, through the optimizer or .data (no version bump)."""
    model = make_model(2, (5, 5), "tanh", False, seed=6)
    z = torch.randn(3, 2, dtype=torch.float64)
    first = diagramc.ode_derivatives(model, z, 3)
    model[0].weight.data.mul_(0.5)
    second = diagramc.ode_derivatives(model, z, 3)
    torch.testing.assert_close(second, lie_derivatives(model, z, 3), rtol=1e-10, atol=1e-11)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("prange", [True, False], ids=["numba-prange", "python-threads"])
@pytest.mark.parametrize("time_input, dtype", [(False, torch.float64), (True, torch.float64), (True, torch.float32)])
def test_compiled_pass_split_over_threads(monkeypatch, time_input, dtype, prange):
    """A batch in tiles, spread over threads (numba's prange where its threading layer is fast,
    else Python's threads), gives the torch operations' values and gradients."""
    import numba

    from diagramc.runtime import jet_torch, numpy_loops

    fast = prange and numpy_loops.fast_parallel_loops()
    if prange and not fast:
        pytest.skip("numba's threading layer here is neither OpenMP nor TBB")
    monkeypatch.setattr(numpy_loops, "fast_parallel_loops", lambda: fast)
    monkeypatch.setattr(jet_torch, "ROWS_PER_THREAD", 4)
    monkeypatch.setattr(jet_torch, "SPLIT_WORK", 1)
    monkeypatch.setattr(jet_torch, "PART_WORK", 1)
    monkeypatch.setattr(jet_torch, "TILE_BYTES", 1)  # a tile a row: several tiles a thread
    count = min(3, numba.get_num_threads()) if fast else 3
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        model = make_model(3, (7, 6, 5), "tanh", time_input, seed=11).to(dtype)
        z = torch.randn(13, 3, dtype=dtype, requires_grad=True)
        t = torch.randn(13, dtype=dtype, requires_grad=True) if time_input else None
        weights = torch.randn(13, 3, 5, dtype=dtype)
        inputs = [z, *([t] if time_input else []), *model.parameters()]

        def run():
            out = diagramc.ode_derivatives(model, z, 4, t)
            reg = diagramc.taylor_regularizer(model, z, 4, t)
            loss = (out * weights).sum() + (reg * torch.arange(13.0, dtype=dtype)).sum()
            return out, reg, torch.autograd.grad(loss, inputs)

        (a, ra, ga), (b, rb, gb) = _both_paths(monkeypatch, run)
        assert any(len(layout.groups) == count and len(layout.tiles) == 13 and layout.parallel == (fast and count > 1)
                   for layout in jet_torch._LAYOUTS.values())
    finally:
        torch.set_num_threads(threads)
    tol = dict(rtol=1e-11, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(a, b, **tol)
    torch.testing.assert_close(ra, rb, **tol)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, **tol)


def _regularizer_in_child(queue, model, z):
    queue.put(diagramc.taylor_regularizer(model, z, 3).detach().numpy())


def test_compiled_pass_in_a_forked_child(monkeypatch):
    """A child forked after the parent ran the pass on numba's threads runs it on its own thread
    (GNU OpenMP's threads do not survive a fork: numba would stop the child) and gets its values."""
    import multiprocessing

    from diagramc.runtime import jet_torch

    monkeypatch.setattr(jet_torch, "PART_WORK", 1)
    monkeypatch.setattr(jet_torch, "ROWS_PER_THREAD", 4)
    model = make_model(3, (7, 6), "tanh", False, seed=5)
    z = torch.randn(16, 3, dtype=torch.float64)
    expected = diagramc.taylor_regularizer(model, z, 3).detach().numpy()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_regularizer_in_child, args=(queue, model, z))
    child.start()
    try:
        got = queue.get(timeout=60)
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_allclose(got, expected, rtol=1e-13)
