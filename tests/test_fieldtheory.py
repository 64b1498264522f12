"""diagramc.fieldtheory: exact correlators, Monte Carlo, Wick and contact diagrams, the quartic coupling."""
import json
import math

import numpy as np
import pytest

from diagramc import fieldtheory as ft
from diagramc.fieldtheory import coupling, demo
from diagramc.fieldtheory.diagrams import double_factorial

X6 = np.array([[-1.0], [-0.6], [-0.2], [0.2], [0.6], [1.0]])
X2D = np.array([[0.3, -0.5], [1.0, 0.2], [-0.7, 0.9]])
X3D = np.array([[0.0, 0.0, 0.0], [0.3, -0.5, 0.2], [1.0, 0.2, -0.4], [-0.2, 0.7, 0.5]])  # with the origin


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


# ------------------------------------------------------------------ diagrams

@pytest.mark.parametrize("n", range(1, 9))
def test_wick_counts_and_legs(n):
    found = ft.wick_diagrams(n)
    assert len(found) == (double_factorial(n - 1) if n % 2 == 0 else 0)
    assert len({d.pairs for d in found}) == len(found)
    for d in found:
        assert sorted(d.legs()) == list(range(1, n + 1))  # every external point exactly once


@pytest.mark.parametrize("n,count", [(2, 0), (3, 0), (4, 1), (5, 0), (6, 15), (8, 210)])
def test_contact_counts_and_legs(n, count):
    found = ft.contact_diagrams(n)
    assert len(found) == count
    if n % 2 == 0 and n >= 4:
        assert count == math.comb(n, 4) * double_factorial(n - 5)
    assert len({(d.vertex, d.pairs) for d in found}) == len(found)
    for d in found:
        assert sorted(d.legs()) == list(range(1, n + 1))  # no input named twice, none left out
        assert len(d.vertex) == 4 and d.multiplicity == 24


def test_diagram_printing():
    d = ft.contact_diagrams(6)[0]
    assert d.latex().startswith(r"-24\lambda \int")
    assert "K(x_{5}, x_{6})" in d.latex()
    e = d.expression()
    assert {str(s) for s in e.free_symbols} >= {"lambda", "x_5", "x_6", "Lambda"}
    w = ft.wick_diagrams(4)[0]
    assert str(w.expression()) == "K(x_1, x_2)*K(x_3, x_4)"
    assert json.loads(json.dumps(d.to_json()))["vertex"] == [1, 2, 3, 4]


# ------------------------------------------------------------------ moments and cumulants

def _random_tables(P, n, rng):
    return {k: rng.normal(size=len(ft.packed_tuples(P, k))) for k in range(1, n + 1)}


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_moments_cumulants_roundtrip(n):
    rng = np.random.default_rng(n)
    P = 3
    kappa = _random_tables(P, n, rng)
    moments = {k: ft.moments_from_cumulants(kappa, P, k) for k in range(1, n + 1)}
    back = ft.cumulants_from_moments(moments, P, n)
    np.testing.assert_allclose(back, kappa[n], rtol=1e-10, atol=1e-10)


def test_moments_of_scalar_gaussian_and_poisson():
    # one point: a Gaussian's moments are (n-1)!! s^(n/2); a Poisson's are the Bell polynomials (all cumulants 1)
    assert ft.moments_from_cumulants({2: np.array([2.0])}, 1, 6)[0] == pytest.approx(15 * 8)
    ones = {k: np.array([1.0]) for k in range(1, 7)}
    assert [ft.moments_from_cumulants(ones, 1, k)[0] for k in range(1, 7)] == [1, 2, 5, 15, 52, 203]


def test_gp_is_sum_over_wick_diagrams():
    net = ft.Ensemble("erf", 1, 4)
    K = ft.kernel(net, X6[:4])
    for n in (4, 6):
        tuples = ft.packed_tuples(4, n)
        total = sum(np.prod([K[tuples[:, a - 1], tuples[:, b - 1]] for a, b in d.pairs], axis=0)
                    for d in ft.wick_diagrams(n))
        np.testing.assert_allclose(ft.gp_correlators(net, X6[:4], n), total, rtol=1e-12)


# ------------------------------------------------------------------ exact correlators

@pytest.mark.parametrize("act,sb", [("relu", 0.0), ("relu", 1.0), ("erf", 1.0), ("erf", 0.0), ("gauss", 1.0)])
@pytest.mark.parametrize("X", [X6, X2D], ids=["d1", "d2"])
def test_kernel_closed_form_vs_quadrature(act, sb, X):
    net = ft.Ensemble(act, X.shape[1], 7, sigma_w=1.3, sigma_b=sb)
    assert rel(ft.kernel(net, X, method="quadrature"), ft.kernel(net, X)) < 1e-8


def test_kernel_closed_forms_as_written():
    x, y = 0.4, -0.9
    net = ft.Ensemble("erf", 1, 3, sigma_w=1.0, sigma_b=1.0)
    s = lambda a, b: 1 + a * b  # noqa: E731
    want = 1 + 2 / np.pi * np.arcsin(2 * s(x, y) / np.sqrt((1 + 2 * s(x, x)) * (1 + 2 * s(y, y))))
    assert ft.kernel(net, [[x], [y]])[0, 1] == pytest.approx(want, rel=1e-14)
    net = ft.Ensemble("gauss", 1, 3, sigma_w=1.5, sigma_b=0.5)
    assert ft.kernel(net, [[x], [y]])[0, 1] == pytest.approx(0.25 + 2.25 * np.exp(-2.25 * (x - y) ** 2 / 2), rel=1e-14)


@pytest.mark.parametrize("n", [4, 6])
def test_gauss_correlators_closed_form_vs_quadrature(n):
    net = ft.Ensemble("gauss", 1, 10, sigma_b=1.0)
    assert rel(ft.correlators(net, 0.5 * X6[:4], n, method="quadrature"), ft.correlators(net, 0.5 * X6[:4], n)) < 1e-8


@pytest.mark.parametrize("act,sb", [("relu", 1.0), ("erf", 1.0), ("gauss", 1.0), ("tanh", 0.5)])
def test_two_point_is_kernel_at_every_width(act, sb):
    K = ft.kernel(ft.Ensemble(act, 1, 1, sigma_b=sb), X6)
    t = ft.packed_tuples(6, 2)
    for width in (1, 3, 100):
        net = ft.Ensemble(act, 1, width, sigma_b=sb)
        np.testing.assert_allclose(ft.correlators(net, X6, 2), K[t[:, 0], t[:, 1]], rtol=1e-12)
        np.testing.assert_allclose(ft.connected(net, X6, 2), K[t[:, 0], t[:, 1]], rtol=1e-12)


def test_cumulants_scale_as_inverse_powers_of_width():
    net = ft.Ensemble("relu", 1, 5, sigma_b=1.0)
    c4, c6 = ft.connected(net, X6[:3], 4), ft.connected(net, X6[:3], 6)
    for width in (2, 40):
        other = net.with_width(width)
        np.testing.assert_allclose(ft.connected(other, X6[:3], 4) * width, c4 * 5, rtol=1e-12)
        np.testing.assert_allclose(ft.connected(other, X6[:3], 6) * width**2, c6 * 25, rtol=1e-12)
    assert np.all(ft.correlators(net, X6[:3], 5) == 0)


def test_relu_sphere_rule_matches_exact_rank_two_and_one_point():
    from diagramc.fieldtheory.kernels import _chi_moment, _relu_polar, _relu_sphere

    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    L2 = rng.normal(size=(4, 2))
    L3 = np.concatenate([L2, np.zeros((4, 1))], axis=1) @ rotation  # the same Gaussian, embedded in rank 3
    counts = np.array([[2, 0, 0, 0], [1, 1, 1, 1], [2, 1, 1, 0], [0, 3, 1, 2]])

    def moments(rule, L, r):
        w, v = rule(L)
        return np.array([_chi_moment(k, r) for k in counts.sum(1)]) * (w @ np.prod(v[:, None, :] ** counts, axis=2))

    assert rel(moments(_relu_sphere, L3, 3), moments(_relu_polar, L2, 2)) < 1e-12
    # one direction in rank 3: E[relu(a.z)^4] = |a|^4 E[z^4; z > 0] = 3 |a|^4 / 2
    a = rng.normal(size=(1, 3))
    w, v = _relu_sphere(a)
    assert _chi_moment(4, 3) * (w @ v[:, 0] ** 4) == pytest.approx(1.5 * np.sum(a**2) ** 2, rel=1e-12)


def test_relu_one_point_moments():
    # one input, no biases: f = sum_j W1_j relu(W0_j x); E[f^4] = 3 K^2 + kappa_4 in closed form
    net = ft.Ensemble("relu", 1, 4, sigma_w=1.0, sigma_b=0.0)
    x = 0.8
    K = x**2 / 2  # E[relu(u)^2] = s/2, s = x^2
    # N E[W1^4] E[relu^4] - 3 N E[W1^2]^2 E[relu^2]^2, E[W1^2] = 1/4, E[relu(u)^4] = 3 s^2 / 2
    kappa4 = 4 * (3 / 16) * (3 * x**4 / 2) - 3 * 4 * (1 / 16) * (x**2 / 2) ** 2
    assert ft.correlators(net, [[x]], 4)[0] == pytest.approx(3 * K**2 + kappa4, rel=1e-13)


# ------------------------------------------------------------------ Monte Carlo

@pytest.mark.parametrize("act,sb,X,width", [("relu", 0.0, X6 + 1.2, 3), ("relu", 1.0, X2D, 4), ("relu", 0.0, X3D, 3),
                                            ("erf", 1.0, X6[::2], 3)],
                         ids=["relu-sb0", "relu-sb1-d2", "relu-sb0-d3", "erf"])
def test_exact_matches_monte_carlo(act, sb, X, width):
    net = ft.Ensemble(act, X.shape[1], width, sigma_b=sb)
    for n in (2, 4, 6):
        mean, se = ft.sample_correlators(net, X, n, 20000, seed=3)
        exact = ft.correlators(net, X, n)
        zero = se == 0  # tuples with the origin and no biases: f(0) = b1 = 0 exactly
        assert np.all(exact[zero] == 0)
        z = (mean - exact)[~zero] / se[~zero]
        assert np.max(np.abs(z)) < 5, (n, np.max(np.abs(z)))


def test_wick_ordered_connected_four_point():
    net = ft.Ensemble("erf", 1, 3, sigma_b=1.0)
    X = X6[::2]
    mean, se = ft.sample_connected4(net, X, 20000, seed=5)
    assert np.max(np.abs(mean - ft.connected(net, X, 4)) / se) < 5
    _, plain_se = ft.sample_correlators(net, X, 4, 20000, seed=5)
    assert np.median(plain_se / se) > 1.5  # the Gaussian part of the noise is gone


def test_sampling_is_reproducible_and_odd_vanishes():
    net = ft.Ensemble("erf", 1, 2)
    a = ft.sample_correlators(net, X6[:2], 4, 500, seed=7)
    b = ft.sample_correlators(net, X6[:2], 4, 500, seed=7)
    np.testing.assert_array_equal(a[0], b[0])
    mean, se = ft.sample_correlators(net, X6[:2], 3, 20000, seed=1)
    assert np.all(np.abs(mean) < 5 * se)


# ------------------------------------------------------------------ the quartic coupling

def test_gauss_vertex_integral_closed_form_vs_quadrature():
    for d, X in ((1, 0.3 * X6[:4]), (2, 0.3 * X2D)):
        net = ft.Ensemble("gauss", d, 10, sigma_w=1.2, sigma_b=1.0)
        closed = ft.vertex_integrals(net, X, 2.5)
        nodes, w = coupling._box_rule(2.5, d, 1.0)
        V = coupling._vertex_lines(net, nodes, X)
        t = ft.packed_tuples(len(X), 4)
        quad = w @ (V[:, t[:, 0]] * V[:, t[:, 1]] * V[:, t[:, 2]] * V[:, t[:, 3]])
        assert rel(quad, closed) < 1e-8


def test_quartic_coupling_definition_and_fit():
    net = ft.Ensemble("relu", 1, 20, sigma_b=1.0)
    X = X6[:4] + 1.2
    lam = ft.quartic_coupling(net, X, 3.0)
    I = ft.vertex_integrals(net, X, 3.0)
    np.testing.assert_allclose(-24 * lam * I, ft.connected(net, X, 4), rtol=1e-12)
    fit = ft.fit_quartic_coupling(net, X, 3.0)
    value, spread = fit
    assert value == pytest.approx(-(ft.connected(net, X, 4) @ I) / (24 * I @ I))
    assert spread == pytest.approx(np.std(lam))
    # the first-order 4-point function with the fitted lambda: GP - 24 lambda I
    np.testing.assert_allclose(ft.first_order_correlators(net, X, 4, value, 3.0),
                               ft.gp_correlators(net, X, 4) - 24 * value * I, rtol=1e-12)


def test_relu_coupling_flow_and_six_point_gain():
    # no biases, positive inputs: K'(y, x) = (y x)_+ / 2, one lambda fits every tuple, lambda ~ cutoff^-5
    net = ft.Ensemble("relu", 1, 20, sigma_b=0.0)
    X = X6 + 1.2
    a, b = ft.fit_quartic_coupling(net, X, 1.0), ft.fit_quartic_coupling(net, X, 10.0)
    assert a.spread < 1e-12 * abs(a.value)
    assert math.log10(a.value / b.value) == pytest.approx(5.0, abs=1e-9)
    exact, free = ft.correlators(net, X, 6), ft.gp_correlators(net, X, 6)
    first = ft.first_order_correlators(net, X, 6, a.value, 1.0)
    assert np.mean(np.abs(first - exact) / exact) < 0.2 * np.mean(np.abs(free - exact) / exact)
    # where one lambda fits every 4-tuple, the 15 contact diagrams are exactly the 15 G_c^(4) K terms
    # of the 6-point function: only the connected 6-point function is left over
    np.testing.assert_allclose(first, exact - ft.connected(net, X, 6), rtol=1e-10)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("call,word", [
    (lambda: ft.Ensemble("relu", 0, 5), "inputs"),
    (lambda: ft.Ensemble("relu", 1, 0), "width"),
    (lambda: ft.Ensemble("relu", 1, 2.5), "width"),
    (lambda: ft.Ensemble("relu", 1, 5, sigma_w=-1), "sigma_w"),
    (lambda: ft.Ensemble("relu", 1, 5, sigma_b=float("nan")), "sigma_b"),
    (lambda: ft.Ensemble("nonsense(", 1, 5), "activation"),
    (lambda: ft.kernel(ft.Ensemble("relu", 2, 5), X6), "X"),
    (lambda: ft.kernel(ft.Ensemble("relu", 1, 5), [[float("inf")]]), "X"),
    (lambda: ft.correlators(ft.Ensemble("relu", 1, 5), X6, 0), "n"),
    (lambda: ft.correlators(ft.Ensemble("relu", 1, 5), X6, 11), "n"),
    (lambda: ft.sample_correlators(ft.Ensemble("relu", 1, 5), X6, 2, 1), "samples"),
    (lambda: ft.sample_correlators(ft.Ensemble("relu", 1, 5), X6, 2, 10, seed="a"), "seed"),
    (lambda: ft.quartic_coupling(ft.Ensemble("relu", 1, 5), X6, 0.0), "cutoff"),
    (lambda: ft.fit_quartic_coupling(ft.Ensemble("relu", 4, 5), np.ones((2, 4)), 1.0), "inputs"),
    (lambda: ft.kernel(ft.Ensemble("relu", 1, 5), X6, method="magic"), "method"),
    (lambda: ft.kernel("relu", X6), "net"),
    (lambda: ft.wick_diagrams(-2), "n"),
])
def test_bad_input_names_the_parameter(call, word):
    with pytest.raises(ValueError, match=rf"\b{word}\b"):
        call()


# ------------------------------------------------------------------ the demo and the command line

def test_demo_writes_its_report(tmp_path):
    cfg = demo.QftConfig(widths=(2, 4, 8), samples=3000, cutoffs=(1, 10), networks=("ReLU sb=0",))
    report = demo.run_qft_demo(tmp_path, config=cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coupling.png", "deviation.png", "report.json",
                                                          "report.md", "six_point.png"]
    saved = json.loads((tmp_path / "report.json").read_text())
    (study,) = saved["networks"]
    assert study["slopes"]["exact_dev4"] == pytest.approx(-1.0, abs=1e-9)
    assert study["slopes"]["exact_connected6"] == pytest.approx(-2.0, abs=1e-9)
    assert study["lambda_slopes"]["exact"] == pytest.approx(-5.0, abs=1e-6)
    assert report["full_demo_estimate_seconds"] > 0
    assert "gain" in (tmp_path / "report.md").read_text()


def test_cli_qft_demo_errors(tmp_path, capsys):
    from diagramc.cli import main

    target = tmp_path / "file"
    target.write_text("x")
    for out in (target, target / "below"):  # a file; a folder that cannot be made under a file
        assert main(["qft-demo", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("diagramc: error:") and "internal" not in err[0]
