"""diagramc.born: exact scattering length, Born terms and Born derivatives, cross-checked."""
import itertools
import math

import numpy as np
import pytest
import torch

from diagramc.born import born_approximation, born_derivatives, born_term, scattering_length
from diagramc.errors import DiagramcError
from diagramc.combinatorics.multi_index import factorial, of_order


def _K(N, R=1.0):
    """K_ij of BACKGROUND.md."""
    r = np.arange(N + 1) * R / N
    a = (r[1:] ** 3 - r[:-1] ** 3) / 3
    b = (r[1:] ** 2 - r[:-1] ** 2) / 2
    K = np.empty((N, N))
    for i in range(N):
        for j in range(N):
            if i < j:
                K[i, j] = a[i] * b[j]
            elif i > j:
                K[i, j] = a[j] * b[i]
            else:
                K[i, i] = 2 / 3 * ((r[i + 1] ** 5 - r[i] ** 5) / 5 - r[i] ** 3 * (r[i + 1] ** 2 - r[i] ** 2) / 2)
    return K


def _contract(U, N, order, R=1.0):
    """sum_{|alpha|=order} D^alpha a0(0) U^alpha / alpha! from born_derivatives."""
    D = born_derivatives(N, order, R)
    alphas = np.array(of_order(N, order))
    fact = np.array([factorial(a) for a in alphas], dtype=float)
    mono = np.prod(U[..., None, :] ** alphas, axis=-1)
    return mono @ (D / fact)


# ---------------------------------------------------------------- closed forms

@pytest.mark.parametrize("k", [1e-7, 0.05, 0.7, 1.3, 1.5, 3.0, 4.4])
@pytest.mark.parametrize("R", [1.0, 2.5])
@pytest.mark.parametrize("N", [1, 7, 64])
def test_square_well_attractive(k, R, N):
    U = np.full(N, -k * k / R**2)
    kk = k / R
    assert scattering_length(U, R) == pytest.approx(R - math.tan(kk * R) / kk, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("k", [1e-7, 0.05, 0.7, 3.0, 30.0, 3000.0])
@pytest.mark.parametrize("N", [1, 7, 64])
def test_square_well_repulsive(k, N):
    U = np.full(N, k * k)
    assert scattering_length(U) == pytest.approx(1.0 - math.tanh(k) / k, rel=1e-10, abs=1e-12)


def test_zero_potential_and_step_continuity():
    assert scattering_length(np.zeros(10)) == 0.0
    # The series branch and the closed form agree across the switch |U h^2| = 0.5.
    N = 4
    h2 = (1.0 / N) ** 2
    for z in (0.5 - 1e-12, 0.5 + 1e-12, -0.5 + 1e-12, -0.5 - 1e-12):
        U = np.array([0.1, z / h2, -0.2, 0.3])
        U2 = U.copy()
        U2[1] = (np.sign(z) * 0.5) / h2
        assert scattering_length(U) == pytest.approx(scattering_length(U2), rel=1e-9)


def test_constant_potential_born_terms_match_tangent_series():
    # a0 = R - tan(kR)/k, U = -k^2: a^(1) = U R^3/3, a^(2) = -2 U^2 R^5/15, a^(3) = 17 U^3 R^7/315
    for N in (1, 5, 64):
        for R in (1.0, 1.7):
            U = np.full(N, -0.3)
            assert born_term(U, 1, R) == pytest.approx(-0.3 * R**3 / 3, rel=1e-12)
            assert born_term(U, 2, R) == pytest.approx(-2 * 0.09 * R**5 / 15, rel=1e-12)
            assert born_term(U, 3, R) == pytest.approx(17 * (-0.027) * R**7 / 315, rel=1e-12)


def test_first_two_orders_against_background_formulas():
    N, R = 64, 1.0
    r = np.arange(N + 1) * R / N
    np.testing.assert_allclose(born_derivatives(N, 1), (r[1:] ** 3 - r[:-1] ** 3) / 3, rtol=1e-13, atol=0)
    K = _K(N, R)
    packed = np.array([-2 * K[i, j] for i, j in itertools.combinations_with_replacement(range(N), 2)])
    np.testing.assert_allclose(born_derivatives(N, 2), packed, rtol=1e-12, atol=1e-20)
    # The Born terms are the same quadratic forms.
    rng = np.random.default_rng(0)
    U = rng.normal(size=(5, N))
    np.testing.assert_allclose(born_term(U, 1), U @ ((r[1:] ** 3 - r[:-1] ** 3) / 3), rtol=1e-12)
    np.testing.assert_allclose(born_term(U, 2), -np.einsum("bi,ij,bj->b", U, K, U), rtol=1e-11)


def test_general_R_scaling():
    # a0 has dimension of length: a0(U / s^2, s R) = s a0(U, R).
    rng = np.random.default_rng(1)
    U = -rng.uniform(0, 2, size=(3, 9))
    s = 1.9
    np.testing.assert_allclose(scattering_length(U / s**2, s), s * scattering_length(U, 1.0), rtol=1e-12)
    np.testing.assert_allclose(born_derivatives(9, 2, R=s), s**5 * born_derivatives(9, 2), rtol=1e-12)


# ------------------------------------------------------------- cross-checks

def test_born_series_converges_to_a0():
    rng = np.random.default_rng(2)
    U = -0.6 * rng.uniform(0, 1, size=(6, 64)) + 0.2 * rng.normal(size=(6, 64))
    a0 = scattering_length(U)
    partial = np.zeros_like(a0)
    errs = []
    for k in range(1, 8):
        partial = partial + born_term(U, k)
        errs.append(np.abs(partial - a0).max())
    assert all(e2 < 0.3 * e1 for e1, e2 in zip(errs, errs[1:]))
    np.testing.assert_allclose(born_approximation(U, 7), partial, rtol=1e-13)
    np.testing.assert_allclose(born_approximation(U, 18), a0, atol=1e-14)


@pytest.mark.parametrize("N,order", [(64, 1), (64, 2), (8, 3), (5, 4), (3, 6)])
def test_born_term_matches_contracted_derivatives(N, order):
    rng = np.random.default_rng(order)
    U = rng.normal(size=(4, N))
    np.testing.assert_allclose(born_term(U, order), _contract(U, N, order), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_homogeneity(order):
    rng = np.random.default_rng(3)
    U = rng.normal(size=(3, 16))
    for c in (-2.0, 0.37, 5.0):
        np.testing.assert_allclose(born_term(c * U, order), c**order * born_term(U, order), rtol=1e-11)
    assert np.all(born_term(U, 0) == 0)


def _autograd_derivatives(N, order, R=1.0):
    """D^alpha a0(0) by nested torch autograd of scattering_length."""
    U = torch.zeros(N, dtype=torch.float64, requires_grad=True)
    out = {}
    grads = {(): scattering_length(U, R)}
    for k in range(1, order + 1):
        new = {}
        for t, g in grads.items():
            (gr,) = torch.autograd.grad(g, U, create_graph=True)
            for i in range(t[-1] if t else 0, N):
                new[t + (i,)] = gr[i]
        grads = new
    for t in itertools.combinations_with_replacement(range(N), order):
        out[t] = grads[t].item()
    return np.array([out[t] for t in itertools.combinations_with_replacement(range(N), order)])


@pytest.mark.parametrize("N,order", [(6, 1), (5, 2), (4, 3)])
def test_autograd_of_scattering_length_matches_born_derivatives(N, order):
    np.testing.assert_allclose(_autograd_derivatives(N, order), born_derivatives(N, order), rtol=1e-9, atol=1e-14)


def test_finite_differences_at_zero_match_born_derivatives():
    N = 64
    eps = 1e-4
    eye = np.eye(N)
    fd1 = (scattering_length(eps * eye) - scattering_length(-eps * eye)) / (2 * eps)
    np.testing.assert_allclose(fd1, born_derivatives(N, 1), rtol=1e-7)
    # a few second derivatives, diagonal and mixed
    D2 = dict(zip(itertools.combinations_with_replacement(range(N), 2), born_derivatives(N, 2)))
    e = 1e-3
    for i, j in [(0, 0), (5, 40), (63, 63), (10, 11), (30, 30)]:
        f = lambda a, b: scattering_length(a * e * eye[i] + b * e * eye[j])  # noqa: E731
        fd = (f(1, 1) - f(1, -1) - f(-1, 1) + f(-1, -1)) / (4 * e * e)
        assert fd == pytest.approx(D2[(i, j)], rel=1e-5)


def test_autograd_finite_away_from_zero_and_at_series_switch():
    U = torch.tensor([[0.0, -30.0, 40.0, 1e-9], [-0.5, 0.0, 5e3, 2.0]], dtype=torch.float64, requires_grad=True)
    a = scattering_length(U)
    a.sum().backward()
    assert torch.isfinite(U.grad).all()
    # gradient agrees with finite differences off zero
    U0 = np.array([-3.0, 2.0, -1.0, 0.5, 0.0, -7.0])
    Ut = torch.tensor(U0, requires_grad=True)
    (g,) = torch.autograd.grad(scattering_length(Ut), Ut)
    eps = 1e-6
    fd = [(scattering_length(U0 + eps * e) - scattering_length(U0 - eps * e)) / (2 * eps) for e in np.eye(6)]
    np.testing.assert_allclose(g.numpy(), fd, rtol=1e-6)


# ------------------------------------------------------------- kinds and shapes

def test_batch_shapes_and_kinds():
    rng = np.random.default_rng(4)
    U = -0.3 * rng.uniform(size=(2, 3, 12))
    a = scattering_length(U)
    assert isinstance(a, np.ndarray) and a.shape == (2, 3) and a.dtype == np.float64
    assert born_term(U, 2).shape == (2, 3)
    single = scattering_length(U[0, 0])
    assert np.ndim(single) == 0 and float(single) == pytest.approx(a[0, 0])
    assert scattering_length(U[0, 0].tolist()) == pytest.approx(a[0, 0])
    t = torch.tensor(U)
    at = scattering_length(t)
    assert isinstance(at, torch.Tensor) and at.shape == (2, 3) and at.dtype == torch.float64
    np.testing.assert_allclose(at.numpy(), a, rtol=1e-14)
    bt = born_term(t, 2)
    assert isinstance(bt, torch.Tensor)
    np.testing.assert_allclose(bt.numpy(), born_term(U, 2), rtol=1e-14)
    a32 = scattering_length(t.float())
    assert a32.dtype == torch.float32
    np.testing.assert_allclose(a32.numpy(), a, rtol=1e-4)
    assert born_term(t.float(), 1).dtype == torch.float32


def test_born_term_gradient_is_its_hessian_times_u():
    """a^(2)(U) = U^T H U / 2 with H the Hessian of a0 at 0 (born_derivatives, packed): its
    gradient is H U exactly, per row of a batch."""
    N = 8
    U = torch.randn(3, N, dtype=torch.float64, requires_grad=True)
    born_term(U, 2).sum().backward()
    H = np.zeros((N, N))
    for value, (i, j) in zip(born_derivatives(N, 2), itertools.combinations_with_replacement(range(N), 2)):
        H[i, j] = H[j, i] = value
    np.testing.assert_allclose(U.grad.numpy(), U.detach().numpy() @ H, rtol=1e-12, atol=1e-14)


def test_errors():
    with pytest.raises(DiagramcError):
        scattering_length(np.zeros(0))
    with pytest.raises(DiagramcError):
        scattering_length(1.0)
    with pytest.raises(DiagramcError):
        scattering_length(np.zeros(3), R=-1)
    with pytest.raises(DiagramcError):
        born_term(np.zeros(3), -1)
    with pytest.raises(DiagramcError):
        born_term(np.zeros(3), 1.5)
    with pytest.raises(DiagramcError):
        born_derivatives(0, 1)
    with pytest.raises(DiagramcError, match="entries"):
        born_derivatives(64, 6)
    assert born_derivatives(5, 0).tolist() == [0.0]
    assert born_derivatives(64, 3).shape == (math.comb(66, 3),)
