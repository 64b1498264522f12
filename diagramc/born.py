"""Zero-energy S-wave scattering and the Born series (CONTRACT.md section 7).

Units ``hbar = 2 mu = 1``. The potential is piecewise constant: ``U_i`` on
``[(i-1) R/N, i R/N)``, ``i = 1..N``, zero beyond ``R``. The zero-energy solution of
``u'' = U u`` with ``u(0) = 0`` behaves as ``r - a0`` beyond ``R``, so
``a0 = R - u(R)/u'(R)``.

Across one step of width ``h`` with constant ``U`` the state ``(u, u')`` is mapped by

    M(U) = [[C(z),       h S(z)],        z = U h^2,
            [U h S(z),   C(z)  ]]        C(z) = sum_n z^n/(2n)!,  S(z) = sum_n z^n/(2n+1)!

(``C = cosh sqrt z``, ``S = sinh sqrt z / sqrt z`` for ``z > 0``; ``cos`` / ``sin`` for
``z < 0``). Everything here follows from that one matrix:

- ``scattering_length`` multiplies the exact matrices (series for small ``|z|``, so
  ``U -> 0`` is smooth and differentiable; the exponential growth of repulsive steps
  is scaled out, since ``a0`` only depends on a ratio), in coordinates ``(r u' - u, u')``
  in which a free step is the identity, so weak potentials lose no precision.
- ``born_term`` replaces ``U`` by ``lambda U``, carries the state as a polynomial in
  ``lambda`` truncated at the requested order (each step's matrix is the power series
  above, exact), and reads off the ``lambda^k`` coefficient of ``R - u/u'``: the
  degree-``k`` homogeneous part of ``a0``, i.e. the ``k``-th Born term, exactly.
- ``born_derivatives`` does the same per monomial: the coefficient of ``U^alpha`` in the
  final state is a product of one power-series coefficient matrix per cell of ``alpha``
  with free propagation in between; a multivariate series division gives the
  coefficient of ``U^alpha`` in ``a0``, and ``D^alpha a0(0) = alpha! * coefficient``.
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import torch

from .errors import DiagramcError
from .combinatorics.multi_index import count_of_order

__all__ = ["scattering_length", "born_term", "born_derivatives", "born_approximation"]

# |z| below this uses the power series of C and S (terms up to z^9: error < 1e-20).
_SERIES_BELOW = 0.5
_SERIES_TERMS = 10
# born_derivatives refuses to build more entries than this (memory and time).
_MAX_DERIVATIVE_ENTRIES = 2_000_000


# ----------------------------------------------------------------------------- inputs

def _as_tensor(U, name="U"):
    """(tensor, was_numpy): numpy/list input becomes a float64 tensor."""
    if isinstance(U, torch.Tensor):
        t = U
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        was_numpy = False
    else:
        try:
            arr = np.asarray(U, dtype=np.float64)
        except (TypeError, ValueError):
            raise DiagramcError(f"{name} must be an array of real numbers (shape (..., N))") from None
        t = torch.from_numpy(arr)
        was_numpy = True
    if t.dim() == 0 or t.shape[-1] == 0:
        raise DiagramcError(
            f"{name} must have shape (..., N) with N >= 1 step values; got shape {tuple(t.shape)}"
        )
    return t, was_numpy


def _check_R(R):
    try:
        R = float(R)
    except (TypeError, ValueError):
        raise DiagramcError(f"R must be a positive number; got {R!r}") from None
    if not (R > 0 and math.isfinite(R)):
        raise DiagramcError(f"R must be a positive finite number; got {R!r}")
    return R


def _check_order(order, name="order"):
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
        raise DiagramcError(f"{name} must be a non-negative integer; got {order!r}")
    return int(order)


def _back(t, was_numpy):
    if not was_numpy:
        return t
    out = t.detach().cpu().numpy()
    return out[()] if out.ndim == 0 else out


# ------------------------------------------------------------------ exact a0(U)

def _step_functions(z):
    """C(z), S(z) and C(z) - S(z), all scaled by one common positive factor per element.

    The factor (``e^{-sqrt z}`` for ``z > 0``, else 1) cancels in ``a0``, which only
    depends on the ratio of the state's components; it keeps strong repulsive steps finite.
    """
    small = z.abs() < _SERIES_BELOW
    # Series branch (exact near 0, smooth, differentiable to any order).
    zs = torch.where(small, z, torch.zeros_like(z))
    c_ser = torch.zeros_like(z)
    s_ser = torch.zeros_like(z)
    d_ser = torch.zeros_like(z)
    term = torch.ones_like(z)
    for n in range(_SERIES_TERMS):
        c_ser = c_ser + term / math.factorial(2 * n)
        s_ser = s_ser + term / math.factorial(2 * n + 1)
        if n:
            d_ser = d_ser + term * (2 * n / math.factorial(2 * n + 1))
        term = term * zs
    # Closed-form branch, on a dummy value where the series is used (keeps gradients finite).
    zl = torch.where(small, torch.ones_like(z), z)
    s = zl.abs().sqrt()
    pos = zl > 0
    e = torch.exp(-2 * s)  # cosh s = e^s (1 + e^{-2s})/2: drop the common factor e^s
    c_pos, s_pos = (1 + e) / 2, (1 - e) / (2 * s)
    c_neg, s_neg = torch.cos(s), torch.sin(s) / s
    c_cl = torch.where(pos, c_pos, c_neg)
    s_cl = torch.where(pos, s_pos, s_neg)
    return (
        torch.where(small, c_ser, c_cl),
        torch.where(small, s_ser, s_cl),
        torch.where(small, d_ser, c_cl - s_cl),
    )


def scattering_length(U, R=1.0):
    """Exact zero-energy scattering length ``a0`` of the step potential ``U`` (..., N) -> (...).

    numpy (or list) input gives numpy float64 output; a torch tensor gives a tensor of
    its dtype and device, differentiable (to any order) with respect to ``U``.
    Near a zero-energy bound state ``u'(R) -> 0`` and ``a0`` diverges, as it should.

    The state is carried as ``(w, u')`` with ``w = r u' - u`` (the Wronskian with the free
    solution ``r``), so ``a0 = w(R)/u'(R)`` without the cancellation in ``R - u/u'``: a
    free step is the identity and ``a0`` keeps full relative precision for weak ``U``.
    In these coordinates a step ``[r0, r1)`` of width ``h`` maps ``(w, u')`` by
    ``[[C - r1 U h S, h (C - S) + r0 r1 U h S], [-U h S, C + r0 U h S]]``.
    """
    t, was_numpy = _as_tensor(U)
    R = _check_R(R)
    N = t.shape[-1]
    h = R / N
    w = torch.zeros(t.shape[:-1], dtype=t.dtype, device=t.device)
    du = torch.ones_like(w)
    for i in range(N):
        r0, r1 = i * h, (i + 1) * h
        Ui = t[..., i]
        C, S, D = _step_functions(Ui * (h * h))
        UhS = Ui * h * S
        w, du = (C - r1 * UhS) * w + (h * D + r0 * r1 * UhS) * du, -UhS * w + (C + r0 * UhS) * du
        # a0 depends on w/u' only: keep the state of order one.
        norm = w.abs() + du.abs()
        norm = torch.where(norm > 0, norm, torch.ones_like(norm)).detach()
        w, du = w / norm, du / norm
    return _back(w / du, was_numpy)


# ------------------------------------------------------------- Born terms a^(k)(U)

def _series_coefficients(Ui, h, K):
    """Coefficient matrices of lambda^n, n = 0..K, of one step's M(lambda U_i)."""
    c, s, t = [], [], []
    for n in range(K + 1):
        p = Ui ** n if n else torch.ones_like(Ui)
        c.append(p * (h ** (2 * n) / math.factorial(2 * n)))
        s.append(p * (h ** (2 * n + 1) / math.factorial(2 * n + 1)))
        t.append(p * (h ** (2 * n - 1) / math.factorial(2 * n - 1)) if n else torch.zeros_like(Ui))
    return c, s, t


def born_series(t, R, K):
    """Coefficients [a^(0), ..., a^(K)] of a0(lambda U) for a tensor t (..., N)."""
    N = t.shape[-1]
    h = R / N
    zero = torch.zeros(t.shape[:-1], dtype=t.dtype, device=t.device)
    u = [zero] * (K + 1)
    du = [zero + 1] + [zero] * K
    for i in range(N):
        c, s, tt = _series_coefficients(t[..., i], h, K)
        nu, ndu = [], []
        for n in range(K + 1):
            a = zero
            b = zero
            for m in range(n + 1):
                a = a + c[m] * u[n - m] + s[m] * du[n - m]
                b = b + tt[m] * u[n - m] + c[m] * du[n - m]
            nu.append(a)
            ndu.append(b)
        u, du = nu, ndu
    # q = u/u' as a series (du[0] == 1 exactly); a0 = R - q.
    q = []
    for n in range(K + 1):
        acc = u[n]
        for m in range(1, n + 1):
            acc = acc - du[m] * q[n - m]
        q.append(acc / du[0])
    return [zero] + [-qn for qn in q[1:]]


def born_term(U, order, R=1.0):
    """The ``order``-th Born term ``a^(order)(U)``: (..., N) -> (...), exact for step potentials.

    It is the homogeneous part of degree ``order`` of ``a0(U)``:
    ``a^(k)(U) = sum_{|alpha| = k} D^alpha a0(0) U^alpha / alpha!``, so
    ``born_term(c * U, k) == c**k * born_term(U, k)``; ``a^(0) = 0``.
    """
    order = _check_order(order)
    t, was_numpy = _as_tensor(U)
    R = _check_R(R)
    return _back(born_series(t, R, order)[order], was_numpy)


def born_approximation(U, order, R=1.0):
    """The Born approximation of ``order``: ``a^(1)(U) + ... + a^(order)(U)``."""
    order = _check_order(order)
    t, was_numpy = _as_tensor(U)
    R = _check_R(R)
    terms = born_series(t, R, order)
    return _back(sum(terms[1:], terms[0]), was_numpy)


# ------------------------------------------------------- derivatives at U = 0

def _coefficient_matrix(n, h):
    """Coefficient of U^n in one step's transfer matrix M(U), as a 2x2 tuple."""
    c = h ** (2 * n) / math.factorial(2 * n)
    s = h ** (2 * n + 1) / math.factorial(2 * n + 1)
    t = h ** (2 * n - 1) / math.factorial(2 * n - 1) if n else 0.0
    return c, s, t


def _sub_multisets(counts):
    """All non-empty sub-multisets of a multiset given as {cell: multiplicity}."""
    cells = sorted(counts)
    for exps in itertools.product(*(range(counts[c] + 1) for c in cells)):
        if any(exps):
            yield tuple(c for c, e in zip(cells, exps) for _ in range(e))


@functools.lru_cache(maxsize=16)
def _derivatives_cached(N, order, R):
    h = R / N
    r = [i * h for i in range(N + 1)]  # cell i (0-based) is [r[i], r[i+1])
    # w[t]: coefficient of U^t in the state (u, u') just after the last cell of t,
    # t a sorted tuple of 0-based cells (a multiset).
    w = {}
    # u'(R) and u(R) coefficients; q = u/u' coefficients.
    du_R = {(): 1.0}
    q = {(): R}
    for k in range(1, order + 1):
        for t in itertools.combinations_with_replacement(range(N), k):
            j = t[-1]
            a = t.count(j)  # multiplicity of the last cell
            head = t[: k - a]
            if head:
                wu, wdu = w[head]
                wu = wu + (r[j] - r[head[-1] + 1]) * wdu
            else:
                wu, wdu = r[j], 1.0
            c, s, tt = _coefficient_matrix(a, h)
            nu, ndu = c * wu + s * wdu, tt * wu + c * wdu
            if k < order:
                w[t] = (nu, ndu)
            uR = nu + (R - r[j + 1]) * ndu
            du_R[t] = ndu
            # Series division: q_t = u_t - sum_{0 < b <= t} u'_b q_{t - b}   (u'_0 = 1)
            counts = {}
            for cell in t:
                counts[cell] = counts.get(cell, 0) + 1
            acc = uR
            for b in _sub_multisets(counts):
                rest = list(t)
                for cell in b:
                    rest.remove(cell)
                acc -= du_R[b] * q[tuple(rest)]
            q[t] = acc
    out = np.empty(count_of_order(N, order), dtype=np.float64)
    for pos, t in enumerate(itertools.combinations_with_replacement(range(N), order)):
        alpha_fact = math.prod(math.factorial(t.count(c)) for c in set(t))
        out[pos] = -alpha_fact * q[t] if order else 0.0
    out.setflags(write=False)
    return out


def born_derivatives(N, order, R=1.0):
    """``D^alpha a0`` at ``U = 0`` for every ``|alpha| = order``, canonical order (float64 vector).

    The entries follow ``diagramc.multi_index.of_order(N, order)``. Order 1 gives
    ``(r_i^3 - r_{i-1}^3)/3``; order 2 gives ``-2 K_ij``. Any order is exact; the
    number of entries is ``C(N + order - 1, order)`` (45 760 for N = 64, order 3).
    """
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise DiagramcError(f"N must be a positive integer number of steps; got {N!r}")
    order = _check_order(order)
    R = _check_R(R)
    entries = count_of_order(int(N), order)
    if entries > _MAX_DERIVATIVE_ENTRIES:
        raise DiagramcError(
            f"born_derivatives(N={N}, order={order}) would hold {entries} entries; "
            f"at most {_MAX_DERIVATIVE_ENTRIES} are supported (use born_term for the contracted term)"
        )
    if order == 0:
        return np.zeros(1)
    return _derivatives_cached(int(N), order, R).copy()
