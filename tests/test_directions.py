"""The Taylor kernel by directions: univariate series along the order-n multi-indices, then
exact interpolation (runtime.taylor_directions, runtime.interpolation), against nested
torch.func.jacfwd, and the plan's choice between it and the products."""
from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch

import diagramc
from diagramc.combinatorics import multi_index as mi
from diagramc.compiler.plan import make_plan, _backend_class
from diagramc.compiler.spec import KernelSpec
from diagramc.errors import DiagramcError
from diagramc.runtime import interpolation

from .reference import random_params, reference_derivatives


# ----------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize("d,n", [(1, 3), (2, 1), (2, 4), (3, 3), (3, 5), (4, 2)])
def test_interpolation_inverts_the_directional_coefficients_exactly(d, n):
    """Along direction j, coefficient k of f is c_k(j) = sum_(|i| = k) D^i f / i! j^i; gamma must
    give back every D^i f: gamma V = diag(i!) with V[j, i] = j^i, in exact rationals."""
    directions = interpolation.directions(d, n)
    assert len(directions) == math.comb(d + n - 1, n) and all(sum(j) == n for j in directions)
    for k in range(1, n + 1):
        alphas = interpolation.multi_indices(d, k)
        gamma = interpolation.exact_matrix(d, n, k)
        V = [[math.prod(Fraction(j[m]) ** a[m] for m in range(d)) for a in alphas] for j in directions]
        for r, alpha in enumerate(alphas):
            for c, beta in enumerate(alphas):
                entry = sum(gamma[r][t] * V[t][c] for t in range(len(directions)))
                assert entry == (math.prod(map(math.factorial, alpha)) if r == c else 0), (k, alpha, beta)


def test_interpolation_matrix_as_floats_and_in_the_canonical_order():
    assert interpolation.multi_indices(3, 2) == tuple(mi.of_order(3, 2))
    exact = interpolation.exact_matrix(2, 4, 3)
    assert np.array_equal(interpolation.matrix(2, 4, 3), np.array([[float(g) for g in row] for row in exact]))
    # zero unless supp(j) lies within supp(i): the pure x_0 derivative reads the direction (n, 0) alone
    assert np.count_nonzero(interpolation.matrix(2, 4, 3)[0]) == 1


@pytest.mark.parametrize("d,n", [(2, 8), (3, 5), (4, 4), (8, 4)])
def test_pushed_directions_determine_the_others(d, n):
    """Order k along the first pushed[k-1] directions gives it along the rest: expand V_first = V_rest,
    V[j, i] = j^i (a homogeneous polynomial of degree k in the direction)."""
    order, pushed, expand = interpolation.pushed_directions(d, n)
    assert sorted(order) == list(range(math.comb(d + n - 1, n)))
    directions = [interpolation.directions(d, n)[c] for c in order]
    from diagramc.runtime.taylor_directions import pushed_counts
    assert pushed == pushed_counts(d, n)
    for k in range(1, n):
        V = np.array(interpolation._powers(directions, interpolation.multi_indices(d, k)), dtype=np.float64)
        p = pushed[k - 1]
        assert p == min(len(interpolation.multi_indices(d, k)) if len(interpolation.multi_indices(d, k)) <= interpolation.MAX_PUSHED else len(directions), len(directions))
        if expand[k - 1] is None:
            assert p == len(directions)
            continue
        np.testing.assert_allclose(expand[k - 1] @ V[:p], V[p:], rtol=1e-12, atol=1e-12 * np.abs(V).max())


def test_interpolation_growth_stays_small_where_the_plan_may_choose_directions():
    assert interpolation.growth(1, 8) == 1.0
    assert 100 < interpolation.growth(2, 8) < 1000  # about 2.5 digits lost at (2, 8)
    assert interpolation.growth(4, 5) < 200


# ----------------------------------------------------------------------------- kernels against jacfwd


def _case(seed, activation, d, order, hidden=None, outputs=None, batch=3):
    rng = random.Random(seed)
    hidden = hidden if hidden is not None else rng.randint(1, 3)
    sizes = (d,) + tuple(rng.randint(2, 6) for _ in range(hidden)) + (outputs or rng.randint(1, 2),)
    gen = torch.Generator().manual_seed(seed)
    params = random_params(sizes, gen)
    x = torch.randn(batch, d, generator=gen, dtype=torch.float64)  # non-zero expansion points
    return diagramc.Architecture(sizes, activation), params, x


def _evaluate(mod, params, x, backend, coefficients=False):
    call = mod.taylor_coefficients if coefficients else mod.derivatives
    if backend == "numpy":
        got = call([p.numpy() for p in params], x.numpy())
        assert isinstance(got, np.ndarray) and got.dtype == x.numpy().dtype
        return torch.from_numpy(got)
    return call(params, x)


def _relative_errors(got, want, orders):
    """Per order, the largest error relative to that order's largest derivative."""
    errors = {}
    for k in sorted(set(orders)):
        cols = [c for c, o in enumerate(orders) if o == k]
        scale = want[..., cols].abs().max().clamp(min=1e-300)
        errors[k] = float((got[..., cols] - want[..., cols]).abs().max() / scale)
    return errors


CASES = [  # (activation, d, n): tanh and sigmoid by their equation, softplus, sin, and the vertex sum
    ("tanh", 2, 8), ("sigmoid", 3, 6), ("softplus", 4, 4), ("sin", 2, 6), ("gelu", 3, 5),
    ("exp(-x**2)*x + sin(2*x)/3", 2, 5), ("tanh", 1, 5), ("tanh", 4, 4),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("activation,d,order", CASES)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_directions_match_jacfwd(activation, d, order, seed, backend, kernel_dir):
    arch, params, x = _case(seed + 10 * d, activation, d, order)
    mod = diagramc.compile(arch, order, backend, out_dir=kernel_dir, strategy="directions")
    assert mod.PLAN["by_directions"]
    assert mod.MULTI_INDICES == tuple(mi.up_to_order(d, order))
    want = reference_derivatives(params, x, activation, mod.MULTI_INDICES)
    got = _evaluate(mod, params, x, backend)
    assert got.shape == (x.shape[0], arch.outputs, len(mod.MULTI_INDICES))
    errors = _relative_errors(got, want, [sum(a) for a in mod.MULTI_INDICES])
    assert max(errors.values()) < 1e-10, errors
    factorials = torch.tensor([float(math.prod(map(math.factorial, a))) for a in mod.MULTI_INDICES], dtype=torch.float64)
    scaled = _evaluate(mod, params, x, backend, coefficients=True) * factorials
    assert max(_relative_errors(scaled, got, [sum(a) for a in mod.MULTI_INDICES]).values()) < 1e-12


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_directions_and_products_agree_on_the_bench_network(backend, kernel_dir):
    """Both algorithms at (2, 8), 3 x 64 tanh: equal to float64's rounding (relative to each order)."""
    gen = torch.Generator().manual_seed(5)
    arch = diagramc.Architecture((2, 64, 64, 64, 1), "tanh")
    params = random_params(arch.layer_sizes, gen)
    x = torch.rand(16, 2, generator=gen, dtype=torch.float64) * 2 - 1
    by = {s: _evaluate(diagramc.compile(arch, 8, backend, out_dir=kernel_dir, strategy=s), params, x, backend)
          for s in ("products", "directions")}
    errors = _relative_errors(by["directions"], by["products"], [sum(a) for a in mi.up_to_order(2, 8)])
    assert max(errors.values()) < 1e-11, errors


def test_directions_torch_is_differentiable(kernel_dir):
    """Gradients through the directions kernel equal those through the products kernel."""
    arch, params, x = _case(3, "tanh", 2, 5, hidden=2, outputs=1)
    grads = {}
    for strategy in ("products", "directions"):
        mod = diagramc.compile(arch, 5, "torch", out_dir=kernel_dir, strategy=strategy)
        p = [q.clone().requires_grad_() for q in params]
        xx = x.clone().requires_grad_()
        (mod.derivatives(p, xx) ** 2).sum().backward()
        grads[strategy] = [q.grad for q in p] + [xx.grad]
    for a, b in zip(grads["products"], grads["directions"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_directions_float32_numpy(kernel_dir):
    arch, params, x = _case(4, "tanh", 2, 6)
    mod = diagramc.compile(arch, 6, "numpy", out_dir=kernel_dir, strategy="directions")
    want = reference_derivatives(params, x, "tanh", mod.MULTI_INDICES)
    got = mod.derivatives([p.numpy().astype(np.float32) for p in params], x.numpy().astype(np.float32))
    assert got.dtype == np.float32
    errors = _relative_errors(torch.from_numpy(got.astype(np.float64)), want, [sum(a) for a in mod.MULTI_INDICES])
    assert max(errors.values()) < 1e-3, errors


def test_empty_batch_and_order_one(kernel_dir):
    arch, params, x = _case(6, "sigmoid", 3, 1)
    for backend in ("numpy", "torch"):
        mod = diagramc.compile(arch, 1, backend, out_dir=kernel_dir, strategy="directions")
        want = reference_derivatives(params, x, "sigmoid", mod.MULTI_INDICES)
        torch.testing.assert_close(_evaluate(mod, params, x, backend), want, rtol=1e-12, atol=1e-12)
        assert _evaluate(mod, params, x[:0], backend).shape == (0, arch.outputs, len(mod.MULTI_INDICES))


# ----------------------------------------------------------------------------- the plan


def _bench_spec(d, order, backend, strategy=None):
    return KernelSpec.create(diagramc.Architecture((d, 64, 64, 64, 1), "tanh"), order, backend, strategy=strategy)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_plan_chooses_by_the_cost_model(backend):
    """Directions where the backend's factor times their multiply-adds is below the products'."""
    cls = _backend_class(backend)
    for d, order in [(2, 8), (4, 4), (4, 5), (8, 4), (16, 3), (3, 6)]:
        plan = make_plan(_bench_spec(d, order, backend))
        c = plan.choice
        assert plan.by_directions == (cls.DIRECTIONS_FACTOR * c["directions"] < c["products"]), (d, order)
        assert c["products"] == make_plan(_bench_spec(d, order, backend, "products")).multiply_adds["total"]
        assert c["directions"] == make_plan(_bench_spec(d, order, backend, "directions")).multiply_adds["total"]


def test_auto_choice_at_two_inputs_order_eight(kernel_dir):
    """At (2, 8) the torch kernel goes by directions; the NumPy kernel's fused products stay faster."""
    assert make_plan(_bench_spec(2, 8, "torch")).by_directions
    assert not make_plan(_bench_spec(2, 8, "numpy")).by_directions
    # the module the auto choice writes is the directions kernel, and it is right
    gen = torch.Generator().manual_seed(9)
    arch = diagramc.Architecture((2, 5, 4, 3, 1), "tanh")
    assert make_plan(KernelSpec.create(arch, 8, "torch")).by_directions
    mod = diagramc.compile(arch, 8, "torch", out_dir=kernel_dir)
    assert mod.PLAN["by_directions"]
    params = random_params(arch.layer_sizes, gen)
    x = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    want = reference_derivatives(params, x, "tanh", mod.MULTI_INDICES)
    errors = _relative_errors(mod.derivatives(params, x), want, [sum(a) for a in mod.MULTI_INDICES])
    assert max(errors.values()) < 1e-10, errors


def test_paper_case_and_small_orders_stay_with_the_products():
    for backend in ("numpy", "torch"):
        for d, order in [(64, 2), (64, 3), (2, 2)]:
            plan = make_plan(_bench_spec(d, order, backend))
            assert not plan.by_directions
            assert "by_directions" not in plan.runtime_plan()  # the products' modules as before


def test_plan_text_and_json_say_why():
    plan = make_plan(_bench_spec(2, 8, "torch"))
    text = plan.explain()
    assert "by directions" in text and "9 directions" in text and "DIRECTIONS_FACTOR" in text
    data = plan.to_json()
    assert data["algorithm"] == "directions" and data["directions"]["count"] == 9
    assert set(data["choice"]) == {"products", "directions", "factor", "growth"}
    products = make_plan(_bench_spec(2, 8, "numpy"))
    assert products.to_json()["algorithm"] == "products" and "algorithm: products" in products.explain()
    asked = make_plan(_bench_spec(2, 8, "numpy", "directions"))
    assert asked.by_directions and "as asked" in asked.explain()


def test_strategy_in_the_request():
    arch = diagramc.Architecture((2, 4, 1), "tanh")
    plain = KernelSpec.create(arch, 4, "numpy")
    assert "strategy" not in plain.description()  # hashes of requests without a strategy are unchanged
    asked = KernelSpec.create(arch, 4, "numpy", strategy="directions")
    assert asked.digest != plain.digest and "--strategy directions" in asked.command("out")
    with pytest.raises(DiagramcError, match="unknown strategy"):
        KernelSpec.create(arch, 4, "numpy", strategy="diagonal")
    with pytest.raises(DiagramcError, match="every multi-index"):
        KernelSpec.create(arch, 4, "numpy", multi_indices=[(1, 1)], strategy="directions")
    affine = diagramc.Architecture((2, 1), "tanh")
    with pytest.raises(DiagramcError, match="hidden layer"):
        KernelSpec.create(affine, 4, "numpy", strategy="directions")
    assert not make_plan(KernelSpec.create(affine, 4, "torch")).by_directions
