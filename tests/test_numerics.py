"""Numerics: saturation, huge inputs, NaN/inf, high orders, float32 error growth."""
import functools
import math

import mpmath
import numpy as np
import pytest
import torch

import diagramc
from diagramc.combinatorics import multi_index as mi
from diagramc.activations import get_activation
from diagramc.compiler.printing import activation_code

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


# --- far out and saturated, per coefficient, against mpmath --------------------------------
# The reference is mpmath's own numerical differentiation (mpmath.diff, 60 digits) of the network
# written with mpmath's functions: nothing of diagramc's derivation. Every coefficient must lie
# within 1e-9 of it, relative to the largest coefficient of its order at that point, with an
# absolute floor of 1e-40 times the point's largest coefficient (float64 cannot hold the true
# values of fully saturated units, e^-40000, and the reference's own noise is far below the floor).
MP_ACTIVATIONS = {
    "tanh": mpmath.tanh,
    "sigmoid": lambda z: 1 / (1 + mpmath.exp(-z)),
    "softplus": lambda z: mpmath.log1p(mpmath.exp(z)),
    "sin": mpmath.sin,
    "gelu": lambda z: z * mpmath.erfc(-z / mpmath.sqrt(2)) / 2,
    "silu": lambda z: z / (1 + mpmath.exp(-z)),
    "identity": lambda z: z,
    "relu": lambda z: max(z, 0),
}
FAR_SIZES = (2, 5, 4, 1)


def _far_params():
    return random_params(FAR_SIZES, torch.Generator().manual_seed(1), scale=50.0)


def _far_points():
    """The issue's points, and two where a unit of layer 1 sits at z = -25 and z = 12 (its
    neighbours far out): the saturated units whose weights used to cancel."""
    W1, b1 = _far_params()[:2]
    d = torch.tensor([0.6, -0.8], dtype=torch.float64)
    points = [(30.0, -30.0), (-800.0, 700.0)]
    for z in (-25.0, 12.0):
        t = ((z - b1[0]) / (W1[0] @ d)).item()
        points.append(tuple((t * d).tolist()))
    return points


@functools.lru_cache(maxsize=None)
def _mpmath_coefficients(activation, point, order=4):
    """Taylor coefficients c_alpha, |alpha| <= order, canonical order, at 60 digits."""
    params = [p.tolist() for p in _far_params()]
    sigma = MP_ACTIVATIONS[activation]
    with mpmath.workdps(60):
        P = [mpmath.matrix(p) if isinstance(p[0], list) else mpmath.matrix(p) for p in params]

        def f(*xs):
            h = mpmath.matrix(list(xs))
            for l in range(0, len(P), 2):
                z = P[l] * h + P[l + 1]
                h = z if l == len(P) - 2 else z.apply(sigma)
            return h[0]

        return tuple(mpmath.diff(f, [mpmath.mpf(v) for v in point], a) / math.prod(map(math.factorial, a))
                     for a in mi.up_to_order(2, order))


def _check_against_mpmath(got, want, multi_indices):
    top = max(abs(v) for v in want)
    for k in sorted({sum(a) for a in multi_indices}):
        rows = [i for i, a in enumerate(multi_indices) if sum(a) == k]
        scale = max(max(abs(want[i]) for i in rows), mpmath.mpf(1e-40) * top)
        worst = max(abs(mpmath.mpf(got[i]) - want[i]) for i in rows) / scale
        assert worst <= 1e-9, (k, float(worst))


@pytest.mark.parametrize("activation", sorted(MP_ACTIVATIONS))
def test_far_out_and_saturated_coefficients_match_mpmath(activation, kernel_dir):
    """Weights of scale 50, points far out and near saturation, orders up to 4: every
    coefficient as mpmath has it (the issue's silu case came out as large as 86 where it is
    0), torch and NumPy alike. NumPy takes the inputs in big-endian byte order, so its
    NumPy-operations path runs (numba's scalar path prints the same weights:
    test_vertex_weights_far_out_per_backend; the fused one: test_no_overflow_far_out)."""
    arch = diagramc.Architecture(FAR_SIZES, activation)
    params = _far_params()
    for backend in ("torch", "numpy"):
        mod = diagramc.compile(arch, 4, backend, out_dir=kernel_dir)
        for point in _far_points():
            x = torch.tensor([point], dtype=torch.float64)
            with np.errstate(over="raise", invalid="raise", divide="raise"):
                if backend == "torch":
                    got = mod.taylor_coefficients(params, x)
                else:
                    got = mod.taylor_coefficients([p.numpy().astype(">f8") for p in params], x.numpy().astype(">f8"))
            got = np.asarray(got, dtype=np.float64)[0, 0].tolist()
            assert all(map(math.isfinite, got))
            _check_against_mpmath(got, _mpmath_coefficients(activation, point), list(mod.MULTI_INDICES))


@pytest.mark.parametrize("activation", ["silu", "gelu"])
def test_no_overflow_far_out(activation, kernel_dir):
    """The issue's case on NumPy's fused (numba) path: silu and gelu, 2-5-4-1, order 3."""
    mod = _kernel(kernel_dir, activation=activation, order=3, backend="numpy")
    params = _far_params()
    for point in _far_points():
        x = np.array([point])
        with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is fine
            got = mod.taylor_coefficients([p.numpy() for p in params], x)
        _check_against_mpmath(got[0, 0].tolist(), _mpmath_coefficients(activation, point)[: len(mod.MULTI_INDICES)],
                              list(mod.MULTI_INDICES))


FAR_Z = (-1e4, -800.0, -300.0, -100.0, -40.0, -25.0, -12.0, -2.9, -0.3, 0.3, 2.9, 12.0, 25.0, 40.0, 100.0, 300.0, 800.0, 1e4)


def _gelu_weights(z, n):
    """gelu^(k)(z)/k! in closed form: gelu^(k) = z Phi^(k) + k Phi^(k-1), Phi^(j) = (-1)^(j-1) He_(j-1) phi."""
    z = mpmath.mpf(z)
    phi, Phi = mpmath.npdf(z), mpmath.ncdf(z)

    def d_Phi(j):
        if j == 0:
            return Phi
        He = mpmath.hermite(j - 1, z / mpmath.sqrt(2)) / mpmath.mpf(2) ** (mpmath.mpf(j - 1) / 2)
        return (-1) ** (j - 1) * He * phi

    return [(z * d_Phi(k) + k * d_Phi(k - 1)) / math.factorial(k) for k in range(n + 1)]


def _mpmath_weights(activation, z, n=8):
    if activation == "gelu":
        with mpmath.workdps(60):
            return [float(c) for c in _gelu_weights(z, n)]
    # numerical differentiation's noise is 10^-digits of |sigma|: 360 digits far out
    with mpmath.workdps(60 if abs(z) < 50 else 360):
        return [float(c) for c in mpmath.taylor(MP_ACTIVATIONS[activation], mpmath.mpf(z), n, chop=False)]


@pytest.mark.parametrize("activation", sorted(MP_ACTIVATIONS))
def test_vertex_weights_far_out_per_backend(activation):
    """Each vertex weight sigma^(k)(z)/k!, k <= 8, as each backend's printed code computes it
    (NumPy, torch, numba's scalar loop run as plain Python), within 1e-11 of its own mpmath value
    for z from -1e4 to 1e4: no cancellation anywhere. Floors: 1e-300 (underflow), and 1e-14 of
    the largest weight of order >= 1 at that z (near a root of one weight, at moderate z)."""
    from .test_taylor_arith import run_code

    act = get_activation(activation)
    want = np.array([_mpmath_weights(activation, z) for z in FAR_Z])
    floor = 1e-14 * np.abs(want[:, 1:]).max(axis=1) + 1e-300
    for backend in ("numpy", "torch", "scalar"):
        code = activation_code(act, 8, backend)
        with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
            got = run_code(code, backend, np.array(FAR_Z))
        for k in range(9):
            column = np.zeros(len(FAR_Z)) if got[k] is None else np.asarray(got[k], dtype=float)
            err = np.abs(column - want[:, k])
            assert (err <= 1e-11 * np.abs(want[:, k]) + floor).all(), (backend, k, err, want[:, k])


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
    """Order 10 of a one-input network against its Taylor series by mpmath (40 digits, the
    network written with mpmath's tanh): a second where ten nested jacfwd took 26 s."""
    mod = _kernel(kernel_dir, sizes=(1, 4, 3, 1), order=10)
    params = random_params((1, 4, 3, 1), torch.Generator().manual_seed(3))
    x = torch.tensor([[0.3], [-0.7]], dtype=torch.float64)
    got = mod.derivatives(params, x)
    with mpmath.workdps(40):
        P = [mpmath.matrix(p.tolist()) for p in params]

        def f(t):
            h = mpmath.matrix([t])
            for l in range(0, len(P), 2):
                z = P[l] * h + P[l + 1]
                h = z if l == len(P) - 2 else z.apply(mpmath.tanh)
            return h[0]

        want = torch.tensor([[[float(c * math.factorial(k)) for k, c in enumerate(mpmath.taylor(f, mpmath.mpf(v), 10, chop=False))]]
                             for v in x[:, 0].tolist()], dtype=torch.float64)
    assert [a[0] for a in mod.MULTI_INDICES] == list(range(11))
    rel = ((got - want).norm(dim=(0, 1)) / want.norm(dim=(0, 1)).clamp(min=1e-300))
    assert rel.max() < 1e-9, rel
    assert mod._KERNEL._FACTORIALS[-1] == math.factorial(10)


def test_float32_error_grows_mildly_with_order(kernel_dir):
    """Relative error of float32 against float64, per order: documented in the README.
    Measured (seeds 4-6): 1.2e-7..4.8e-7 at order 0, 4.2e-7..5.5e-7 at order 5 (a few float32
    epsilons); the bound is 1e-6 at order 0 growing to 2e-6 at order 5."""
    sizes = (3, 32, 32, 32, 1)
    mod = _kernel(kernel_dir, sizes=sizes, order=5)
    params = random_params(sizes, torch.Generator().manual_seed(4))
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    d64 = mod.derivatives(params, x)
    d32 = mod.derivatives([p.float() for p in params], x.float()).double()
    orders = torch.tensor([sum(a) for a in mod.MULTI_INDICES])
    errors = [((d32 - d64)[..., orders == k].norm() / d64[..., orders == k].norm()).item() for k in range(6)]
    assert all(e < 1e-6 * (1 + k / 5) for k, e in enumerate(errors)), errors
    assert mi.up_to_order(3, 5) == list(mod.MULTI_INDICES)
