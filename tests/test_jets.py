"""Jet kernels (contract section 8) against independent references: nested torch.func.jvp along
the curve, and the all-partials kernels contracted with a line. float64, random networks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import jvp

import diagramc
from diagramc.compiler.jets import series_rule

from .reference import TORCH_ACTIVATIONS, random_params

ACTIVATIONS = ["tanh", "sigmoid", "softplus", "sin", "gelu", "silu", "x*tanh(x)", "exp(-x**2)*x + sin(2*x)/3"]


def batched_mlp(params, activation):
    sigma = TORCH_ACTIVATIONS[activation]

    def f(x):
        h = x
        for i in range(0, len(params) - 2, 2):
            h = sigma(h @ params[i].T + params[i + 1])
        return h @ params[-2].T + params[-1]

    return f


def reference_jet(params, activation, x):
    """Coefficients of f(x(t)) by nested jvp in t: d^k/dt^k f(x(t)) at t = 0, divided by k!."""
    f = batched_mlp(params, activation)
    order = x.shape[2] - 1

    def g(t):
        c = x[:, :, order]
        for k in range(order - 1, -1, -1):  # Horner: fewer operations for every nested jvp
            c = x[:, :, k] + t * c
        return f(c)

    out, t0 = [], torch.zeros((), dtype=x.dtype)
    for k in range(order + 1):
        out.append(g(t0) / math.factorial(k))
        g = (lambda g: lambda t: jvp(g, (t,), (torch.ones_like(t),))[1])(g)
    return torch.stack(out, dim=2)


def case(seed, d, widths, m, activation, order, batch=5):
    gen = torch.Generator().manual_seed(seed)
    arch = diagramc.Architecture((d, *widths, m), activation)
    params = random_params(arch.layer_sizes, gen)
    x = torch.randn(batch, d, order + 1, generator=gen, dtype=torch.float64)  # a random curve, x(0) != 0
    x[:, :, 2:] *= 0.5
    return arch, params, x


@pytest.mark.parametrize(
    "activation, widths, order",
    [
        ("tanh", (6,), 6),
        ("tanh", (5, 4, 6, 3), 4),
        ("sigmoid", (5, 4), 5),
        ("softplus", (4, 5, 3), 4),
        ("sin", (5, 5), 5),
        ("gelu", (4, 3), 4),
        ("silu", (5,), 5),
        ("x*tanh(x)", (4, 4), 3),
        ("exp(-x**2)*x + sin(2*x)/3", (3, 4, 3, 4), 4),
    ],
)
def test_jet_against_nested_jvp(kernel_dir, activation, widths, order):
    arch, params, x = case(1, 3, widths, 2, activation, order)
    mod = diagramc.compile_jet(arch, order, "torch", out_dir=kernel_dir)
    ref = reference_jet(params, activation, x)
    torch.testing.assert_close(mod.jet(params, x), ref, rtol=1e-10, atol=1e-11)
    mod_np = diagramc.compile_jet(arch, order, "numpy", out_dir=kernel_dir)
    y = mod_np.jet([p.numpy() for p in params], x.numpy())
    assert isinstance(y, np.ndarray) and y.dtype == np.float64
    np.testing.assert_allclose(y, ref.numpy(), rtol=1e-10, atol=1e-11)


def test_rules_chosen():
    assert series_rule(diagramc.get_activation("tanh")) == ("quadratic", (1.0, 0.0, -1.0))
    assert series_rule(diagramc.get_activation("sigmoid")) == ("quadratic", (0.0, 1.0, -1.0))
    assert series_rule(diagramc.get_activation("softplus"))[0] == "integral"
    assert series_rule(diagramc.get_activation("sin")) == ("harmonic", ())
    assert series_rule(diagramc.get_activation("exp(x)")) == ("quadratic", (0.0, 1.0, 0.0))
    assert series_rule(diagramc.get_activation("x*tanh(x)")) == ("vertex", ())


@pytest.mark.parametrize("activation, order", [("tanh", 4), ("softplus", 3), ("silu", 3)])
def test_jet_against_all_partials_on_a_line(kernel_dir, activation, order):
    """Along x(t) = x0 + v t, y_k = sum_(|alpha| = k) c_alpha v^alpha with c_alpha of diagramc.compile."""
    arch, params, x = case(2, 2, (5, 4), 3, activation, order)
    x[:, :, 2:] = 0
    partials = diagramc.compile(arch, order, "torch", out_dir=kernel_dir)
    c = partials.taylor_coefficients(params, x[:, :, 0])
    v = x[:, :, 1]
    monomials = torch.stack([torch.prod(v ** torch.tensor(a, dtype=v.dtype), dim=1) for a in partials.MULTI_INDICES], 1)
    orders = torch.tensor([sum(a) for a in partials.MULTI_INDICES])
    expected = torch.stack([(c * monomials[:, None])[..., orders == k].sum(-1) for k in range(order + 1)], 2)
    mod = diagramc.compile_jet(arch, order, "torch", out_dir=kernel_dir)
    torch.testing.assert_close(mod.jet(params, x), expected, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "x*tanh(x)"])
def test_gradients_and_double_backward(kernel_dir, activation):
    order = 3
    arch, params, x = case(3, 2, (4, 3), 2, activation, order, batch=3)
    mod = diagramc.compile_jet(arch, order, "torch", out_dir=kernel_dir)
    weights = torch.randn(3, 2, order + 1, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def first_and_second(fn):
        leaves = [p.clone().requires_grad_() for p in params] + [x.clone().requires_grad_()]
        loss = (fn(leaves[:-1], leaves[-1]) * weights).sum()
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        second = torch.autograd.grad(sum((g**2).sum() for g in grads), leaves, materialize_grads=True)
        return [g.detach() for g in grads], second

    got = first_and_second(mod.jet)
    ref = first_and_second(lambda p, xx: reference_jet(p, activation, xx))
    for a, b in zip(got[0] + list(got[1]), ref[0] + list(ref[1])):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_module_shape_errors_and_header(kernel_dir):
    arch, params, x = case(4, 3, (4,), 2, "tanh", 2)
    mod = diagramc.compile_jet(arch, 2, "torch", out_dir=kernel_dir)
    assert (mod.INPUTS, mod.OUTPUTS, mod.HIDDEN_LAYERS, mod.ACTIVATION, mod.ORDER) == (3, 2, 1, "tanh", 2)
    with pytest.raises(ValueError, match=r"x has shape \(5, 3\); expected \(batch, 3, 3\)"):
        mod.jet(params, x[:, :, 0])
    with pytest.raises(ValueError, match=r"params\[2\] \(W2\) has shape \(2, 3\); expected \(2, 4\)"):
        mod.jet(params[:2] + [params[2][:, :3]] + params[3:], x)
    with pytest.raises(ValueError, match=r"params has 3 arrays; expected 4"):
        mod.jet(params[:3], x)
    with pytest.raises(ValueError, match="params\\[0\\] \\(W1\\)"):
        mod.jet([params[0].float()] + params[1:], x)
    mod_np = diagramc.compile_jet(arch, 2, "numpy", out_dir=kernel_dir)
    with pytest.raises(ValueError, match="numpy array"):
        mod_np.jet([p.numpy() for p in params], x)
    text = open(mod.__file__).read()
    assert text.startswith("# Generated by diagramc")
    assert "diagramc.compile_jet(diagramc.Architecture((3, 4, 2)" in text.splitlines()[1]
    assert "sympy" not in text and "jinja" not in text and len(text.splitlines()) < 200


def test_float32_torch_keeps_dtype(kernel_dir):
    arch, params, x = case(5, 2, (4,), 1, "sigmoid", 3)
    mod = diagramc.compile_jet(arch, 3, "torch", out_dir=kernel_dir)
    y = mod.jet([p.float() for p in params], x.float())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, mod.jet(params, x).float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "rule, value, slope, reference",
    [
        (("quadratic", (1.0, 0.0, -1.0)), np.tanh, lambda h: 1 - np.tanh(h) ** 2, "tanh"),
        (("integral", (0.0, 1.0, -1.0)), lambda h: np.logaddexp(0, h), lambda h: 1 / (1 + np.exp(-h)), "softplus"),
        (("harmonic", ()), np.sin, np.cos, "sin"),
        (("quadratic", (0.0, 1.0, 0.0)), np.exp, np.exp, "exp"),
    ],
)
def test_runtime_series_rules_against_mpmath(rule, value, slope, reference):
    """diagramc.runtime.jet_series alone (NumPy arrays), against mpmath's Taylor series of sigma(h(t))."""
    mpmath = pytest.importorskip("mpmath")
    from diagramc.runtime import jet_series

    h = [0.3, -0.7, 0.4, 0.25, -0.5, 0.1, 0.2]
    got = jet_series.series(rule, lambda z: (value(z), (slope(z),)), [np.array([c]) for c in h])
    sigma = {"tanh": mpmath.tanh, "sin": mpmath.sin, "exp": mpmath.exp,
             "softplus": lambda a: mpmath.log(1 + mpmath.exp(a))}[reference]
    with mpmath.workdps(30):
        expected = mpmath.taylor(lambda t: sigma(sum(c * t**k for k, c in enumerate(h))), 0, len(h) - 1)
    np.testing.assert_allclose([float(g[0]) for g in got], [float(e) for e in expected], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ["relu", "identity"])
def test_vertexless_activations(kernel_dir, activation):
    arch, params, x = case(6, 2, (4, 3), 2, activation, 3)
    mod = diagramc.compile_jet(arch, 3, "numpy", out_dir=kernel_dir)
    y = mod.jet([p.numpy() for p in params], x.numpy())
    np.testing.assert_allclose(y, reference_jet(params, activation, x).numpy(), rtol=1e-12, atol=1e-13)


def test_compile_jet_refuses_bad_requests(kernel_dir):
    arch = diagramc.Architecture((2, 3, 1), "tanh")
    with pytest.raises(diagramc.DiagramcError, match="backend"):
        diagramc.compile_jet(arch, 2, "jax", out_dir=kernel_dir)
    with pytest.raises(diagramc.DiagramcError, match="order"):
        diagramc.compile_jet(arch, -1, out_dir=kernel_dir)
    with pytest.raises(diagramc.DiagramcError, match="Architecture"):
        diagramc.compile_jet((2, 3, 1), 2, out_dir=kernel_dir)
