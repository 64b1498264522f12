"""The Gaussian-process kernel and the joint moments E[phi(u_1)^c_1 ... phi(u_m)^c_m].

``(u_1, .., u_m)`` are the pre-activations at m distinct inputs: a Gaussian vector with
covariance ``s(x_i, x_j) = sigma_b^2 + sigma_w^2 x_i . x_j / inputs`` of rank at most
``inputs + 1``. Closed forms: the ReLU arc-cosine and Erf arcsin kernels (two points), the
Gauss-net's log-linear integrals (any number of points). Otherwise quadrature in the rank of
the Gaussian: for ReLU (positively homogeneous) a closed-form radial moment times the mean over
directions, computed between the kinks in rank <= 3; else tensor Gauss-Hermite with a bounded
number of nodes.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .ensembles import check_points

MAX_NODES = 1 << 18  # bound on a tensor Gauss-Hermite grid
HERMITE_NODES = 160  # per dimension, when the bound allows
ARC_NODES = 40  # Gauss-Legendre nodes per arc between ReLU kinks (trigonometric polynomials)
_CHUNK = 1 << 22  # elements per temporary array


# ------------------------------------------------------------------ closed forms

def pair_moment(net, A, B):
    """E[phi(u(a)) phi(u(b))] for rows a of A and b of B, by closed forms: (len(A), len(B)).

    Returns None for activations without one.
    """
    sab = net.covariance(A, B)
    sa = net.self_covariance(A)[:, None]
    sb = net.self_covariance(B)[None, :]
    if net.activation == "gauss":
        return np.exp(sab - (sa + sb) / 2)
    if net.activation == "erf":
        arg = 2 * sab / np.sqrt((1 + 2 * sa) * (1 + 2 * sb))
        return (2 / np.pi) * np.arcsin(np.clip(arg, -1.0, 1.0))
    if net.activation == "relu":
        norm = np.sqrt(sa * sb)
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(norm > 0, sab / np.where(norm > 0, norm, 1.0), 1.0)
        th = np.arccos(np.clip(cos, -1.0, 1.0))
        return norm * (np.sin(th) + (np.pi - th) * np.cos(th)) / (2 * np.pi)
    return None


def gauss_moment(S, counts):
    """Gauss-net: E[prod_p phi_p^c_p] = exp(c.S.c/2 - sum_p c_p S_pp), exactly (exp is log-linear)."""
    c = np.asarray(counts, dtype=np.float64)
    return np.exp(0.5 * np.einsum("...i,ij,...j->...", c, S, c) - c @ np.diag(S))


def kernel(net, X, method="auto"):
    """The kernel K(x_i, x_j) = sigma_b^2 + sigma_w^2 E[phi phi]: the 2-point function at every width."""
    A = check_points(net, X)
    return net.sigma_b**2 + net.sigma_w**2 * pair_kernel_moment(net, A, A, method)


def pair_kernel_moment(net, A, B, method="auto"):
    """E[phi(u(a)) phi(u(b))] for all rows a, b; closed form where one exists, else quadrature."""
    if method not in ("auto", "quadrature"):
        raise ValueError(f"method must be 'auto' or 'quadrature', got {method!r}")
    if method == "auto":
        closed = pair_moment(net, A, B)
        if closed is not None:
            return closed
    if A is B or (A.shape == B.shape and np.array_equal(A, B)):
        from .exact import packed_tuples, phi_moments

        # one quadrature for all pairs: the Gaussian of the distinct points, by rank
        t = packed_tuples(len(A), 2)
        out = np.empty((len(A), len(A)))
        out[t[:, 0], t[:, 1]] = out[t[:, 1], t[:, 0]] = phi_moments(net, A, [2], method)[2]
        return out
    out = np.empty((len(A), len(B)))
    for i, a in enumerate(A):
        for j, b in enumerate(B):
            same = np.array_equal(a, b)
            pts = a[None] if same else np.stack([a, b])
            out[i, j] = support_moments(net, pts, np.array([[2]]) if same else np.array([[1, 1]]))[0]
    return out


# ------------------------------------------------------------------ quadrature rules

@lru_cache(maxsize=None)
def _hermite(q):
    z, w = np.polynomial.hermite_e.hermegauss(q)
    return z, w / math.sqrt(2 * math.pi)  # weights of the standard normal


@lru_cache(maxsize=None)
def _legendre(q):
    return np.polynomial.legendre.leggauss(q)


def _factor(S):
    """L with S = L L^T, its columns the non-negligible eigen-directions (rank r)."""
    vals, vecs = np.linalg.eigh(S)
    keep = vals > 1e-13 * max(vals.max(), 1e-300)
    return vecs[:, keep] * np.sqrt(vals[keep])


def _chi_moment(k, r):
    """E[rho^k] for rho the length of an r-dimensional standard normal vector."""
    return math.exp(0.5 * k * math.log(2) + math.lgamma((k + r) / 2) - math.lgamma(r / 2))


def _relu_polar(L):
    """ReLU in rank 1 or 2: nodes on the unit circle split at the kinks; weights average to 1."""
    r = L.shape[1]
    if r == 1:
        return np.array([0.5, 0.5]), np.maximum(np.outer([1.0, -1.0], L[:, 0]), 0.0)
    # a_j . theta = 0 at t = atan2(a_j1, a_j0) +- pi/2: the integrand is smooth between
    cuts = np.concatenate([np.arctan2(L[:, 1], L[:, 0]) + h for h in (np.pi / 2, -np.pi / 2)])
    cuts = np.unique(np.concatenate([np.mod(cuts, 2 * np.pi), [0.0, 2 * np.pi]]))
    z, w = _legendre(ARC_NODES)
    lo, hi = cuts[:-1, None], cuts[1:, None]
    t = ((hi - lo) / 2 * z + (hi + lo) / 2).ravel()
    weights = ((hi - lo) / 2 * w).ravel() / (2 * np.pi)
    theta = np.stack([np.cos(t), np.sin(t)], axis=1)
    return weights, np.maximum(theta @ L.T, 0.0)


SPHERE_NODES = 48  # Gauss-Legendre nodes per panel of the height on the 2-sphere


def _relu_sphere(L):
    """ReLU in rank 3: the mean over the 2-sphere of prod (a_j . theta)_+, weights averaging to 1.

    Archimedes: the height h = theta_3 is uniform on [-1, 1] and the azimuth uniform. For each h
    the azimuth is split at the kinks (exact up to rounding, as in rank 2); the h-integral is
    split where a kink circle is tangent to the latitude or two kink circles cross, and each
    panel is mapped by h = a + (b - a)(1 - cos tau)/2, which smooths the square-root behaviour
    at the tangencies.
    """
    norms = np.linalg.norm(L, axis=1, keepdims=True)
    a = L[norms[:, 0] > 0] / norms[norms[:, 0] > 0]  # a point whose u vanishes has no kink
    R = np.hypot(a[:, 0], a[:, 1])
    cuts = [-1.0, 1.0, *R, *(-R)]
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            n = np.cross(a[i], a[j])
            if np.linalg.norm(n) > 1e-14:
                cuts += [n[2] / np.linalg.norm(n), -n[2] / np.linalg.norm(n)]
    cuts = np.unique(np.clip(cuts, -1.0, 1.0))
    z, w = _legendre(SPHERE_NODES)
    tau = np.pi * (z + 1) / 2
    lo, hi = cuts[:-1, None], cuts[1:, None]
    h = (lo + (hi - lo) * (1 - np.cos(tau)) / 2).ravel()
    wh = ((hi - lo) / 2 * np.sin(tau) * (np.pi / 2) * w).ravel()
    rho = np.sqrt(np.maximum(1 - h**2, 0.0))
    # kinks in the azimuth: R_j rho cos(phi - alpha_j) = -a_j3 h
    alpha = np.arctan2(a[:, 1], a[:, 0])
    with np.errstate(invalid="ignore", divide="ignore"):
        c = -a[None, :, 2] * h[:, None] / (R[None, :] * rho[:, None])
    ok = np.abs(c) <= 1
    delta = np.arccos(np.clip(c, -1.0, 1.0))
    phis = np.concatenate([np.where(ok, alpha + delta, 0.0), np.where(ok, alpha - delta, 0.0)], axis=1)
    edges = np.sort(np.concatenate([np.mod(phis, 2 * np.pi), np.zeros((len(h), 1)),
                                    np.full((len(h), 1), 2 * np.pi)], axis=1), axis=1)
    zi, wi = _legendre(ARC_NODES)
    lo, hi = edges[:, :-1, None], edges[:, 1:, None]
    phi = (hi - lo) / 2 * zi + (hi + lo) / 2  # (H, arcs, nodes)
    weights = (wh[:, None, None] * (hi - lo) / 2 * wi) / (4 * np.pi)
    theta = np.stack([rho[:, None, None] * np.cos(phi), rho[:, None, None] * np.sin(phi),
                      np.broadcast_to(h[:, None, None], phi.shape)], axis=-1).reshape(-1, 3)
    return weights.ravel(), np.maximum(theta @ L.T, 0.0)


def _hermite_rule(r):
    q = max(2, min(HERMITE_NODES, int(MAX_NODES ** (1.0 / r))))
    z, w = _hermite(q)
    grids = np.meshgrid(*([z] * r), indexing="ij")
    nodes = np.stack([g.ravel() for g in grids], axis=1)
    weights = np.ones(len(nodes))
    for g in np.meshgrid(*([w] * r), indexing="ij"):
        weights *= g.ravel()
    return nodes, weights


def support_moments(net, points, counts):
    """E[prod_j phi(u(points_j))^counts[:, j]] by quadrature, for each row of counts.

    points: (m, inputs) distinct inputs; counts: (M, m) non-negative integers.
    """
    counts = np.asarray(counts)
    S = net.covariance(points)
    sd = np.diag(S).copy()
    L = _factor(S)
    r = L.shape[1]
    degree = counts.sum(axis=1)
    if r == 0:  # every pre-activation is 0 (x = 0 without biases)
        v = net.phi(np.zeros((1, len(points))), sd)
        return np.prod(v ** counts, axis=1)
    factor = np.ones(len(counts))
    if net.activation == "relu" and r <= 3:
        weights, values = _relu_polar(L) if r <= 2 else _relu_sphere(L)
        # positive homogeneity: E[prod relu(a.z)] = E[rho^k] * (mean over directions)
        factor = np.array([_chi_moment(k, r) for k in degree])
    else:
        nodes, weights = _hermite_rule(r)
        values = net.phi(nodes @ L.T, sd)
    out = np.zeros(len(counts))
    top = int(counts.max(initial=0))
    cols = np.arange(counts.shape[1])
    step = max(1, _CHUNK // max(1, len(counts) * (top + 1)))
    for start in range(0, len(weights), step):
        # a table of powers v^c, c = 0..top, then one gather per distinct point
        powers = values[start:start + step, :, None] ** np.arange(top + 1)
        prod = np.ones((len(powers), len(counts)))
        for j in cols:
            prod *= powers[:, j, counts[:, j]]
        out += weights[start:start + step] @ prod
    return factor * out
