"""The per-diagram kernel and diagramc.contributions.

Each diagram's value from the generated kernel is checked against two independent
evaluations: the diagram's sympy expression with the numbers of a tiny network (widths
1 to 3) substituted, and the numpy tree contraction of Diagram.evaluate, both with
sigma^(k) taken by sympy from the plain expression of the activation (not the compiler's
auxiliary-function derivation). The sum over the diagrams is checked against nested
torch.func.jacfwd and against the Taylor kernel of diagramc.compile.
"""
from __future__ import annotations

import ast
import json
import re

import numpy as np
import pytest
import sympy
import torch

import diagramc
from diagramc.combinatorics import Diagram, count, diagrams
from diagramc.errors import DiagramcError

from .reference import random_params, reference_derivatives

from diagramc.compiler import contributions as contrib

_T = sympy.Symbol("t")
_PLAIN = {  # the activations as plain sympy expressions, differentiated by sympy alone
    "tanh": sympy.tanh(_T),
    "sigmoid": 1 / (1 + sympy.exp(-_T)),
    "sin": sympy.sin(_T),
    "softplus": sympy.log(1 + sympy.exp(_T)),
    "x*tanh(x)": _T * sympy.tanh(_T),
}


def plain_derivative(name):
    cache = {}

    def act(k, z):
        if k not in cache:
            cache[k] = sympy.lambdify(_T, sympy.diff(_PLAIN[name], _T, k), "numpy")
        return cache[k](z) + np.zeros_like(z)

    return act


def net(sizes, seed, batch=2):
    gen = torch.Generator().manual_seed(seed)
    params = random_params(sizes, gen)
    x = torch.randn(batch, sizes[0], generator=gen, dtype=torch.float64)
    return params, x


@pytest.fixture
def out_dir(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "contributions"


def _close(got, want, rtol=1e-10):
    got, want = np.asarray(got), np.asarray(want)
    scale = max(float(np.abs(want).max(initial=0.0)), 1.0)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


# ----------------------------------------------------------------------------- each diagram

TINY = [  # (layer sizes with widths 1..3, multi-index, activation): repeated variables throughout
    ((2, 3, 2, 1), (2, 1), "tanh"),
    ((1, 2, 3, 1), (3,), "sigmoid"),
    ((3, 1, 2, 2), (1, 1, 1), "sin"),
    ((2, 2, 1, 2, 1), (0, 4), "x*tanh(x)"),
    ((2, 3, 3, 1), (2, 2), "softplus"),
]


@pytest.mark.parametrize("sizes,alpha,act", TINY)
def test_each_diagram_equals_its_sympy_expression_and_tree_contraction(sizes, alpha, act, out_dir):
    params, x = net(sizes, seed=len(alpha) + sum(sizes), batch=1)
    p, xn = [t.numpy() for t in params], x.numpy()
    found = diagrams(alpha, len(sizes) - 2)
    module = contrib.compile_contributions(act, alpha, len(sizes) - 2, out_dir)
    values = module.values(p, xn)  # bare values
    assert values.shape == (1, sizes[-1], len(found))
    sigma = plain_derivative(act)
    for i, d in enumerate(found):
        _close(values[:, :, i], d.evaluate(p, xn, sigma))
        if d.order <= 4 or i % 3 == 0:  # expanding the sums symbolically is slow: a sample at order 4
            _close(values[:, :, i], d.evaluate(p, xn, sigma, method="sympy"), rtol=1e-9)
    # and each contribution is its diagram's value times its multiplicity
    _close(module.contributions(p, xn), values * np.array([d.multiplicity for d in found]))
    assert module.MULTIPLICITIES == tuple(d.multiplicity for d in found)


# ----------------------------------------------------------------------------- the sum

SUMS = [
    ((3, 4, 3, 5, 2), (0, 0, 4), "tanh"),  # 14 diagrams, one variable four times
    ((3, 4, 3, 5, 2), (2, 0, 1), "gelu"),
    ((2, 3, 4, 1), (3, 1), "silu"),
    ((2, 5, 2), (1, 2), "softplus"),
    ((2, 3, 3, 2, 3, 1), (1, 1), "sigmoid"),
    ((1, 3, 2, 1), (5,), "sin"),
    ((2, 3, 3, 1), (2, 1), "exp(-x**2)*x + sin(2*x)/3"),
]


@pytest.mark.parametrize("sizes,alpha,act", SUMS)
def test_contributions_sum_to_the_derivative(sizes, alpha, act, out_dir):
    params, x = net(sizes, seed=sum(alpha) * 7 + len(sizes))
    arch = diagramc.Architecture(sizes, act)
    got = diagramc.contributions(arch, [t.numpy() for t in params], x.numpy(), alpha, out_dir=out_dir)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    assert got.shape == (2, sizes[-1], len(diagramc.diagrams(alpha, arch.hidden_layers)))
    want = reference_derivatives(params, x, act, [alpha])[..., 0]
    _close(got.sum(-1), want.numpy(), rtol=1e-9)


def test_sum_agrees_with_the_taylor_kernel(out_dir):
    sizes, alpha = (3, 4, 3, 4, 2), (1, 0, 3)
    params, x = net(sizes, seed=3)
    arch = diagramc.Architecture(sizes, "tanh")
    mod = diagramc.compile(arch, 4, "numpy", multi_indices=[alpha], out_dir=out_dir)
    p = [t.numpy() for t in params]
    got = diagramc.contributions(arch, p, x.numpy(), alpha, out_dir=out_dir).sum(-1)
    _close(got, mod.derivatives(p, x.numpy())[..., 0], rtol=1e-9)


def test_torch_in_torch_out_numpy_in_numpy_out(out_dir):
    sizes, alpha = (2, 3, 3, 2), (1, 2)
    params, x = net(sizes, seed=5)
    arch = diagramc.Architecture(sizes, "tanh")
    params = [p.requires_grad_() for p in params]
    got = diagramc.contributions(arch, params, x, alpha, out_dir=out_dir)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64 and got.device == x.device
    want = diagramc.contributions(arch, [p.detach().numpy() for p in params], x.numpy(), alpha, out_dir=out_dir)
    assert isinstance(want, np.ndarray)
    np.testing.assert_array_equal(got.numpy(), want)
    # float32 stays float32, a single point gives (m, diagrams)
    single = diagramc.contributions(arch, [p.detach().float() for p in params], x[0].float(), alpha, out_dir=out_dir)
    assert single.dtype == torch.float32 and single.shape == (2, len(diagramc.diagrams(alpha, 2)))
    torch.testing.assert_close(single, got[0].float(), rtol=1e-4, atol=1e-5)


def test_low_orders_linear_networks_and_vanishing_vertices(out_dir):
    params, x = net((3, 2, 4, 2), seed=9)
    p, xn = [t.numpy() for t in params], x.numpy()
    arch = diagramc.Architecture((3, 2, 4, 2), "tanh")
    f = diagramc.contributions(arch, p, xn, (0, 0, 0), out_dir=out_dir)  # order 0: the output itself
    _close(f[..., 0], reference_derivatives(params, x, "tanh", [(0, 0, 0)])[..., 0].numpy())
    g = diagramc.contributions(arch, p, xn, (0, 1, 0), out_dir=out_dir)  # order 1: one input line
    _close(g[..., 0], reference_derivatives(params, x, "tanh", [(0, 1, 0)])[..., 0].numpy())
    # relu and identity: every diagram of order >= 2 vanishes, and says so in the kernel
    for act in ("relu", "identity"):
        c = diagramc.contributions(diagramc.Architecture((3, 2, 4, 2), act), p, xn, (1, 1, 0), out_dir=out_dir)
        assert c.shape == (2, 2, 2) and not c.any()
    source = open(contrib.compile_contributions("relu", (1, 1, 0), 2, out_dir).__file__).read()
    assert source.count("vanishes identically: the diagram is zero") == 2
    # no hidden layer: a linear network has no diagrams of order >= 2
    lin = diagramc.Architecture((3, 2), "tanh")
    lp = [np.ones((2, 3)), np.zeros(2)]
    assert diagramc.contributions(lin, lp, xn, (2, 0, 0), out_dir=out_dir).shape == (2, 2, 0)
    _close(diagramc.contributions(lin, lp, xn, (0, 0, 1), out_dir=out_dir), np.ones((2, 2, 1)))


# ----------------------------------------------------------------------------- the generated module


def test_generated_module_is_headed_standalone_and_deterministic(out_dir):
    module = contrib.compile_contributions("tanh", (0, 0, 4), 3, out_dir)
    source = open(module.__file__, encoding="utf-8").read()
    lines = source.splitlines()
    assert lines[0] == f"# Generated by diagramc {diagramc.__version__}. Do not edit: regenerate with"
    assert lines[1] == f"#   diagramc contributions --multi-index 0,0,4 --hidden-layers 3 --activation tanh -o {out_dir}"
    spec = contrib.ContributionSpec.create("tanh", (0, 0, 4), 3)
    assert lines[2] == f"# Inputs (sha256 {spec.digest}):" and json.loads(lines[3][4:])["multi_index"] == [0, 0, 4]
    imported = {a.name for node in ast.walk(ast.parse(source)) if isinstance(node, (ast.Import, ast.ImportFrom))
                for a in node.names} | {node.module for node in ast.walk(ast.parse(source))
                                         if isinstance(node, ast.ImportFrom)}
    assert imported <= {"math", "numpy", "diagramc.runtime", "check_module", "diagramc.runtime.arguments", "param_name"}  # numpy and diagramc's runtime only
    assert contrib.render(spec, str(out_dir)) == source  # the same request, the same bytes
    assert contrib.compile_contributions("tanh", (0, 0, 4), 3, out_dir) is module  # cached
    found = diagrams((0, 0, 4), 3)
    assert module.DIAGRAMS == tuple(d.short() for d in found)
    assert [Diagram.from_json({"root": json.loads(t)}, hidden_layers=3, inputs=3) for t in module.TREES] == found
    assert (module.INPUTS, module.HIDDEN_LAYERS, module.ACTIVATION, module.MULTI_INDEX) == (3, 3, "tanh", (0, 0, 4))
    # shared work: each distinct subtree is one vertex statement, each propagator one product
    subtrees = {v.key for d in found for v in d.vertices()}
    assert len(re.findall(r"^    v\d+ = ", source, flags=re.M)) == len(subtrees)
    assert re.findall(r"^    (P_\d_\d) = ", source, flags=re.M) == ["P_2_0", "P_3_0", "P_3_1", "P_4_1", "P_4_2"]
    assert "np.einsum(" in source


def test_an_edited_cached_module_is_rewritten(out_dir):
    module = contrib.compile_contributions("sin", (1, 1), 1, out_dir)
    with open(module.__file__, "a") as fh:
        fh.write("\nBROKEN = True\n")
    again = contrib.compile_contributions("sin", (1, 1), 1, out_dir)
    assert not hasattr(again, "BROKEN")


def test_generated_module_checks_shapes(out_dir):
    module = contrib.compile_contributions("tanh", (1, 1), 2, out_dir)
    params, x = net((2, 3, 3, 1), seed=1)
    p = [t.numpy() for t in params]
    with pytest.raises(ValueError, match=r"x has shape \(2, 3\); expected \(batch, 2\)"):
        module.values(p, np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"params\[2\] \(W2\)"):
        module.values(p[:2] + [np.zeros((3, 4))] + p[3:], x.numpy())
    with pytest.raises(ValueError, match="params has 4 arrays"):
        module.values(p[:4], x.numpy())


def test_api_errors_are_one_line(out_dir):
    arch = diagramc.Architecture((2, 3, 1), "tanh")
    params, x = net((2, 3, 1), seed=2)
    p = [t.numpy() for t in params]
    cases = [
        (lambda: diagramc.contributions(arch, p, x.numpy(), (1, 1, 0)), "3 entries; expected 2"),
        (lambda: diagramc.contributions(arch, p[:2], x.numpy(), (1, 1)), "params has 2 arrays"),
        (lambda: diagramc.contributions(arch, [p[0].T] + p[1:], x.numpy(), (1, 1)), r"params\[0\] \(W1\)"),
        (lambda: diagramc.contributions(arch, p, np.zeros((2, 5)), (1, 1)), r"x has shape \(2, 5\)"),
        (lambda: diagramc.contributions(arch, p, np.zeros((2, 2), dtype=int), (1, 1)), "floating-point"),
        (lambda: diagramc.contributions((2, 3, 1), p, x.numpy(), (1, 1)), "Architecture"),
        (lambda: contrib.compile_contributions("tanh", (1,) * 6, 4, out_dir), "12915 diagrams with 4 hidden layers"),
        (lambda: contrib.compile_contributions("tanh", (13,), 1, out_dir), "above the supported maximum"),
    ]
    for call, message in cases:
        with pytest.raises(DiagramcError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert count((1,) * 6, 4)[0] > contrib.MAX_DIAGRAMS


def test_ranked_rows():
    found = diagrams((2, 1), 2)
    rows = contrib.ranked(found, [1.0, -4.0, 2.0, 0.5])
    assert [r["index"] for r in rows] == [1, 2, 0, 3]
    assert rows[0]["share"] == pytest.approx(-4.0 / -0.5) and rows[1]["value"] == 1.0  # multiplicity 2
    assert contrib.ranked(found, [0.0] * 4)[0]["share"] is None
    table = contrib.format_table(contrib.ranked(found, [1.0, -4.0, 2.0, 0.5], top=2), -0.5)
    assert "sum (D^alpha f)" in table and table.count("\n") == 5
