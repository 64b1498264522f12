"""Exact finite-width correlators from one neuron's moments, and moments <-> cumulants.

The network is ``b1`` plus a sum of ``width`` i.i.d. neuron terms ``g = W1 phi(u)``, so its
joint cumulants are ``kappa_n(f) = width * kappa_n(g)`` (plus ``sigma_b^2`` at n = 2). The
moments of g factor: ``E[g_1 .. g_k] = E[W1^k] E[phi(u_1) .. phi(u_k)]``; odd ones vanish.
Moments and cumulants are related by the set-partition formulas

    E[f_1 .. f_n]       = sum_pi prod_{B in pi} kappa_B
    kappa(f_1, .., f_n) = sum_pi (-1)^{|pi|-1} (|pi|-1)! prod_{B in pi} E[prod_{i in B} f_i]

Arrays are packed: one entry per sorted index tuple, in the order of
``itertools.combinations_with_replacement(range(P), k)``.
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from functools import lru_cache

import numpy as np

from .ensembles import check_n, check_points
from .kernels import gauss_moment, pair_moment, support_moments


# ------------------------------------------------------------------ packed tuples

@lru_cache(maxsize=64)
def packed_tuples(P, k):
    """The sorted index tuples of length k over P points, as an array (T, k)."""
    return np.array(list(itertools.combinations_with_replacement(range(P), k)), dtype=np.int64).reshape(-1, k)


def _keys(tuples, P):
    """Integer keys, increasing in the packed (lexicographic) order of sorted tuples."""
    k = tuples.shape[1]
    return tuples @ (P ** np.arange(k - 1, -1, -1, dtype=np.int64))


def packed_index(tuples, P):
    """Positions in the packed array of (unsorted) index tuples (T, k)."""
    tuples = np.sort(np.asarray(tuples, dtype=np.int64), axis=1)
    ref = _keys(packed_tuples(P, tuples.shape[1]), P)
    return np.searchsorted(ref, _keys(tuples, P))


@lru_cache(maxsize=64)
def set_partitions(n, sizes):
    """Set partitions of range(n) whose block sizes all lie in ``sizes`` (a frozenset), as tuples of blocks."""
    out = []

    def grow(rest, blocks):
        if not rest:
            out.append(tuple(blocks))
            return
        first, others = rest[0], rest[1:]
        for size in sizes:
            if size - 1 > len(others):
                continue
            for mates in itertools.combinations(others, size - 1):
                left = tuple(i for i in others if i not in mates)
                grow(left, blocks + [(first,) + mates])

    grow(tuple(range(n)), [])
    return tuple(out)


def _partition_sum(tables, P, n, weight):
    """sum_pi weight(|pi|) prod_B tables[|B|][tuple restricted to B], packed over n-tuples."""
    tuples = packed_tuples(P, n)
    sizes = frozenset(k for k, v in tables.items() if v is not None and 1 <= k <= n)
    total = np.zeros(len(tuples))
    cache = {}
    for pi in set_partitions(n, sizes):
        term = np.full(len(tuples), float(weight(len(pi))))
        for block in pi:
            if block not in cache:
                cache[block] = tables[len(block)][packed_index(tuples[:, list(block)], P)]
            term *= cache[block]
        total += term
    return total


def moments_from_cumulants(cumulants, P, n):
    """Packed n-th moments from packed cumulants ``{k: array}`` (missing orders are zero)."""
    return _partition_sum(cumulants, P, check_n(n), lambda b: 1)


def cumulants_from_moments(moments, P, n):
    """Packed n-th cumulants from packed moments ``{k: array}`` (missing orders are zero)."""
    return _partition_sum(moments, P, check_n(n), lambda b: (-1) ** (b - 1) * math.factorial(b - 1))


# ------------------------------------------------------------------ one neuron's moments

_PHI_CACHE = {}
_PHI_CACHE_SIZE = 32


def phi_moments(net, A, orders, method="auto"):
    """Packed E[phi(u_i1) .. phi(u_ik)] over sorted k-tuples of the rows of A, ``{k: array}``.

    They do not depend on the width: a small cache serves a sweep over widths.
    """
    key = (net.activation, net.inputs, net.sigma_w, net.sigma_b, A.shape, A.tobytes(), tuple(orders), method)
    if key not in _PHI_CACHE:
        if len(_PHI_CACHE) >= _PHI_CACHE_SIZE:
            _PHI_CACHE.pop(next(iter(_PHI_CACHE)))
        _PHI_CACHE[key] = _phi_moments(net, A, orders, method)
    return {k: v.copy() for k, v in _PHI_CACHE[key].items()}


def _phi_moments(net, A, orders, method):
    P = len(A)
    out, pending = {}, []
    for k in orders:
        tuples = packed_tuples(P, k)
        closed = pair_moment(net, A, A) if method == "auto" and k == 2 else None
        if closed is not None:
            out[k] = closed[tuples[:, 0], tuples[:, 1]]
            continue
        counts = np.zeros((len(tuples), P), dtype=np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(tuples)), k), tuples.ravel()), 1)
        if method == "auto" and net.activation == "gauss":
            out[k] = gauss_moment(net.covariance(A), counts)
            continue
        out[k] = np.empty(len(tuples))
        pending += [(k, row, c) for row, c in enumerate(counts)]
    if not pending:
        return out
    # one quadrature per Gaussian: the distinct points of a tuple span a Gaussian of some rank;
    # all tuples whose points span the full rank of A share A's rule, the others get their own
    full = np.linalg.matrix_rank(net.covariance(A), hermitian=True)
    groups = defaultdict(list)
    for k, row, c in pending:
        support = tuple(np.flatnonzero(c))
        rank = np.linalg.matrix_rank(net.covariance(A[list(support)]), hermitian=True)
        groups[None if rank == full else support].append((k, row, c))
    for support, items in groups.items():
        cols = list(range(P)) if support is None else list(support)
        counts = np.array([c[cols] for _, _, c in items])
        values = support_moments(net, A[cols], counts)
        for (k, row, _), v in zip(items, values):
            out[k][row] = v
    return out


def _w1_moment(net, k):
    """E[W1^k] for W1 ~ N(0, sigma_w^2 / width)."""
    if k % 2:
        return 0.0
    return (net.sigma_w**2 / net.width) ** (k // 2) * math.prod(range(k - 1, 0, -2))


def cumulant_tables(net, X, n, method="auto"):
    """Packed exact cumulants of f of the even orders 2..n: ``{k: array}``."""
    A = check_points(net, X)
    n = check_n(n)
    P = len(A)
    # the neuron term's moments; the odd ones vanish with E[W1^odd]
    phis = phi_moments(net, A, range(2, n + 1, 2), method)
    g_moments = {k: _w1_moment(net, k) * phis[k] for k in phis}
    tables = {}
    for k in range(2, n + 1, 2):
        tables[k] = net.width * cumulants_from_moments(g_moments, P, k)
        if k == 2:
            tables[k] = tables[k] + net.sigma_b**2  # the output bias b1
    return tables


def connected(net, X, n, method="auto"):
    """Packed connected n-point functions (joint cumulants), exact at finite width."""
    A = check_points(net, X)
    n = check_n(n)
    if n % 2:
        return np.zeros(len(packed_tuples(len(A), n)))
    return cumulant_tables(net, A, n, method)[n]


def correlators(net, X, n, method="auto"):
    """Packed E[f(x_i1) .. f(x_in)], exact at finite width."""
    A = check_points(net, X)
    n = check_n(n)
    if n % 2:
        return np.zeros(len(packed_tuples(len(A), n)))
    return moments_from_cumulants(cumulant_tables(net, A, n, method), len(A), n)


def gp_correlators(net, X, n):
    """Packed free-theory n-point functions: sums over the Wick pairings of the kernel."""
    from .kernels import kernel

    A = check_points(net, X)
    n = check_n(n)
    K = kernel(net, A)
    pairs = packed_tuples(len(A), 2)
    return moments_from_cumulants({2: K[pairs[:, 0], pairs[:, 1]]}, len(A), n)
