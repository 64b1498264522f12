"""Univariate Taylor series of an activation along a curve, one coefficient at a time.

Backend-neutral: only +, -, * and scalar division on arrays (NumPy arrays or torch tensors),
so the same rules serve both backends and torch's autograd goes through them (twice too).
A series is a Python list of coefficient arrays ``h[k]`` (normalised: the curve is
``sum_k h[k] t^k``). Every rule is incremental: ``push(h)`` with ``len(h) == k + 1`` returns
coefficient k of ``sigma(h(t))`` from ``h[0..k]`` and the rule's own earlier coefficients,
so extending a series by one coefficient costs O(k), and a whole series of length K O(K^2).

Rules, chosen by the compiler from the activation's equations:

    ("quadratic", (c0, c1, c2))   sigma' = c0 + c1 sigma + c2 sigma^2       tanh, sigmoid, exp
    ("integral", (c0, c1, c2))    sigma' = s with s' = c0 + c1 s + c2 s^2    softplus
    ("harmonic", ())              sigma'' = -sigma                          sin, cos
    ("vertex", ())                Faa di Bruno with sigma^(m)(h0)/m!         anything else

Coefficient 0 comes from the generated module's ``activation(h0) -> (sigma, (sigma'/1!,
sigma''/2!, ...))`` (sympy-printed code, None where a weight vanishes): the equation rules
read sigma and sigma' from it, the vertex rule every weight.
"""
from __future__ import annotations


def _integral(jh, g, k):
    """Coefficient k (>= 1) of the series whose derivative along the curve is g * h':
    (1/k) sum_(j=1..k) j h_j g_(k-j), with jh[j] = j h_j."""
    total = jh[1] * g[k - 1]
    for j in range(2, k + 1):
        total = total + jh[j] * g[k - j]
    return total / k


def _cauchy(a, b, k):
    """Coefficient k of the product of two series: sum_(j=0..k) a_j b_(k-j)."""
    total = a[0] * b[k]
    for j in range(1, k + 1):
        total = total + a[j] * b[k - j]
    return total


def _square(a, k):
    """Coefficient k of a series squared, each cross term once: half the products of _cauchy."""
    total = None
    for j in range((k + 1) // 2):
        term = a[j] * a[k - j]
        total = term if total is None else total + term
    total = 2 * total if total is not None else None
    if k % 2 == 0:
        mid = a[k // 2] * a[k // 2]
        total = mid if total is None else total + mid
    return total


class _Rule:
    """Shared bookkeeping: the scaled input coefficients j h_j, kept as they arrive."""

    def __init__(self):
        self.jh = [None]

    def _scale(self, h):
        k = len(h) - 1
        self.jh.append(h[k] * k if k > 1 else h[k])
        return k


class Quadratic(_Rule):
    """sigma' = c0 + c1 sigma + c2 sigma^2: a_k = (1/k) sum j h_j u_(k-j), u = sigma'."""

    def __init__(self, constants, value, factors):
        super().__init__()
        self.c0, self.c1, self.c2 = constants
        self.a, self.u = [value], [factors[0]]

    def push(self, h):
        k = self._scale(h)
        a_k = _integral(self.jh, self.u, k)
        self.a.append(a_k)
        u_k = self.c2 * _square(self.a, k)  # u = c0 + c1 a + c2 a^2, coefficient k >= 1
        if self.c1:
            u_k = u_k + self.c1 * a_k
        self.u.append(u_k)
        return a_k


class Integral(_Rule):
    """sigma' = s, s' = c0 + c1 s + c2 s^2 (softplus: s the sigmoid)."""

    def __init__(self, constants, value, factors):
        super().__init__()
        self.c0, self.c1, self.c2 = constants
        s0 = factors[0]
        self.a, self.s = [value], [s0]
        q0 = self.c2 * s0 * s0 + self.c1 * s0 + self.c0
        self.q = [q0]  # s', as a series

    def push(self, h):
        k = self._scale(h)
        a_k = _integral(self.jh, self.s, k)
        s_k = _integral(self.jh, self.q, k)
        self.s.append(s_k)
        q_k = self.c2 * _square(self.s, k)
        if self.c1:
            q_k = q_k + self.c1 * s_k
        self.q.append(q_k)
        self.a.append(a_k)
        return a_k


class Harmonic(_Rule):
    """sigma'' = -sigma: the pair (sigma, sigma') along the curve, as sin and cos."""

    def __init__(self, constants, value, factors):
        super().__init__()
        self.a, self.d = [value], [factors[0]]

    def push(self, h):
        k = self._scale(h)
        a_k = _integral(self.jh, self.d, k)
        d_k = -_integral(self.jh, self.a, k)
        self.a.append(a_k)
        self.d.append(d_k)
        return a_k


class Vertex:
    """Faa di Bruno: a_k = sum_m c_m [delta^m]_k with delta = h - h_0 and c_m = sigma^(m)(h_0)/m!,
    the powers of delta kept per m and extended by one coefficient at a time."""

    def __init__(self, constants, value, factors):
        self.c = factors
        nonzero = [m + 1 for m, f in enumerate(factors) if f is not None]
        self.top = max(nonzero, default=0)  # powers above it weigh nothing
        self.powers = [None] + [{} for _ in range(self.top)]  # powers[m][k] = [delta^m]_k, k >= m

    def push(self, h):
        k = len(h) - 1
        total = None
        for m in range(1, min(k, self.top) + 1):
            if m == 1:
                p = h[k]
            else:
                lower = self.powers[m - 1]
                p = h[1] * lower[k - 1]
                for j in range(2, k - m + 2):
                    p = p + h[j] * lower[k - j]
            self.powers[m][k] = p
            if self.c[m - 1] is not None:
                term = self.c[m - 1] * p
                total = term if total is None else total + term
        return total if total is not None else h[k] * 0


RULES = {"quadratic": Quadratic, "integral": Integral, "harmonic": Harmonic, "vertex": Vertex}


def start(rule, activation, h0):
    """Coefficient 0 through the activation, and the rule's state that extends it."""
    name, constants = rule
    value, factors = activation(h0)
    return RULES[name](constants, value, factors), value


def series(rule, activation, h):
    """All coefficients of sigma(h(t)) for a whole series h (a list)."""
    state, a0 = start(rule, activation, h[0])
    return [a0] + [state.push(h[: k + 1]) for k in range(1, len(h))]
