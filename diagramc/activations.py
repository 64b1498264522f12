"""Activation functions as sympy expressions, and their derivatives (the vertex functions).

A vertex of a diagram is ``sigma^(k)(z)``. Deep derivatives of an activation written in
``x`` alone grow quickly (nested quotients of exponentials), so every named activation
is described through *auxiliary functions* ``u(x)`` that satisfy a differential equation
``u' = g(x, u)``: tanh' = 1 - tanh^2, sigmoid' = sigmoid (1 - sigmoid), ... The derivative
operator then acts on polynomials in ``x`` and ``u``:

    D = d/dx + sum_u g_u(x, u) d/du

so ``sigma^(k)`` comes out as a short polynomial in ``tanh(z)`` (or the sigmoid, ...), and
a kernel evaluates the activation once and reuses it for every vertex.

Custom activations are sympy expressions in ``x`` given as text. They are parsed by
walking Python's abstract syntax tree against a whitelist of functions and operators;
user text is never passed to ``eval`` (nor to ``sympy.sympify``, which uses it).
"""
from __future__ import annotations

import ast
import functools
import math
from dataclasses import dataclass, field

import sympy as sp

from .errors import DiagramcError

x = sp.Symbol("x", real=True)


class Step(sp.Function):
    """Heaviside step with Step(0) = 0 (the derivative torch assigns to relu at 0).

    Its derivative is taken to be zero: relu has no vertices.
    """

    def fdiff(self, argindex=1):
        return sp.S.Zero

    def _eval_evalf(self, prec):
        return sp.Heaviside(self.args[0], 0)._eval_evalf(prec) if self.args[0].is_number else None


class Softplus(sp.Function):
    """log(1 + exp(x)), printed in an overflow-free form."""

    def _eval_evalf(self, prec):
        return sp.log(1 + sp.exp(self.args[0]))._eval_evalf(prec) if self.args[0].is_number else None


@dataclass(frozen=True)
class Auxiliary:
    """An auxiliary function u(x) = definition, with u' = derivative(x, u, ...)."""

    symbol: sp.Symbol
    definition: sp.Expr
    derivative: sp.Expr


@dataclass(frozen=True)
class Activation:
    """An activation sigma(x): its expression, and how to differentiate it cheaply.

    ``value`` is sigma written with the auxiliary symbols; ``expr`` is sigma in ``x``
    alone (for display and independent checks).
    """

    name: str
    expr: sp.Expr
    value: sp.Expr
    auxiliaries: tuple[Auxiliary, ...] = ()
    note: str = ""
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    @property
    def is_custom(self) -> bool:
        return self.name not in ACTIVATIONS

    def _d(self, e: sp.Expr) -> sp.Expr:
        """One application of D = d/dx + sum_u u' d/du."""
        out = sp.diff(e, x)
        for aux in self.auxiliaries:
            out += aux.derivative * sp.diff(e, aux.symbol)
        # Polynomials in the auxiliaries stay short once expanded; a custom expression is
        # left as sympy differentiates it (simplify is slow and rarely shorter): the code
        # printer's common-subexpression elimination does the sharing.
        return sp.expand(out) if self.auxiliaries else out

    def derivative(self, k: int) -> sp.Expr:
        """sigma^(k) in terms of x and the auxiliary symbols, simplified."""
        if k < 0:
            raise DiagramcError(f"derivative order must be >= 0, got {k}")
        if k not in self._cache:
            self._cache[k] = self.value if k == 0 else self._d(self.derivative(k - 1))
        return self._cache[k]

    def taylor_factors(self, n: int) -> list[sp.Expr]:
        """[sigma, sigma'/1!, sigma''/2!, ..., sigma^(n)/n!]: the vertex weights of the layer recursion."""
        return [sp.expand(self.derivative(k) / math.factorial(k)) for k in range(n + 1)]

    def derivative_in_x(self, k: int) -> sp.Expr:
        """sigma^(k) with the auxiliary functions written out, as users read it."""
        e = self.derivative(k)
        for aux in reversed(self.auxiliaries):
            e = e.subs(aux.symbol, aux.definition)
        return e

    def quadratic_equation(self) -> tuple[float, float, float] | None:
        """(c0, c1, c2) where sigma' = c0 + c1 sigma + c2 sigma^2 with c2 != 0 (tanh, sigmoid), else None.

        Such an activation's Taylor series through a series can follow the equation degree by
        degree (Taylor mode, as JAX's jet does): two truncated products of series in all, where
        the vertex sum needs one per power of the series.
        """
        if len(self.auxiliaries) != 1 or self.value != self.auxiliaries[0].symbol:
            return None
        u = self.auxiliaries[0].symbol
        p = self.auxiliaries[0].derivative
        if p.free_symbols - {u} or not p.is_polynomial(u):
            return None
        coeffs = sp.Poly(p, u).all_coeffs()[::-1]
        if len(coeffs) != 3 or not all(c.is_number for c in coeffs):
            return None
        return tuple(float(c) for c in coeffs)

    def vertex_polynomials(self, n: int) -> tuple[tuple[float, ...] | None, ...] | None:
        """sigma^(k)/k! for k = 1..n as polynomials in the one auxiliary u (tanh, sigmoid, ...):
        per k its coefficients of u^0, u^1, ... (None where it vanishes); None when sigma is
        not u itself with u' a polynomial in u alone.

        A GPU kernel then makes every vertex weight at once: the powers of u in one kernel,
        their combinations in one matrix product, instead of a few kernels per weight.
        """
        if len(self.auxiliaries) != 1 or self.value != self.auxiliaries[0].symbol:
            return None
        u = self.auxiliaries[0].symbol
        factors = self.taylor_factors(n)[1:]
        if any(f.free_symbols - {u} or not f.is_polynomial(u) for f in factors):
            return None
        return tuple(
            None if f == 0 else tuple(float(c) for c in sp.Poly(f, u).all_coeffs()[::-1]) for f in factors
        )

    def vanishing_vertices(self, n: int) -> bool:
        """True when every vertex sigma^(k), 2 <= k <= n, is identically zero (relu, identity)."""
        return all(self.derivative(k) == 0 for k in range(2, n + 1))


def _named() -> dict[str, Activation]:
    u = sp.Symbol("u", real=True)  # the auxiliary function's value
    v = sp.Symbol("v", real=True)  # a second one where needed
    sigmoid = (1 + sp.tanh(x / 2)) / 2  # overflow-free form of 1/(1+exp(-x))
    gauss = sp.exp(-(x**2) / 2)
    return {
        "tanh": Activation("tanh", sp.tanh(x), u, (Auxiliary(u, sp.tanh(x), 1 - u**2),)),
        "sigmoid": Activation("sigmoid", 1 / (1 + sp.exp(-x)), u, (Auxiliary(u, sigmoid, u * (1 - u)),)),
        "softplus": Activation(
            "softplus",
            sp.log(1 + sp.exp(x)),
            v,
            (Auxiliary(v, Softplus(x), u), Auxiliary(u, sigmoid, u * (1 - u))),
        ),
        "sin": Activation("sin", sp.sin(x), u, (Auxiliary(u, sp.sin(x), v), Auxiliary(v, sp.cos(x), -u))),
        "gelu": Activation(
            "gelu",
            x * (1 + sp.erf(x / sp.sqrt(2))) / 2,
            x * u,
            (
                Auxiliary(u, (1 + sp.erf(x / sp.sqrt(2))) / 2, v / sp.sqrt(2 * sp.pi)),
                Auxiliary(v, gauss, -x * v),
            ),
            note="exact gelu, erf form",
        ),
        "silu": Activation("silu", x / (1 + sp.exp(-x)), x * u, (Auxiliary(u, sigmoid, u * (1 - u)),)),
        "identity": Activation("identity", x, x, note="linear network: no vertices"),
        "relu": Activation(
            "relu",
            sp.Max(x, 0),
            x * u,
            (Auxiliary(u, Step(x), sp.S.Zero),),
            note="relu has no vertices: every coefficient of order >= 2 vanishes",
        ),
    }


ACTIVATIONS: dict[str, Activation] = _named()

# Aliases users type; the canonical name is what modules record.
ALIASES = {"swish": "silu", "linear": "identity", "logistic": "sigmoid"}

_FUNCTIONS = {
    "exp": sp.exp,
    "log": sp.log,
    "sqrt": sp.sqrt,
    "sin": sp.sin,
    "cos": sp.cos,
    "tan": sp.tan,
    "tanh": sp.tanh,
    "sinh": sp.sinh,
    "cosh": sp.cosh,
    "atan": sp.atan,
    "asinh": sp.asinh,
    "erf": sp.erf,
    "sigmoid": lambda a: 1 / (1 + sp.exp(-a)),
    "softplus": lambda a: sp.log(1 + sp.exp(a)),
}
_CONSTANTS = {"pi": sp.pi, "E": sp.E, "e": sp.E}
_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}
MAX_EXPRESSION_LENGTH = 500


def _expected() -> str:
    return (
        f"expected one of {', '.join(sorted(ACTIVATIONS))} or an expression in x using "
        f"+ - * / ** and {', '.join(sorted(_FUNCTIONS))}"
    )


def _to_sympy(node: ast.AST, text: str) -> sp.Expr:
    """Translate a whitelisted syntax tree into sympy; anything else is refused."""
    if isinstance(node, ast.Expression):
        return _to_sympy(node.body, text)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return sp.nsimplify(node.value) if isinstance(node.value, float) else sp.Integer(node.value)
    if isinstance(node, ast.Name):
        if node.id == "x":
            return x
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise DiagramcError(f"unknown name {node.id!r} in activation {text!r}: {_expected()}")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_to_sympy(node.left, text), _to_sympy(node.right, text))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _to_sympy(node.operand, text)
        return -operand if isinstance(node.op, ast.USub) else operand
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and len(node.args) == 1
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](_to_sympy(node.args[0], text))
    what = _NODE_WORDS.get(type(node).__name__, f"a {type(node).__name__} expression")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        what = f"a call of {node.func.id!r}"
    raise DiagramcError(f"activation {text!r} contains {what}, which is not allowed: {_expected()}")


_NODE_WORDS = {
    "Attribute": "an attribute access",
    "Call": "a call of something other than a whitelisted function",
    "Lambda": "a lambda",
    "Subscript": "a subscript",
    "Compare": "a comparison",
    "BoolOp": "a boolean operation",
    "IfExp": "a conditional expression",
    "ListComp": "a comprehension",
    "GeneratorExp": "a comprehension",
    "Constant": "a constant that is not a number",
    "BinOp": "an operator other than + - * / **",
}


@functools.lru_cache(maxsize=256)
def parse_expression(text: str) -> sp.Expr:
    """Parse a custom activation such as 'x*tanh(x)' without evaluating user text."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise DiagramcError(f"activation expression is {len(text)} characters; at most {MAX_EXPRESSION_LENGTH} allowed")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise DiagramcError(f"cannot parse activation {text!r}: {_expected()}") from None
    expr = _to_sympy(tree, text)
    if x not in expr.free_symbols:
        raise DiagramcError(f"activation {text!r} does not depend on x: {_expected()}")
    return expr


def get_activation(spec: "str | Activation") -> Activation:
    """A named activation ('tanh', ...) or a custom expression in x ('x*tanh(x)')."""
    if isinstance(spec, Activation):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise DiagramcError(f"activation must be a non-empty string: {_expected()}")
    key = spec.strip()
    named = ALIASES.get(key.lower(), key.lower())
    if named in ACTIVATIONS:
        return ACTIVATIONS[named]
    return _custom(key)


@functools.lru_cache(maxsize=64)
def _custom(text: str) -> Activation:
    """A custom expression differentiates in x directly; sympy simplifies each order."""
    expr = parse_expression(text)
    return Activation(sp.sstr(expr), expr, expr)
