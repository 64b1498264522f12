"""Vertex functions: the ODE-based derivatives equal sympy's plain ones; the parser runs no code."""
import math

import numpy as np
import pytest
import sympy as sp

from diagramc import DiagramcError
from diagramc.activations import ACTIVATIONS, get_activation, parse_expression, x


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivatives_match_direct_differentiation(name):
    act = get_activation(name)
    for k in range(0, 6):
        via_ode = act.derivative_in_x(k)
        direct = sp.diff(act.expr, x, k)
        for point in (-1.3, 0.4, 2.2):
            a = complex(via_ode.subs(x, point).evalf(30)).real
            b = complex(direct.subs(x, point).evalf(30)).real
            assert math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12), (name, k, point, a, b)


def test_tanh_derivatives_are_polynomials_in_the_sigmoid_and_its_complement():
    """tanh^(k) = 2^(k+1) sigma^(k)(2x): homogeneous in s = sigmoid(2x) and c = sigmoid(-2x),
    whose terms have one sign where tanh saturates (no 1 - tanh^2 cancellation)."""
    s, c = sp.Symbol("s", real=True, positive=True), sp.Symbol("c", real=True, positive=True)
    d4 = get_activation("tanh").derivative(4)
    assert d4.free_symbols == {s, c} and sp.Poly(d4, s, c).is_homogeneous and sp.Poly(d4, s, c).total_degree() == 5


@pytest.mark.parametrize("name", ["relu", "identity"])
def test_relu_and_identity_have_no_vertices(name):
    assert get_activation(name).vanishing_vertices(6)


def test_aliases_and_case():
    assert get_activation("Tanh") is ACTIVATIONS["tanh"]
    assert get_activation("swish") is ACTIVATIONS["silu"]


def test_custom_expression():
    act = get_activation("x*tanh(x) + 0.5*exp(-x**2)")
    assert act.is_custom
    assert sp.simplify(act.expr - (x * sp.tanh(x) + sp.exp(-(x**2)) / 2)) == 0
    f = sp.lambdify(x, act.derivative(3))
    h = 1e-3
    g = sp.lambdify(x, act.derivative(2))
    assert np.isclose(f(0.3), (g(0.3 + h) - g(0.3 - h)) / (2 * h), rtol=1e-5)


INJECTIONS = [
    "__import__('os').system('touch /tmp/diagramc_pwned')",
    "x.__class__",
    "(lambda: 1)()",
    "exec('1')",
    "eval('x')",
    "open('/etc/passwd')",
    "[x for x in ()]",
    "x if x else x",
    "x; import os",
    "tanh(x, x)",
    "tanh(x=1)",
    "sp.tanh(x)",
    "y + 1",
    "1 + 2",
    "x" * 600,
    "x @ x",
    "'x'",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_parser_refuses_anything_but_whitelisted_math(text, tmp_path):
    with pytest.raises(DiagramcError) as info:
        parse_expression(text)
    assert "\n" not in str(info.value)


def test_no_code_ran(tmp_path):
    import os

    for text in INJECTIONS:
        with pytest.raises(DiagramcError):
            get_activation(text)
    assert not os.path.exists("/tmp/diagramc_pwned")


def test_quadratic_equation_of_tanh_and_sigmoid_only():
    """sigma' = c0 + c1 sigma + c2 sigma^2 is recognised where sigma is its one auxiliary."""
    assert get_activation("tanh").quadratic_equation() == (1.0, 0.0, -1.0)
    assert get_activation("sigmoid").quadratic_equation() == (0.0, 1.0, -1.0)
    for name in ("softplus", "sin", "gelu", "silu", "identity", "relu", "tanh(x)", "x*tanh(x)"):
        assert get_activation(name).quadratic_equation() is None


@pytest.mark.parametrize("name", ["tanh", "sigmoid"])
def test_polynomials_in_value_give_the_derivatives(name):
    """sigma^(k)/k! as polynomials in sigma itself (exact algebra, from the equation) equal
    sympy's plain derivatives of sigma in x, at points of both signs."""
    act = get_activation(name)
    polynomials = act.polynomials_in_value(7)
    assert len(polynomials) == 7 and all(c is not None for c in polynomials)
    for point in (-1.7, 0.3, 2.5):
        u = float(act.expr.subs(x, point).evalf(30))
        for k, coefficients in enumerate(polynomials, start=1):
            want = float(sp.diff(act.expr, x, k).subs(x, point).evalf(30)) / math.factorial(k)
            assert sum(c * u**j for j, c in enumerate(coefficients)) == pytest.approx(want, rel=1e-12, abs=1e-14)


def test_no_vertex_polynomials_that_cancel():
    """The GPU's polynomials in u = sigma(z) cancel where sigma saturates (1 - u^2 at
    u = 1 - 1e-17): no named activation offers them, nor a custom one that is not sigma = u."""
    assert get_activation("x + x**2/4").vertex_polynomials(3) is None
    for name in sorted(ACTIVATIONS) + ["x*tanh(x)"]:
        assert get_activation(name).vertex_polynomials(4) is None, name
