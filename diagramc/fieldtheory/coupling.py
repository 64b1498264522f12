"""The quartic coupling lambda and the first-order (contact-diagram) correlators.

With ``S = S_GP + lambda int f^4`` the connected 4-point function at first order is
``G_c(x1..x4) = -24 lambda I(x1..x4)``, ``I = int_[-cutoff, cutoff]^d prod_i K'(y, x_i) d^d y``,
``K' = K - sigma_b^2``. The box integral: the Gauss-net's in closed form (a product of error
functions per dimension), the others by tensor Gauss-Legendre on panels that double in length
away from the origin (the kernels vary on the scale of the inputs, the box may be far larger).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .diagrams import contact_diagrams
from .ensembles import check_cutoff, check_n, check_points
from .exact import connected, gp_correlators, packed_index, packed_tuples
from .kernels import _hermite, pair_moment

MAX_BOX_NODES = 1 << 21  # bound on the tensor Gauss-Legendre grid over the box
MAX_INPUTS = 3  # box integrals by tensor quadrature: inputs 1..3
_CHUNK = 1 << 22


class QuarticFit(NamedTuple):
    value: float  # lambda by least squares over all 4-tuples
    spread: float  # standard deviation of the per-tuple lambdas


def _panels(cutoff, scale):
    """Breakpoints of [-cutoff, cutoff]: 0 and +-scale * 2^k, then +-cutoff."""
    edges = [0.0]
    e = scale
    while e < cutoff:
        edges.append(e)
        e *= 2
    edges.append(cutoff)
    edges = np.array(edges)
    return np.concatenate([-edges[:0:-1], edges])


def _box_rule(cutoff, d, scale):
    """Tensor Gauss-Legendre nodes and weights over [-cutoff, cutoff]^d, at most MAX_BOX_NODES."""
    edges = _panels(cutoff, scale)
    panels = len(edges) - 1
    m = max(4, min(48, int((MAX_BOX_NODES ** (1.0 / d)) // panels)))
    z, w = np.polynomial.legendre.leggauss(m)
    lo, hi = edges[:-1, None], edges[1:, None]
    t = ((hi - lo) / 2 * z + (hi + lo) / 2).ravel()
    wt = ((hi - lo) / 2 * w).ravel()
    grids = np.meshgrid(*([t] * d), indexing="ij")
    weights = np.ones(grids[0].size)
    for g in np.meshgrid(*([wt] * d), indexing="ij"):
        weights *= g.ravel()
    return np.stack([g.ravel() for g in grids], axis=1), weights


def _pair_moment_vectorized(net, A, B, q=48):
    """E[phi(u(a)) phi(u(b))] for all rows, by a 2-D Gauss-Hermite rule per pair (any activation)."""
    z, w = _hermite(q)
    saa, sbb, sab = net.self_covariance(A)[:, None], net.self_covariance(B)[None, :], net.covariance(A, B)
    ra = np.sqrt(saa)
    c = np.where(ra > 0, sab / np.where(ra > 0, ra, 1.0), 0.0)
    rest = np.sqrt(np.maximum(sbb - c**2, 0.0))
    out = np.zeros(sab.shape)
    for zi, wi in zip(z, w):
        ua = np.broadcast_to(ra * zi, sab.shape)
        pa = net.phi(ua, np.broadcast_to(saa, sab.shape))
        for zj, wj in zip(z, w):
            out += wi * wj * pa * net.phi(c * zi + rest * zj, np.broadcast_to(sbb, sab.shape))
    return out


def _vertex_lines(net, Y, A):
    """K'(y, x_i) = sigma_w^2 E[phi phi] for vertex positions Y and inputs A: (len(Y), len(A))."""
    closed = pair_moment(net, Y, A)
    if closed is None:
        closed = _pair_moment_vectorized(net, Y, A)
    return net.sigma_w**2 * closed


def vertex_integrals(net, X, cutoff):
    """Packed I(x_i1..x_i4) = int_[-cutoff, cutoff]^d prod K'(y, x_i) d^d y over sorted 4-tuples."""
    A = check_points(net, X)
    cutoff = check_cutoff(cutoff)
    tuples = packed_tuples(len(A), 4)
    if net.activation == "gauss":
        a = net.sigma_w**2 / (2 * net.inputs)
        pts = A[tuples]  # (T, 4, d)
        mean = pts.mean(axis=1)
        spread = (pts**2).sum(axis=1) - 4 * mean**2
        from scipy.special import erf

        line = math.sqrt(math.pi / (4 * a)) / 2 * (erf(2 * math.sqrt(a) * (cutoff - mean))
                                                    + erf(2 * math.sqrt(a) * (cutoff + mean)))
        return net.sigma_w**8 * np.prod(np.exp(-a * spread) * line, axis=1)
    if net.inputs > MAX_INPUTS:
        raise ValueError(f"inputs must be at most {MAX_INPUTS} for the vertex integral over the box, got {net.inputs}")
    nodes, weights = _box_rule(cutoff, net.inputs, max(1.0, float(np.abs(A).max())))
    out = np.zeros(len(tuples))
    step = max(1, _CHUNK // (len(tuples) * 4))
    for start in range(0, len(nodes), step):
        V = _vertex_lines(net, nodes[start:start + step], A)
        prod = V[:, tuples[:, 0]] * V[:, tuples[:, 1]] * V[:, tuples[:, 2]] * V[:, tuples[:, 3]]
        out += weights[start:start + step] @ prod
    return out


def quartic_coupling(net, X, cutoff, connected4=None):
    """Packed lambda over sorted 4-tuples: -G_c^(4) / (24 I); G_c^(4) exact unless given."""
    A = check_points(net, X)
    G = connected(net, A, 4) if connected4 is None else np.asarray(connected4, dtype=np.float64)
    return -G / (24 * vertex_integrals(net, A, cutoff))


def fit_quartic_coupling(net, X, cutoff, connected4=None):
    """One lambda for the cutoff: least squares of G_c^(4) = -24 lambda I over all 4-tuples, and its spread."""
    A = check_points(net, X)
    G = connected(net, A, 4) if connected4 is None else np.asarray(connected4, dtype=np.float64)
    I = vertex_integrals(net, A, cutoff)
    value = -float(G @ I) / (24 * float(I @ I))
    return QuarticFit(value, float(np.std(-G / (24 * I))))


def first_order_correlators(net, X, n, lam, cutoff):
    """Packed n-point functions at first order in lambda: the free theory plus the contact diagrams."""
    A = check_points(net, X)
    n = check_n(n)
    P = len(A)
    total = gp_correlators(net, A, n)
    diagrams = contact_diagrams(n)
    if not diagrams:
        return total
    from .kernels import kernel

    K = kernel(net, A)
    I = vertex_integrals(net, A, cutoff)
    tuples = packed_tuples(P, n)
    for dg in diagrams:
        legs = [i - 1 for i in dg.vertex]
        term = -dg.multiplicity * lam * I[packed_index(tuples[:, legs], P)]
        for a, b in dg.pairs:
            term = term * K[tuples[:, a - 1], tuples[:, b - 1]]
        total = total + term
    return total
