"""Exact interpolation of mixed partials from univariate Taylor coefficients along directions
(Griewank, Utke & Walther 2000, "Evaluating higher derivative tensors by forward propagation
of univariate Taylor series", Math. Comp. 69).

The directions are the order-n multi-indices j, read as vectors in R^d: C(d+n-1, n) of them.
With c_k(j) the k-th Taylor coefficient of t -> f(x + t j), every D^i f(x) of order |i| = k <= n is

    D^i f(x) = sum_j gamma_ij c_k(j),
    gamma_ij = sum_(0 < l <= i) (-1)^|i - l| C(i, l) C(n l / |l|, j) (|l| / n)^k

(C of multi-indices: products of generalised binomials), exact rationals, zero unless supp(j)
lies within supp(i). Built here in fractions and rounded once: the runtime's only floats are
the rounded coefficients.
"""
from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction

import numpy as np


def exponents(monomial, d):
    """A sorted tuple of variable indices as an exponent tuple: (0, 0, 2) -> (2, 0, 1) for d = 3."""
    alpha = [0] * d
    for i in monomial:
        alpha[i] += 1
    return tuple(alpha)


def multi_indices(d, k):
    """The order-k multi-indices of d variables, in the canonical order (diagramc's contract)."""
    return tuple(exponents(m, d) for m in itertools.combinations_with_replacement(range(d), k))


def directions(d, n):
    """The C(d+n-1, n) directions: the order-n multi-indices, as exponent tuples."""
    return multi_indices(d, n)


@functools.lru_cache(maxsize=None)
def _binomial(r: Fraction, q: int) -> Fraction:
    """The generalised binomial C(r, q) = r (r - 1) ... (r - q + 1) / q!."""
    out = Fraction(1)
    for t in range(q):
        out *= r - t
    return out / math.factorial(q)


@functools.lru_cache(maxsize=None)
def gamma(pairs: tuple, n: int) -> Fraction:
    """gamma_ij from the pairs (i_m, j_m) over supp(i): the same for any order of the variables."""
    k = sum(a for a, _ in pairs)
    gamma = Fraction(0)
    for parts in itertools.product(*(range(a + 1) for a, _ in pairs)):
        size = sum(parts)
        if size == 0:
            continue
        term = Fraction((-1) ** (k - size)) * Fraction(size, n) ** k
        for (a, b), lm in zip(pairs, parts):
            term *= math.comb(a, lm) * _binomial(Fraction(n * lm, size), b)
        gamma += term
    return gamma


def exact_matrix(d, n, k):
    """gamma as a dense list of rows of Fractions: rows the order-k multi-indices, columns the
    directions (both canonical)."""
    dirs = directions(d, n)
    rows = []
    for i in multi_indices(d, k):
        support = [m for m in range(d) if i[m]]
        row = []
        for j in dirs:
            if any(j[m] for m in range(d) if not i[m]):
                row.append(Fraction(0))  # supp(j) outside supp(i)
            else:
                row.append(gamma(tuple(sorted((i[m], j[m]) for m in support)), n))
        rows.append(row)
    return rows


@functools.lru_cache(maxsize=32)
def matrix(d, n, k):
    """gamma of order k (1 <= k <= n), (C(d+k-1, k), C(d+n-1, n)) float64: D^i f = gamma @ c_k."""
    return np.array([[float(g) for g in row] for row in exact_matrix(d, n, k)], dtype=np.float64).reshape(-1, len(directions(d, n)))


def growth(d, n):
    """How much interpolation can amplify rounding errors, relative to the order's largest
    derivative: max over orders k of (largest row sum of |gamma_k|) n^k / k!, since
    |c_k(j)| <= max_i |D^i f| |j|_1^k / k! and |j|_1 = n (the plan keeps the directions where it is small)."""
    return max(float(np.abs(matrix(d, n, k)).sum(1).max()) * n**k / math.factorial(k) for k in range(1, n + 1))


# Orders k whose coefficients have at most this many distinct entries C(d+k-1, k) go through a
# layer's weights at that many directions only (the rest are made from them by an exact linear
# map, pushed_directions): its exact inverse is made at import in well under a second.
MAX_PUSHED = 20


def _powers(directions_, alphas):
    """V[j, i] = j^i: the order-k coefficient along direction j is sum_i V[j, i] (D^i f / i!)."""
    return [[math.prod(j[m] ** a[m] for m in range(len(j))) for a in alphas] for j in directions_]


def _inverse(matrix_):
    """The inverse of a square matrix of integers, in Fractions (Gauss-Jordan), or None if singular."""
    size = len(matrix_)
    rows = [[Fraction(v) for v in row] + [Fraction(int(i == r)) for i in range(size)] for r, row in enumerate(matrix_)]
    for c in range(size):
        pivot = next((r for r in range(c, size) if rows[r][c] != 0), None)
        if pivot is None:
            return None
        rows[c], rows[pivot] = rows[pivot], rows[c]
        inv = 1 / rows[c][c]
        rows[c] = [v * inv for v in rows[c]]
        for r in range(size):
            if r != c and rows[r][c] != 0:
                factor = rows[r][c]
                rows[r] = [a - factor * b for a, b in zip(rows[r], rows[c])]
    return [row[size:] for row in rows]


@functools.lru_cache(maxsize=32)
def pushed_directions(d, n):
    """The directions reordered so that, for each order k < n with C(d+k-1, k) <= MAX_PUSHED, the
    first C(d+k-1, k) of them determine the order-k coefficient along all the others: it is a
    homogeneous polynomial of degree k in the direction. Returns (order, pushed, expand):
    `order` the directions' permutation; per k = 1..n-1, `pushed[k-1]` how many directions go
    through a layer's weights (all D where the trick is not taken) and `expand[k-1]` the exact
    map (rounded once) from their coefficients to the rest's, (D - pushed, pushed), or None.

    Chosen greedily as a pivoted QR would: each next direction the one farthest from the span
    of those before it, over every order that still needs directions (well conditioned maps)."""
    dirs = directions(d, n)
    D = len(dirs)
    orders = [k for k in range(1, n) if len(multi_indices(d, k)) <= MAX_PUSHED and len(multi_indices(d, k)) < D]
    V = {k: np.array(_powers(dirs, multi_indices(d, k)), dtype=np.float64) for k in orders}
    for k in orders:  # rows of unit length: the choice compares angles, not sizes
        V[k] /= np.linalg.norm(V[k], axis=1, keepdims=True)
    chosen, bases = [], {k: np.zeros((0, V[k].shape[1])) for k in orders}
    remaining = list(range(D))
    while remaining:
        needing = [k for k in orders if len(bases[k]) < V[k].shape[1]]
        if not needing:
            chosen += remaining
            break
        def score(c):
            return min(np.linalg.norm(V[k][c] - bases[k].T @ (bases[k] @ V[k][c])) for k in needing)
        best = max(remaining, key=score)
        remaining.remove(best)
        chosen.append(best)
        for k in needing:
            r = V[k][best] - bases[k].T @ (bases[k] @ V[k][best])
            if np.linalg.norm(r) > 1e-9:
                bases[k] = np.vstack([bases[k], r / np.linalg.norm(r)])
    ordered = [dirs[c] for c in chosen]
    pushed, expand = [], []
    for k in range(1, n):
        size = len(multi_indices(d, k))
        inverse = None
        if k in orders:
            powers = _powers(ordered, multi_indices(d, k))
            inverse = _inverse(powers[:size])
        if inverse is None:
            pushed.append(D)
            expand.append(None)
            continue
        rest = [[sum(Fraction(row[t]) * inverse[t][c] for t in range(size)) for c in range(size)] for row in powers[size:]]
        pushed.append(size)
        expand.append(np.array([[float(v) for v in row] for row in rest], dtype=np.float64).reshape(D - size, size))
    return tuple(chosen), tuple(pushed), tuple(expand)
