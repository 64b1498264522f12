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
def _gamma(pairs: tuple, n: int) -> Fraction:
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
                row.append(_gamma(tuple(sorted((i[m], j[m]) for m in support)), n))
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
