"""Counting diagrams and labelled trees without enumerating them."""
from __future__ import annotations

import itertools
import math
from functools import reduce
from typing import Sequence

import numpy as np

from . import multi_index as mi
from ..errors import DiagramcError
from .diagram import check_layers


# ----------------------------------------------------------------------------- counting


def labelled_trees(order: int, hidden_layers: int) -> int:
    """Trees with ``order`` distinguishable leaves: the sum of all multiplicities.

    With ``A_l(x)`` the exponential generating function of trees topped by a leaf or a
    vertex on a layer <= l, a vertex is a set of >= 2 such trees from below, so
    ``A_l = A_{l-1} + (exp(A_{l-1}) - 1 - A_{l-1}) = exp(A_{l-1}) - 1`` with ``A_0 = x``
    (H = 2 gives the Bell numbers). Exact integers, no enumeration.
    """
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
        raise DiagramcError(f"order must be a non-negative integer, got {order!r}")
    H = check_layers(hidden_layers)
    if order == 0:
        return 1
    a = [0] * (order + 1)
    a[1] = 1
    for _ in range(H):
        b = [1] + [0] * order  # b = exp(a): n b_n = sum k a_k b_{n-k}, written with binomials
        for n in range(1, order + 1):
            b[n] = sum(math.comb(n - 1, k - 1) * a[k] * b[n - k] for k in range(1, n + 1))
        a = [0] + b[1:]
    return a[order]


def _splits(key: tuple[int, ...]) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """Ways to write a multi-index as delta + rest, up to permuting variables.

    ``key`` is a multi-index reduced to its sorted non-zero entries (the counts only
    depend on that). Variables with equal entries are interchangeable, so a choice of
    delta is made per group of equal entries as a multiset, weighted by the number of
    ways to assign it to the group's variables (a multinomial). Yields (weight, delta
    key, rest key) for every non-zero delta.
    """
    groups = [(v, len(list(g))) for v, g in itertools.groupby(key)]
    per_group = []
    for v, c in groups:
        options = []
        for us in itertools.combinations_with_replacement(range(v + 1), c):
            w = math.factorial(c)
            for _, same in itertools.groupby(us):
                w //= math.factorial(len(list(same)))
            options.append((w, us, tuple(v - u for u in us)))
        per_group.append(options)
    out = []
    for combo in itertools.product(*per_group):
        delta = tuple(sorted((u for _, us, _ in combo for u in us if u), reverse=True))
        if not delta:
            continue
        rest = tuple(sorted((r for _, _, rs in combo for r in rs if r), reverse=True))
        out.append((math.prod(w for w, _, _ in combo), delta, rest))
    return out


def _sub_keys(key: tuple[int, ...]) -> list[tuple[int, ...]]:
    """All reduced keys of sub-multi-indices, by increasing order (so recursions find theirs ready)."""
    keys = {()}
    for _, delta, rest in _splits(key):
        keys.add(delta)
        keys.add(rest)
    return sorted(keys, key=lambda k: (sum(k), k))


def distinct_diagrams(multi_index: Sequence[int], hidden_layers: int) -> int:
    """The number of distinct diagrams of ``D^alpha f``, without enumerating them.

    ``T_l(beta)``, the trees over ``beta`` topped by a leaf or a vertex on a layer <= l,
    are the non-empty multisets of trees topped below l (a multiset of one tree is that
    tree; of >= 2, a new vertex on layer l): ``T_l = MSET(T_{l-1}) - 1``, the multivariate
    Euler transform. Its coefficients follow from the log-derivative recursion
    ``|beta| E(beta) = sum_{0 < delta <= beta} c(delta) E(beta - delta)`` with
    ``c(delta) = sum_{k | gcd(delta)} |delta|/k T_{l-1}(delta/k)``. Every quantity is
    symmetric in the variables, so it is tabulated on sorted non-zero entries only.
    """
    alpha = mi.validate(multi_index)
    H = check_layers(hidden_layers)
    top = tuple(sorted((a for a in alpha if a), reverse=True))
    if sum(top) <= 1:
        return 1
    keys = _sub_keys(top)
    splits = {k: _splits(k) for k in keys if k}
    T = {k: (1 if sum(k) == 1 else 0) for k in keys}  # layer 0: a single input line
    for _ in range(H):
        c = {}
        for k in keys:
            if not k:
                continue
            g = reduce(math.gcd, k)
            c[k] = sum(sum(k) // q * T[tuple(x // q for x in k)] for q in range(1, g + 1) if g % q == 0)
        E = {(): 1}
        for k in keys:
            if k:
                total = sum(w * c[delta] * E[rest] for w, delta, rest in splits[k])
                E[k] = total // sum(k)
        T = {k: E[k] for k in keys}
        T[()] = 0
    return T[top]


def count(multi_index: Sequence[int], hidden_layers: int) -> tuple[int, int]:
    """``(distinct diagrams, labelled trees)`` of ``D^alpha f``, by recursion, not enumeration.

    The second is the sum of the multiplicities; it depends only on the order and ``H``.
    """
    alpha = mi.validate(multi_index)
    return distinct_diagrams(alpha, hidden_layers), labelled_trees(sum(alpha), hidden_layers)
