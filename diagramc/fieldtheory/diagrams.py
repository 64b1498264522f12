"""Feynman diagrams of the free theory (Wick pairings) and of one quartic vertex (contact diagrams).

Legs are the external points x_1 .. x_n (1-based labels). A Wick diagram joins them in pairs by
propagators K. A contact diagram attaches four legs to one vertex at an integrated point y
(lines K' = K - sigma_b^2) and pairs the others by K; the 4! ways of attaching the four legs
are its multiplicity, so its value is ``-24 lambda int K'K'K'K' * prod K``. Self-loops at the
vertex are absent (the interaction is normal-ordered).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import sympy as sp

from .ensembles import check_n

K = sp.Function("K")
Kp = sp.Function("K'")
lam, cutoff, y = sp.symbols("lambda Lambda y", real=True)


def _x(i):
    return sp.Symbol(f"x_{i}", real=True)


def pairings(legs):
    """All perfect matchings of a tuple of legs, each a tuple of sorted pairs."""
    if not legs:
        return [()]
    first, rest = legs[0], legs[1:]
    out = []
    for j, mate in enumerate(rest):
        for tail in pairings(rest[:j] + rest[j + 1:]):
            out.append(((first, mate),) + tail)
    return out


def _kline(a, b):
    return rf"K(x_{{{a}}}, x_{{{b}}})"


@dataclass(frozen=True)
class WickDiagram:
    """A pairing of the n legs by propagators K."""

    n: int
    pairs: tuple

    multiplicity = 1

    def legs(self):
        return [leg for pair in self.pairs for leg in pair]

    def expression(self):
        return sp.Mul(*[K(_x(a), _x(b)) for a, b in self.pairs])

    def latex(self):
        return r"\,".join(_kline(a, b) for a, b in self.pairs)

    def pretty(self):
        return " ".join(f"K{a}{b}" if max(a, b) < 10 else f"K({a},{b})" for a, b in self.pairs)

    def to_json(self):
        return {"kind": "wick", "n": self.n, "pairs": [list(p) for p in self.pairs], "multiplicity": 1}


@dataclass(frozen=True)
class ContactDiagram:
    """Four legs on one quartic vertex (lines K'), the others paired by K."""

    n: int
    vertex: tuple
    pairs: tuple

    multiplicity = 24  # the 4! ways of attaching the four legs to the vertex

    def legs(self):
        return list(self.vertex) + [leg for pair in self.pairs for leg in pair]

    def expression(self):
        """-24 lambda int_{-Lambda}^{Lambda} dy prod K'(y, x_i) prod K(x_a, x_b) (one input dimension shown)."""
        integrand = sp.Mul(*[Kp(y, _x(i)) for i in self.vertex])
        props = sp.Mul(*[K(_x(a), _x(b)) for a, b in self.pairs])
        return -self.multiplicity * lam * sp.Integral(integrand, (y, -cutoff, cutoff)) * props

    def latex(self):
        lines = r"\,".join(rf"K'(y, x_{{{i}}})" for i in self.vertex)
        props = "".join(r"\," + _kline(a, b) for a, b in self.pairs)
        return rf"-{self.multiplicity}\lambda \int_{{[-\Lambda, \Lambda]^d}} d^d y\, {lines}{props}"

    def pretty(self):
        v = "V(" + ",".join(map(str, self.vertex)) + ")"
        return " ".join([v] + [f"K{a}{b}" if max(a, b) < 10 else f"K({a},{b})" for a, b in self.pairs])

    def to_json(self):
        return {"kind": "contact", "n": self.n, "vertex": list(self.vertex), "pairs": [list(p) for p in self.pairs],
                "multiplicity": self.multiplicity}


def wick_diagrams(n):
    """The (n-1)!! pairings of n legs (none for odd n), in a fixed order."""
    n = check_n(n)
    if n % 2:
        return []
    return [WickDiagram(n, p) for p in pairings(tuple(range(1, n + 1)))]


def contact_diagrams(n):
    """First-order diagrams of one quartic vertex without self-loops: C(n,4) (n-5)!! for even n >= 4."""
    n = check_n(n)
    if n % 2 or n < 4:
        return []
    legs = tuple(range(1, n + 1))
    out = []
    for vertex in itertools.combinations(legs, 4):
        rest = tuple(i for i in legs if i not in vertex)
        out += [ContactDiagram(n, vertex, p) for p in pairings(rest)]
    return out


def double_factorial(k):
    return math.prod(range(k, 0, -2)) if k > 0 else 1
