"""The index tables of a compiled differential operator, from its terms (pure Python and NumPy).

An operator ``sum c D^alpha f`` (terms ``(output, alpha, c)``, output ``None`` when the
operator acts on every output alike) needs the Taylor coefficients of each layer on the
downward closure ``C`` of its multi-indices. The maximal elements of ``C`` are needed by
nobody else, so they are *collapsed*: one row per group (one group, or one per output for
an operator that mixes outputs) carries ``sum_gamma w_gamma T[gamma]`` with
``w_gamma = c_gamma gamma!``. The rest of ``C`` (always including 0, the value) is the
*series* ``S``, carried entry by entry as normalized Taylor coefficients. Rows of a layer's
state, in order: the value, ``S``'s other entries in canonical order, the collapsed rows.

Through an activation, with ``F_k = sigma^(k)/k!`` and ``P_k`` the k-th power of the
series' non-constant part truncated to ``S``::

    h[gamma] = sum_k F_k P_k[gamma]      top_g = F_1 top_g + sum_(k>=2) F_k T_(k,g)
    T_(k,g)  = sum_(beta + delta = gamma maximal) w_(g,gamma) P_(k-1)[beta] P_1[delta]

Collapsed twice (``twice``): the series' highest-order entries reach the top only paired with
first-order entries ``e_j``, so they are carried as ``R_(g,j) = sum_beta w_g(beta + e_j) T[beta]``
(rows between the series and the top rows) and their products are made on the fly.

Tables here are plain tuples and NumPy integer arrays; each backend module converts them.
"""
from __future__ import annotations

import itertools
import math

import numpy as np


def canonical_key(alpha):
    """The contract's canonical order: by order, then by the sorted index tuple."""
    return (sum(alpha), tuple(i for i, a in enumerate(alpha) for _ in range(a)))


def factorial(alpha) -> int:
    return math.prod(math.factorial(a) for a in alpha)


def unit(i: int, d: int, k: int = 1) -> tuple[int, ...]:
    return tuple(k if j == i else 0 for j in range(d))


def named_operator(name: str, inputs: int, outputs: int, dims=None) -> tuple:
    """OPERATOR of a named operator, ((alpha, c), ...) or (((output, alpha), c), ...), canonical order."""
    dims = tuple(range(inputs)) if dims is None else tuple(dims)
    if name == "laplacian":
        terms = [(unit(i, inputs, 2), 1.0) for i in dims]
    elif name == "biharmonic":
        terms = [(unit(i, inputs, 4), 1.0) for i in dims]
        terms += [(tuple(2 if j in (a, b) else 0 for j in range(inputs)), 2.0)
                  for a, b in itertools.combinations(dims, 2)]
    elif name == "divergence":
        return tuple(((i, unit(i, inputs)), 1.0) for i in range(inputs))
    else:
        raise ValueError(f"unknown operator {name!r}")
    return tuple(sorted(terms, key=lambda t: canonical_key(t[0])))


def biharmonic_rows(m: int) -> int:
    """Rows per layer of the fused biharmonic (biharmonic_loops) over m inputs: the value, m first
    derivatives, m(m+1)/2 second, m collapsed thirds, the collapsed top."""
    return 2 + 2 * m + m * (m + 1) // 2


def terms_of(operator, mixing: bool) -> list[tuple]:
    """(output or None, alpha, c) for every term of OPERATOR."""
    if mixing:
        return [(key[0], tuple(key[1]), float(c)) for key, c in operator]
    return [(None, tuple(alpha), float(c)) for alpha, c in operator]


def below(alpha):
    """Every multi-index beta <= alpha (componentwise), alpha included."""
    return itertools.product(*(range(a + 1) for a in alpha))


def closure_rows(terms, inputs: int, collapse: bool):
    """(series S in canonical order with S[0] = 0, maximal multi-indices collapsed, groups).

    ``groups`` lists the collapsed rows' outputs (None: every output). Without ``collapse``
    the whole closure is the series and nothing is collapsed.
    """
    alphas = {alpha for _, alpha, _ in terms}
    closure = {beta for alpha in alphas for beta in below(alpha)} | {(0,) * inputs}
    zero = (0,) * inputs
    if collapse:
        strictly_below = {beta for alpha in alphas for beta in below(alpha) if beta != alpha}
        top = {alpha for alpha in alphas if alpha not in strictly_below and alpha != zero}
    else:
        top = set()
    series = sorted(closure - top, key=canonical_key)
    group_outputs = sorted({o for o, alpha, _ in terms if alpha in top}, key=lambda o: -1 if o is None else o)
    return series, sorted(top, key=canonical_key), group_outputs


class Tables:
    """Everything a kernel needs about one operator, as plain data."""

    def __init__(self, operator, inputs: int, outputs: int, mixing: bool, collapse: bool, twice: bool = False):
        terms = terms_of(operator, mixing)
        self.mixing = mixing
        series, self.top, self.groups = closure_rows(terms, inputs, collapse)
        # twice: the series' highest order reaches the top only paired with first-order entries,
        # so it is carried collapsed too, one row per (group, first-order entry j):
        # R_(g,j) = sum_beta w_g(beta + e_j) T[beta] (where no term of the operator names it)
        high_order = max((sum(a) for a in series), default=0)
        high = [a for a in series if sum(a) == high_order]
        named = {alpha for _, alpha, _ in terms}
        self.high = high if twice and high_order >= 2 and self.groups and not named & set(high) else []
        self.series = [a for a in series if a not in set(self.high)]
        position = {alpha: r for r, alpha in enumerate(self.series)}
        self.firsts = [a for a in self.series if sum(a) == 1]
        self.second_rows = len(self.groups) * len(self.firsts) if self.high else 0
        self.top_start = len(self.series) + self.second_rows
        self.rows = self.top_start + len(self.groups)
        self.order = max([sum(a) for a in series + self.top] + [1])
        orders = [sum(a) for a in self.series[1:]]
        self.series_order = max(orders, default=0)
        self.first_order_only = self.series_order <= 1 and not self.high  # the forward-Laplacian path
        # P_k lives on the series rows of order >= k: a suffix starting at start[k] (row 1 = first)
        self.start = {k: 1 + sum(1 for o in orders if o < k) for k in range(1, self.order + 1)}

        # the input's series: x, unit rows for the first-order entries, zeros above, collapsed rows
        self.input_rows = np.zeros((self.rows - 1, inputs))
        for r, alpha in enumerate(self.series[1:], start=1):
            if sum(alpha) == 1:
                self.input_rows[r - 1, alpha.index(1)] = 1.0
        group_of = {o: self.top_start + g for g, o in enumerate(self.groups)}
        weights = {}  # (row of the group, gamma) -> c gamma!
        out_terms = {}  # (row, output or None) -> c alpha!, the series' own terms
        for o, alpha, c in terms:
            if alpha in position:
                key = (position[alpha], o)
                out_terms[key] = out_terms.get(key, 0.0) + c * factorial(alpha)
            else:
                key = (group_of[o], alpha)
                weights[key] = weights.get(key, 0.0) + c * factorial(alpha)
        for (row, gamma), w in weights.items():
            if sum(gamma) == 1:
                self.input_rows[row - 1, gamma.index(1)] += w
        self.output_terms = out_terms

        # products P_k = P_(k-1) P_1 on the series, grouped by their number of terms
        self.powers = {}
        for k in range(2, self.series_order + 1):
            pairs = []
            for t, gamma in enumerate(self.series):
                if sum(gamma) < k:
                    continue
                for beta in below(gamma):
                    delta = tuple(g - b for g, b in zip(gamma, beta))
                    if sum(beta) >= k - 1 and sum(delta) >= 1:
                        pairs.append((t - self.start[k], position[beta] - self.start[k - 1], position[delta] - 1))
            self.powers[k] = buckets(pairs)
        # the collapsed rows' T_k: pairs (beta, delta) and a weight per (group, pair)
        self.top_pairs = {}
        for k in range(2, self.order + 1):
            pairs, index = [], {}
            for (row, gamma), w in sorted(weights.items(), key=lambda item: (item[0][0], canonical_key(item[0][1]))):
                if sum(gamma) < k:
                    continue
                for beta in below(gamma):
                    delta = tuple(g - b for g, b in zip(gamma, beta))
                    if sum(beta) >= k - 1 and sum(delta) >= 1:
                        if beta not in position or delta not in position:
                            continue  # a pair with a twice-collapsed entry: through R (second)
                        key = (position[beta] - self.start[k - 1], position[delta] - 1)
                        if key not in index:
                            index[key] = len(pairs)
                            pairs.append([key, np.zeros(len(self.groups))])
                        pairs[index[key]][1][row - self.top_start] += w
            if pairs:
                self.top_pairs[k] = (
                    np.array([p[0][0] for p in pairs], dtype=np.int64),
                    np.array([p[0][1] for p in pairs], dtype=np.int64),
                    np.stack([p[1] for p in pairs], axis=1),  # (groups, pairs)
                )

        # Q_k[(g, j)] = sum_beta w_g(beta + e_j) P_k[beta] over the twice-collapsed beta, from the
        # pairs of P_(k-1) and P_1 that make each beta: R's own series, and its share of T_(k+1)
        self.second = {}
        for k in range(2, high_order + 1 if self.high else 0):
            pairs, index = [], {}
            for beta in self.high:
                for left in below(beta):
                    right = tuple(b - a for b, a in zip(beta, left))
                    if sum(left) < k - 1 or sum(right) < 1:
                        continue
                    key = (position[left] - self.start[k - 1], position[right] - 1)
                    if key not in index:
                        index[key] = len(pairs)
                        pairs.append([key, np.zeros(self.second_rows)])
                    for g in range(len(self.groups)):
                        for j, e in enumerate(self.firsts):
                            gamma = tuple(b + a for b, a in zip(beta, e))
                            pairs[index[key]][1][g * len(self.firsts) + j] += weights.get((self.top_start + g, gamma), 0.0)
            self.second[k] = (np.array([p[0][0] for p in pairs], dtype=np.int64),
                              np.array([p[0][1] for p in pairs], dtype=np.int64),
                              np.stack([p[1] for p in pairs], axis=1))

        # the quadratic form of the forward-Laplacian path: T_2 = sum_ij Q[g, i, j] Z_i Z_j
        first = len(self.series) - 1 if self.first_order_only else 0
        self.quadratic = np.zeros((len(self.groups), first, first))
        if 2 in self.top_pairs and self.first_order_only:
            left, right, w = self.top_pairs[2]
            for p, (i, j) in enumerate(zip(left, right)):
                self.quadratic[:, i, j] += w[:, p]
        self.quadratic_kind = _form_kind(self.quadratic)

    def output_matrix(self, outputs: int) -> np.ndarray:
        """The output's coefficient per row: (rows, 1) for an operator on every output alike,
        (rows, outputs) for one that mixes them (apply sums over rows and outputs)."""
        A = np.zeros((self.rows, outputs if self.mixing else 1))
        for (row, o), c in self.output_terms.items():
            A[row, 0 if o is None else o] += c
        for g, o in enumerate(self.groups):
            A[self.top_start + g, 0 if o is None else o] += 1.0
        return A

    def multiply_adds(self, layer_sizes) -> int:
        """Multiply-adds per point: matrix products on every row, activations, products, output."""
        series_rows = len(self.series) - 1
        total = layer_sizes[0] * layer_sizes[1]  # the value row of layer 1 (its other rows are constants)
        for n_in, n_out in zip(layer_sizes[1:-2], layer_sizes[2:-1]):
            total += self.rows * n_in * n_out
        for n in layer_sizes[1:-1]:
            total += (self.rows - 1) * n  # sigma' times every row
            total += sum(sum(len(b[1].ravel()) for b in buckets_) for buckets_ in self.powers.values()) * n
            if not self.first_order_only:  # T_k: a product per pair, then a weighted sum per group
                total += sum(len(left) * (1 + len(self.groups)) for left, _, _ in self.top_pairs.values()) * n
                total += sum(len(left) * (1 + self.second_rows) for left, _, _ in self.second.values()) * n
                total += 2 * self.second_rows * len(self.second) * n  # R's share of T_k, F_k times Q_k
            elif self.quadratic_kind != "none":  # the forward Laplacian's quadratic form
                total += len(self.groups) * (series_rows if self.quadratic_kind != "dense" else series_rows**2) * n
        n = layer_sizes[-2]
        total += self.rows * n * (layer_sizes[-1] if self.mixing else 1) + self.rows * layer_sizes[-1]
        return int(total)


def _form_kind(Q) -> str:
    """How the quadratic form is evaluated: none, uniform (c sum Z_i^2), diagonal, dense."""
    if Q.size == 0 or not Q.any():
        return "none"
    off = Q.copy()
    for g in range(Q.shape[0]):
        np.fill_diagonal(off[g], 0.0)
    if off.any():
        return "dense"
    diag = np.stack([np.diag(q) for q in Q])
    return "uniform" if np.all(diag == diag[:, :1]) else "diagonal"


def buckets(pairs):
    """[(targets, left (targets, count), right (targets, count)), ...]: pairs grouped by how many
    terms their target sums, so each group is one gather, one product and one sum over a reshape."""
    by_target = {}
    for t, a, b in pairs:
        by_target.setdefault(t, []).append((a, b))
    by_count = {}
    for t, terms in sorted(by_target.items()):
        by_count.setdefault(len(terms), []).append((t, terms))
    out = []
    for count, group in sorted(by_count.items()):
        targets = np.array([t for t, _ in group], dtype=np.int64)
        left = np.array([[a for a, _ in terms] for _, terms in group], dtype=np.int64)
        right = np.array([[b for _, b in terms] for _, terms in group], dtype=np.int64)
        out.append((targets, left, right))
    return out
