"""Univariate Taylor series of an activation along a curve, one coefficient at a time.

Backend-neutral: only +, -, * (and a fused multiply-add) on arrays (NumPy arrays or torch tensors),
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


def numpy_addcmul(total, a, b, value=1.0):
    """total + value * a * b: torch.addcmul's signature for arrays without it."""
    return total + (a * b if value == 1 else value * (a * b))


class _Rule:
    """Shared arithmetic: each series sum as a chain of fused multiply-adds (one operation a term)."""

    def __init__(self, addcmul):
        self.addcmul = addcmul

    def integral(self, h, g, k):
        """Coefficient k (>= 1) of the series whose derivative along the curve is g h':
        (1/k) sum_(j=1..k) j h_j g_(k-j), the term j = k first (its weight is 1)."""
        total = h[k] * g[0]
        for j in range(1, k):
            total = self.addcmul(total, h[j], g[k - j], value=j / k)
        return total

    def quadratic(self, a, k, c1, c2, scaled0):
        """Coefficient k (>= 1) of c0 + c1 a + c2 a^2, each cross term of the square once
        (scaled0 = 2 c2 a_0, made once per series)."""
        total = scaled0 * a[k] if c1 == 0 else self.addcmul(a[k] * c1, scaled0, a[k])
        for j in range(1, (k + 1) // 2):
            total = self.addcmul(total, a[j], a[k - j], value=2 * c2)
        if k % 2 == 0:
            total = self.addcmul(total, a[k // 2], a[k // 2], value=c2)
        return total


class Quadratic(_Rule):
    """sigma' = c0 + c1 sigma + c2 sigma^2: a_k = (1/k) sum j h_j u_(k-j), u = sigma'."""

    def __init__(self, constants, value, factors, addcmul):
        super().__init__(addcmul)
        self.c0, self.c1, self.c2 = constants
        self.a, self.u = [value], [factors[0]]
        self.scaled0 = value * (2 * self.c2)

    def push(self, h):
        k = len(h) - 1
        if len(self.u) < k:  # u's coefficient k - 1, made only when a next coefficient asks for it
            self.u.append(self._u(k - 1))
        a_k = self.integral(h, self.u, k)
        self.a.append(a_k)
        return a_k

    def _u(self, k):
        return self.quadratic(self.a, k, self.c1, self.c2, self.scaled0) if self.c2 else self.a[k] * self.c1


class Integral(_Rule):
    """sigma' = s, s' = c0 + c1 s + c2 s^2 (softplus: s the sigmoid)."""

    def __init__(self, constants, value, factors, addcmul):
        super().__init__(addcmul)
        self.c0, self.c1, self.c2 = constants
        s0 = factors[0]
        self.a, self.s = [value], [s0]
        self.q = [self.c2 * s0 * s0 + self.c1 * s0 + self.c0]  # s', as a series
        self.scaled0 = s0 * (2 * self.c2)

    def push(self, h):
        k = len(h) - 1
        if len(self.s) < k:  # s and s' up to coefficient k - 1, made only when asked for
            s = self.integral(h, self.q, k - 1)
            self.s.append(s)
            self.q.append(self.quadratic(self.s, k - 1, self.c1, self.c2, self.scaled0) if self.c2 else s * self.c1)
        a_k = self.integral(h, self.s, k)
        self.a.append(a_k)
        return a_k


class Harmonic(_Rule):
    """sigma'' = -sigma: the pair (sigma, sigma') along the curve, as sin and cos."""

    def __init__(self, constants, value, factors, addcmul):
        super().__init__(addcmul)
        self.a, self.d = [value], [factors[0]]

    def push(self, h):
        k = len(h) - 1
        if len(self.d) < k:  # sigma' up to coefficient k - 1, made only when asked for
            self.d.append(-self.integral(h, self.a, k - 1))
        a_k = self.integral(h, self.d, k)
        self.a.append(a_k)
        return a_k


class Vertex(_Rule):
    """Faa di Bruno: a_k = sum_m c_m [delta^m]_k with delta = h - h_0 and c_m = sigma^(m)(h_0)/m!,
    the powers of delta kept per m and extended by one coefficient at a time."""

    def __init__(self, constants, value, factors, addcmul):
        super().__init__(addcmul)
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
                    p = self.addcmul(p, h[j], lower[k - j])
            self.powers[m][k] = p
            if self.c[m - 1] is not None:
                total = self.c[m - 1] * p if total is None else self.addcmul(total, self.c[m - 1], p)
        return total if total is not None else h[k] * 0


RULES = {"quadratic": Quadratic, "integral": Integral, "harmonic": Harmonic, "vertex": Vertex}


def start(rule, activation, h0, addcmul=numpy_addcmul):
    """Coefficient 0 through the activation, and the rule's state that extends it
    (``addcmul``: torch.addcmul for tensors, one fused operation a term)."""
    name, constants = rule
    value, factors = activation(h0)
    return RULES[name](constants, value, factors, addcmul), value


def series(rule, activation, h, addcmul=numpy_addcmul):
    """All coefficients of sigma(h(t)) for a whole series h (a list)."""
    state, a0 = start(rule, activation, h[0], addcmul)
    return [a0] + [state.push(h[: k + 1]) for k in range(1, len(h))]
