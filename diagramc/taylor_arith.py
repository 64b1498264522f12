"""Univariate Taylor arithmetic on an activation's expression tree.

sympy's derivatives of a nested expression grow without bound (tanh(tanh(tanh(x))) at
order 8 is megabytes of text). The Taylor coefficients ``sigma^(k)(z)/k!``, k = 0..n, of
any whitelisted expression follow instead from truncated power series in ``t`` around
``z``: the variable is ``z + t``, and every node of the tree maps its children's series to
its own by a recurrence of O(n^2) operations (Griewank & Walther, *Evaluating
Derivatives*, ch. 13; the same rules as JAX's jet):

    product     c_k = sum_j a_j b_(k-j)
    quotient    c_k = (a_k - sum_(j>=1) b_j c_(k-j)) / b_0
    power a^p   y_k = sum_(j>=1) ((p + 1) j - k) a_j y_(k-j) / (k a_0)     (positive integer p: products)
    f(a)        f_k = (1/k) sum_(j>=1) j a_j F_(k-j)   with F the series of f'(a):
                exp (F = the result), sin/cos and sinh/cosh (each the other's), tanh (F = 1 - tanh^2),
                tan (1 + tan^2), log (1/a), erf (2/sqrt(pi) exp(-a^2)), atan (1/(1 + a^2)),
                asinh ((1 + a^2)^(-1/2))

The result is a straight-line program: assignments ``name = small expression`` over the
variable and earlier names, and the n + 1 coefficients (names, numbers, or small
expressions). Coefficients known to vanish stay exact zeros (a polynomial's series ends),
repeated subtrees are computed once, and the printers turn it into NumPy, torch or scalar
(numba) code as they print sympy's derivatives.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import sympy as sp

from .errors import DiagramcError


# A value in a program: an exact zero or other number (int or float), or a name (str).
Value = "int | float | str"

# Functions a program calls on one name, by their sympy class (the printers know them all).
_CALLS = ("exp", "log", "sin", "cos", "sinh", "cosh", "tan", "tanh", "atan", "asinh", "erf", "sigmoid")


@dataclass(frozen=True)
class SeriesProgram:
    """Straight-line code for the Taylor coefficients of an expression around the variable.

    Each assignment is ``(name, kind, payload)``: kind "sum" with payload a tuple of terms
    ``(coefficient, (name, ...))`` (their sum of products), "call" with payload
    ``(function, argument name)``, "reciprocal" or "power" with ``(name, exponent)``
    (power only). Coefficients are names or numbers; 0 is an exact zero."""

    variable: str
    assignments: tuple[tuple[str, str, tuple], ...]
    coefficients: tuple[Value, ...]  # sigma^(k)(variable)/k!, k = 0..n


def _number(e) -> "int | float":
    e = sp.sympify(e)
    return int(e) if e.is_Integer else float(e.evalf(17))


class _Builder:
    def __init__(self, n: int, variable: str = "z"):
        self.n = n
        self.variable = variable
        self.assignments: list[tuple[str, str, tuple]] = []
        self.memo: dict[sp.Expr, list] = {}
        self.calls: dict[tuple, str] = {}

    def _name(self) -> str:
        return f"a{len(self.assignments)}"

    # --- emitting -------------------------------------------------------------------------
    def emit(self, terms) -> Value:
        """The sum of terms (coefficient, names): a number, an existing name, or a new one."""
        constant, merged = 0, {}
        for coefficient, names in terms:
            if coefficient == 0:
                continue
            if not names:
                constant += coefficient
                continue
            key = tuple(sorted(names))
            merged[key] = merged.get(key, 0) + coefficient
        rest = [(c, names) for names, c in merged.items() if c != 0]
        if not rest:
            return constant
        if constant == 0 and len(rest) == 1 and rest[0][0] == 1 and len(rest[0][1]) == 1:
            return rest[0][1][0]
        if constant != 0:
            rest.append((constant, ()))
        name = self._name()
        self.assignments.append((name, "sum", tuple(rest)))
        return name

    def call(self, function: str, a: Value) -> Value:
        if not isinstance(a, str):
            return _number(getattr(sp, function)(a) if function != "sigmoid" else 1 / (1 + sp.exp(-a)))
        key = (function, a)
        if key not in self.calls:
            self.calls[key] = self._name()
            self.assignments.append((self.calls[key], "call", (function, a)))
        return self.calls[key]

    def reciprocal(self, a: Value) -> Value:
        if not isinstance(a, str):
            return 1.0 / a if a != 0 else _singular()
        key = ("1/", a)
        if key not in self.calls:
            self.calls[key] = self._name()
            self.assignments.append((self.calls[key], "reciprocal", (a,)))
        return self.calls[key]

    def pow(self, a: Value, p: float) -> Value:
        if not isinstance(a, str):
            return float(a) ** p
        name = self._name()
        self.assignments.append((name, "power", (a, p)))
        return name

    # --- terms ----------------------------------------------------------------------------
    @staticmethod
    def term(coefficient, *values):
        """One product term: coefficient times the values (None when a value is zero)."""
        names = []
        for v in values:
            if isinstance(v, str):
                names.append(v)
            else:
                coefficient = coefficient * v
        return (coefficient, tuple(names))

    def dot(self, pairs, coefficient=1):
        """Terms of sum coefficient * a * b over pairs (weights allowed: (w, a, b))."""
        return [self.term(coefficient * w, a, b) for w, a, b in pairs]

    # --- series operations ----------------------------------------------------------------
    def constant(self, value) -> list:
        return [value] + [0] * self.n

    def add(self, series_list, weights=None) -> list:
        weights = weights or [1] * len(series_list)
        return [self.emit([self.term(w, s[k]) for w, s in zip(weights, series_list)]) for k in range(self.n + 1)]

    def scale(self, a, factor) -> list:
        return [self.emit([self.term(factor, c)]) for c in a]

    def mul(self, a, b) -> list:
        if a is b:
            return self.square(a)
        return [self.emit(self.dot([(1, a[j], b[k - j]) for j in range(k + 1)])) for k in range(self.n + 1)]

    def _square_terms(self, a, k):
        pairs = [(2, a[j], a[k - j]) for j in range((k + 1) // 2)]
        if k % 2 == 0:
            pairs.append((1, a[k // 2], a[k // 2]))
        return self.dot(pairs)

    def square(self, a) -> list:
        return [self.emit(self._square_terms(a, k)) for k in range(self.n + 1)]

    def div(self, a, b) -> list:
        r = self.reciprocal(b[0])
        if all(c == 0 for c in b[1:]):
            return [self.emit([self.term(1, c, r)]) for c in a]
        out: list = []
        for k in range(self.n + 1):
            numerator = self.emit([self.term(1, a[k])] + self.dot([(1, b[j], out[k - j]) for j in range(1, k + 1)], -1))
            out.append(self.emit([self.term(1, numerator, r)]))
        return out

    def power(self, a, p) -> list:
        """a^p for a number p (sympy's)."""
        if p.is_Integer and p >= 0:
            result, base, e = None, a, int(p)
            if e == 0:
                return self.constant(1)
            while e:
                if e & 1:
                    result = base if result is None else self.mul(result, base)
                e >>= 1
                if e:
                    base = self.square(base)
            return result
        if p.is_Integer:
            return self.div(self.constant(1), self.power(a, -p))
        p = _number(p)
        y = [self.pow(a[0], p)]
        if all(c == 0 for c in a[1:]):
            return y + [0] * self.n
        r = self.reciprocal(a[0])
        for k in range(1, self.n + 1):
            total = self.emit(self.dot([((p + 1) * j - k, a[j], y[k - j]) for j in range(1, k + 1)]))
            y.append(self.emit([self.term(1.0 / k, total, r)]))
        return y

    def _integrate(self, a, first, slope) -> list:
        """f(a) from f(a_0) = first and the series of f'(a), filled in as f's coefficients
        appear: slope(f, k) gives its coefficient k once f_0..f_k are known."""
        f = [first]
        F = [slope(f, 0)]
        for k in range(1, self.n + 1):
            f.append(self.emit(self.dot([(j / k if j % k else j // k, a[j], F[k - j]) for j in range(1, k + 1)])))
            if k < self.n:
                F.append(slope(f, k))
        return f

    def exp(self, a) -> list:
        return self._integrate(a, self.call("exp", a[0]), lambda f, k: f[k])

    def sin_cos(self, a, hyperbolic=False):
        s = [self.call("sinh" if hyperbolic else "sin", a[0])]
        c = [self.call("cosh" if hyperbolic else "cos", a[0])]
        sign = 1 if hyperbolic else -1
        for k in range(1, self.n + 1):
            s.append(self.emit(self.dot([(j / k, a[j], c[k - j]) for j in range(1, k + 1)])))
            c.append(self.emit(self.dot([(sign * j / k, a[j], s[k - j]) for j in range(1, k + 1)])))
        return s, c

    def tanh(self, a) -> list:
        # 1 - tanh(a0)^2 = 4 sigmoid(2 a0) sigmoid(-2 a0): no cancellation where tanh saturates
        if isinstance(a[0], str):
            up = self.call("sigmoid", self.emit([self.term(2, a[0])]))
            down = self.call("sigmoid", self.emit([self.term(-2, a[0])]))
            first_slope = self.emit([self.term(4, up, down)])
        else:
            first_slope = _number(1 - sp.tanh(a[0]) ** 2)
        return self._integrate(a, self.call("tanh", a[0]),
                               lambda f, k: first_slope if k == 0 else self.emit([(-c, n) for c, n in self._square_terms(f, k)]))

    def sigmoid(self, a) -> list:
        s = self.call("sigmoid", a[0])
        if isinstance(a[0], str):
            c = self.call("sigmoid", self.emit([self.term(-1, a[0])]))
            first_slope = self.emit([self.term(1, s, c)])
        else:
            first_slope = s * (1 - s)
        return self._integrate(a, s, lambda f, k: first_slope if k == 0 else
                               self.emit([self.term(1, f[k])] + [(-c, n) for c, n in self._square_terms(f, k)]))

    def tan(self, a) -> list:
        return self._integrate(a, self.call("tan", a[0]), lambda f, k: self.emit(
            ([(1, ())] if k == 0 else []) + self._square_terms(f, k)))

    def log(self, a) -> list:
        r = self.reciprocal(a[0])
        out = [self.call("log", a[0])]
        for k in range(1, self.n + 1):
            total = self.emit([self.term(1, a[k])] + self.dot([(-j / k, out[j], a[k - j]) for j in range(1, k)]))
            out.append(self.emit([self.term(1, total, r)]))
        return out

    def _by_derivative(self, a, first, derivative) -> list:
        """f(a) where f'(a)'s series is known beforehand (it does not involve f)."""
        return self._integrate(a, first, lambda f, k: derivative[k])

    def erf(self, a) -> list:
        g = self.exp(self.scale(self.square(a), -1))
        return self._by_derivative(a, self.call("erf", a[0]), self.scale(g, float(2 / math.sqrt(math.pi))))

    def atan(self, a) -> list:
        d = self.div(self.constant(1), self.add([self.constant(1), self.square(a)]))
        return self._by_derivative(a, self.call("atan", a[0]), d)

    def asinh(self, a) -> list:
        d = self.power(self.add([self.constant(1), self.square(a)]), sp.Rational(-1, 2))
        return self._by_derivative(a, self.call("asinh", a[0]), d)

    # --- the tree -------------------------------------------------------------------------
    def walk(self, e: sp.Expr, var: sp.Symbol) -> list:
        if e not in self.memo:
            self.memo[e] = self._walk(e, var)
        return self.memo[e]

    def _walk(self, e: sp.Expr, var: sp.Symbol) -> list:
        from .activations import Ncdf, Sigmoid, Softplus

        if e == var:
            return ([self.variable, 1] + [0] * (self.n - 1))[: self.n + 1]
        if e.is_number:
            value = _number(e)
            if not math.isfinite(value):
                _singular()
            return self.constant(value)
        if e.is_Add:
            return self.add([self.walk(t, var) for t in e.args])
        if e.is_Mul:
            coefficient, factors = e.as_coeff_mul()
            numerator, denominator = [], []
            for f in factors:
                base, exponent = f.as_base_exp()
                if exponent.is_Integer and exponent < 0 and not base.is_number:
                    denominator.append(self.walk(base if exponent == -1 else base**-exponent, var))
                else:
                    numerator.append(self.walk(f, var))
            top = numerator[0] if numerator else self.constant(1)
            for f in numerator[1:]:
                top = self.mul(top, f)
            if denominator:
                bottom = denominator[0]
                for f in denominator[1:]:
                    bottom = self.mul(bottom, f)
                top = self.div(top, bottom)
            return top if coefficient == 1 else self.scale(top, _number(coefficient))
        if e.is_Pow:
            base, exponent = e.args
            if exponent.is_number:
                return self.power(self.walk(base, var), sp.nsimplify(exponent) if exponent.is_Float else exponent)
            return self.exp(self.walk(exponent * sp.log(base), var))
        if len(e.args) != 1:
            raise DiagramcError(f"cannot expand {sp.sstr(e)[:60]!r} as a Taylor series")
        if isinstance(e, Softplus):
            return self.walk(sp.log(1 + sp.exp(e.args[0])), var)
        if isinstance(e, Ncdf):
            return self.walk((1 + sp.erf(e.args[0] / sp.sqrt(2))) / 2, var)
        a = self.walk(e.args[0], var)
        if isinstance(e, (sp.sin, sp.cos)):
            s, c = self.sin_cos(a)
            return s if isinstance(e, sp.sin) else c
        if isinstance(e, (sp.sinh, sp.cosh)):
            s, c = self.sin_cos(a, hyperbolic=True)
            return s if isinstance(e, sp.sinh) else c
        if isinstance(e, Sigmoid):
            return self.sigmoid(a)
        for kind in ("exp", "log", "tanh", "tan", "erf", "atan", "asinh"):
            if isinstance(e, getattr(sp, kind)):
                return getattr(self, kind)(a)
        raise DiagramcError(f"cannot expand {type(e).__name__} as a Taylor series")


def _singular():
    raise DiagramcError("the activation has a singular Taylor coefficient (a division by zero or a pole)")


def taylor_program(expr: sp.Expr, var: sp.Symbol, n: int, variable: str = "z") -> SeriesProgram:
    """Straight-line code for expr's Taylor coefficients expr^(k)(var)/k!, k = 0..n, around the
    point named ``variable``."""
    builder = _Builder(n, variable)
    coefficients = builder.walk(expr, var)
    return SeriesProgram(variable, tuple(builder.assignments), tuple(coefficients))


def sum_text(terms) -> str:
    """Python text of a sum of products: valid for floats, NumPy arrays and tensors alike."""
    parts = []
    for coefficient, names in terms:
        product = "*".join(names)
        if not names:
            text, negative = repr(abs(coefficient)), coefficient < 0
        elif coefficient in (1, -1):
            text, negative = product, coefficient < 0
        else:
            text, negative = f"{abs(coefficient)!r}*{product}", coefficient < 0
        if not parts:
            parts.append(("-" if negative else "") + text)
        else:
            parts.append((" - " if negative else " + ") + text)
    return "".join(parts)


def evaluate(program: SeriesProgram, point, functions=None) -> list:
    """The program's coefficients at a point (a float or an mpmath number; mpmath's functions
    by default): an interpreter for tests and checks, independent of the printers."""
    import mpmath

    f = functions or {
        "exp": mpmath.exp, "log": mpmath.log, "sin": mpmath.sin, "cos": mpmath.cos, "sinh": mpmath.sinh,
        "cosh": mpmath.cosh, "tan": mpmath.tan, "tanh": mpmath.tanh, "atan": mpmath.atan,
        "asinh": mpmath.asinh, "erf": mpmath.erf, "sigmoid": lambda a: 1 / (1 + mpmath.exp(-a)),
    }
    values = {program.variable: point}

    def get(v):
        return values[v] if isinstance(v, str) else v

    for name, kind, payload in program.assignments:
        if kind == "sum":
            total = 0
            for coefficient, names in payload:
                product = coefficient
                for n in names:
                    product = product * values[n]
                total = total + product
            values[name] = total
        elif kind == "call":
            values[name] = f[payload[0]](values[payload[1]])
        elif kind == "reciprocal":
            values[name] = 1 / values[payload[0]]
        else:
            values[name] = values[payload[0]] ** payload[1]
    return [get(c) for c in program.coefficients]


__all__ = ["SeriesProgram", "taylor_program", "evaluate", "sum_text"]
