"""Activation functions as sympy expressions, and their derivatives (the vertex functions).

A vertex of a diagram is ``sigma^(k)(z)``. Deep derivatives of an activation written in
``x`` alone grow quickly (nested quotients of exponentials), so every named activation
is described through *auxiliary functions* ``u(x)`` that satisfy a differential equation
``u' = g(x, u)``: tanh' = 1 - tanh^2, sigmoid' = sigmoid (1 - sigmoid), ... The derivative
operator then acts on polynomials in ``x`` and ``u``:

    D = d/dx + sum_u g_u(x, u) d/du

so ``sigma^(k)`` comes out as a short polynomial in the auxiliaries, and a kernel evaluates
them once and reuses them for every vertex.

Far from zero the polynomials must not cancel: 1 - tanh^2 at tanh = 1 - 1e-17 is 0, not
2e-17, and silu's x (s - s^2) loses everything where the sigmoid s saturates. So the
sigmoid-based activations (tanh = 2 sigmoid(2x) - 1, sigmoid, softplus, silu) use the sigmoid
``s`` and its complement ``c = sigmoid(-x)`` as two auxiliaries, each computed to full
relative accuracy (:class:`Sigmoid`), with s' = s c and c' = -s c: every derivative is then a
polynomial in x, s, c whose leading terms far out have one sign. gelu's normal distribution
function is ``erfc(-x/sqrt(2))/2`` (:class:`Ncdf`), exact where it is tiny; sin's weights are
sin and cos themselves.

Custom activations whose sympy derivatives grow past :data:`SYMBOLIC_SIZE_BOUND` get their
vertex weights from univariate Taylor arithmetic instead (:mod:`diagramc.taylor_arith`).

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

from .errors import DiagramcError, symbolic_step

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

    def fdiff(self, argindex=1):
        return Sigmoid(self.args[0])

    def _eval_evalf(self, prec):
        return sp.log(1 + sp.exp(self.args[0]))._eval_evalf(prec) if self.args[0].is_number else None


class Sigmoid(sp.Function):
    """1/(1 + exp(-x)), printed without overflow and accurate to the last bits for both signs:
    Sigmoid(-x) is the complement 1 - Sigmoid(x) with no cancellation where it is tiny."""

    def fdiff(self, argindex=1):
        a = self.args[0]
        return Sigmoid(a) * Sigmoid(-a)

    def _eval_evalf(self, prec):
        return (1 / (1 + sp.exp(-self.args[0])))._eval_evalf(prec) if self.args[0].is_number else None


class Ncdf(sp.Function):
    """The standard normal distribution function (1 + erf(x/sqrt(2)))/2, printed as
    erfc(-x/sqrt(2))/2: accurate to the last bits where it is tiny (x far below zero)."""

    def fdiff(self, argindex=1):
        a = self.args[0]
        return sp.exp(-(a**2) / 2) / sp.sqrt(2 * sp.pi)

    def _eval_evalf(self, prec):
        return (sp.erfc(-self.args[0] / sp.sqrt(2)) / 2)._eval_evalf(prec) if self.args[0].is_number else None


@dataclass(frozen=True)
class Auxiliary:
    """An auxiliary function u(x) = definition, with u' = derivative(x, u, ...)."""

    symbol: sp.Symbol
    definition: sp.Expr
    derivative: sp.Expr


# A custom activation's derivative sigma^(k) stays symbolic (sympy differentiates, simplifies
# and prints it) while each derivative's size, sympy's count_ops, is at most this bound; past
# it every vertex weight comes from univariate Taylor arithmetic on the expression tree
# (diagramc.taylor_arith), O(order^2) operations per node, printed as straight-line code.
SYMBOLIC_SIZE_BOUND = 120


def _chain_rule_size(e: sp.Expr) -> int:
    """An estimate of the size of e's derivative before sympy makes it: the chain rule copies
    every subtree once per function or product above it, so the sum over the nodes of their
    subtrees' sizes (a nest of 60 calls: 1830, where e itself has 60)."""
    sizes: dict = {}
    totals: dict = {}

    def visit(node):
        if node not in sizes:
            for arg in node.args:
                visit(arg)
            sizes[node] = 1 + sum(sizes[a] for a in node.args)
            totals[node] = sizes[node] + sum(totals[a] for a in node.args)
        return totals[node]

    return visit(e)


@dataclass(frozen=True)
class Activation:
    """An activation sigma(x): its expression, and how to differentiate it cheaply.

    ``value`` is sigma written with the auxiliary symbols; ``expr`` is sigma in ``x``
    alone (for display and independent checks). ``equation`` is (c0, c1, c2) where
    sigma' = c0 + c1 sigma + c2 sigma^2 (tanh, sigmoid), else None.
    """

    name: str
    expr: sp.Expr
    value: sp.Expr
    auxiliaries: tuple[Auxiliary, ...] = ()
    note: str = ""
    equation: tuple[float, float, float] | None = None
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
        """sigma^(k) in terms of x and the auxiliary symbols.

        A custom activation's derivatives grow with k (nested functions without bound):
        past :data:`SYMBOLIC_SIZE_BOUND` (see :meth:`symbolic`) ask for its Taylor
        coefficients (:meth:`series`) instead; this method still differentiates, and the
        command line's deadline bounds it."""
        if k < 0:
            raise DiagramcError(f"derivative order must be >= 0, got {k}")
        if k not in self._cache:
            self._cache[k] = self.value if k == 0 else self._d(self.derivative(k - 1))
        return self._cache[k]

    def symbolic(self, n: int) -> bool:
        """Whether sigma^(k), k <= n, all stay within the size bound (count_ops): the vertex
        weights are then sympy's; else they come from Taylor arithmetic. Named activations are
        always symbolic (short polynomials in their auxiliaries). Differentiates only until the
        first derivative past the bound, so the work is bounded too."""
        if not self.is_custom:
            return True
        key = ("symbolic", n)
        if key not in self._cache:
            ok = True
            for k in range(n + 1):  # stops at the first derivative past the bound
                if ("size", k) not in self._cache:
                    if k and _chain_rule_size(self.derivative(k - 1)) > 10 * SYMBOLIC_SIZE_BOUND:
                        self._cache[("size", k)] = math.inf  # not even worth differentiating
                    else:
                        self._cache[("size", k)] = sp.count_ops(self.derivative(k))
                if self._cache[("size", k)] > SYMBOLIC_SIZE_BOUND or (
                        k == 0 and _chain_rule_size(self.derivative(0)) > 10 * SYMBOLIC_SIZE_BOUND):
                    ok = False
                    break
            self._cache[key] = ok
        return self._cache[key]

    def series(self, n: int):
        """The Taylor coefficients sigma^(k)(z)/k!, k = 0..n, by univariate Taylor arithmetic on
        the expression tree: a :class:`diagramc.taylor_arith.SeriesProgram` (straight-line
        assignments and the n + 1 coefficients)."""
        key = ("series", n)
        if key not in self._cache:
            from .taylor_arith import taylor_program

            self._cache[key] = taylor_program(self.expr, x, n)
        return self._cache[key]

    def taylor_factors(self, n: int) -> list[sp.Expr]:
        """[sigma, sigma'/1!, sigma''/2!, ..., sigma^(n)/n!]: the vertex weights of the layer recursion."""
        if not self.auxiliaries:  # expand multiplies out a custom expression's nested products
            return [self.derivative(k) / math.factorial(k) for k in range(n + 1)]
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
        the vertex sum needs one per power of the series. (The vertex weights themselves are
        printed from the sigmoid and its complement, without the equation's cancellation.)
        """
        return self.equation

    def polynomials_in_value(self, n: int) -> tuple[tuple[float, ...] | None, ...] | None:
        """sigma^(k)/k! for k = 1..n as polynomials in sigma itself (tanh, sigmoid: from the
        equation), per k its coefficients of sigma^0, sigma^1, ... (None where it vanishes);
        None without an equation. Exact algebra, but such a polynomial cancels where sigma
        saturates (1 - sigma^2 at sigma = 1 - 1e-17): the kernels do not use it."""
        if self.equation is None:
            return None
        s = sp.Symbol("sigma")
        c0, c1, c2 = (sp.nsimplify(c) for c in self.equation)
        p = c0 + c1 * s + c2 * s**2
        out, d = [], s
        for k in range(1, n + 1):
            d = sp.expand(sp.diff(d, s) * p)
            f = sp.expand(d / math.factorial(k))
            out.append(None if f == 0 else tuple(float(c) for c in sp.Poly(f, s).all_coeffs()[::-1]))
        return tuple(out)

    def vertex_polynomials(self, n: int) -> tuple[tuple[float, ...] | None, ...] | None:
        """sigma^(k)/k! for k = 1..n as polynomials in the one auxiliary u, where sigma is u
        itself with u' a polynomial in u alone and those polynomials keep their accuracy: per k
        its coefficients of u^0, u^1, ... (None where it vanishes); else None.

        A GPU kernel then makes every vertex weight at once: the powers of u in one kernel,
        their combinations in one matrix product. No named activation qualifies any more:
        tanh and sigmoid saturate, where such polynomials cancel (1 - u^2 at u = 1 - 1e-17
        is 0, not 2e-17), so their weights come from the sigmoid and its complement
        (:meth:`polynomials_in_value` still gives the exact polynomials).
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
        with symbolic_step(f"deriving the vertex functions of {self.name!r} to order {n}"):
            if not self.symbolic(n):
                return all(c == 0 for c in self.series(n).coefficients[2:])
            return all(self.derivative(k) == 0 for k in range(2, n + 1))


def _named() -> dict[str, Activation]:
    u = sp.Symbol("u", real=True)  # the auxiliary function's value
    v = sp.Symbol("v", real=True)  # a second one where needed
    # the sigmoid s and its complement c = 1 - s, each computed on its own (Sigmoid(-x)) so that
    # neither loses its digits where it is tiny: with s' = s c and c' = -s c every derivative of a
    # sigmoid-based activation is a polynomial whose terms at large |x| have one sign, where the
    # polynomials in s alone cancel (1 - s at s = 1 - 1e-17)
    s = sp.Symbol("s", real=True, positive=True)
    c = sp.Symbol("c", real=True, positive=True)
    sig = (Auxiliary(s, Sigmoid(x), s * c), Auxiliary(c, Sigmoid(-x), -s * c))
    # tanh(x) = 2 sigmoid(2x) - 1: tanh' = 1 - tanh^2 = 4 s c with s = sigmoid(2x), c = sigmoid(-2x)
    sig2 = (Auxiliary(s, Sigmoid(2 * x), 2 * s * c), Auxiliary(c, Sigmoid(-2 * x), -2 * s * c))
    gauss = sp.exp(-(x**2) / 2)
    return {
        "tanh": Activation("tanh", sp.tanh(x), u, (Auxiliary(u, sp.tanh(x), 4 * s * c),) + sig2,
                           equation=(1.0, 0.0, -1.0)),
        "sigmoid": Activation("sigmoid", 1 / (1 + sp.exp(-x)), s, sig, equation=(0.0, 1.0, -1.0)),
        "softplus": Activation("softplus", sp.log(1 + sp.exp(x)), v, (Auxiliary(v, Softplus(x), s),) + sig),
        "sin": Activation("sin", sp.sin(x), u, (Auxiliary(u, sp.sin(x), v), Auxiliary(v, sp.cos(x), -u))),
        "gelu": Activation(
            "gelu",
            x * (1 + sp.erf(x / sp.sqrt(2))) / 2,
            x * u,
            (
                Auxiliary(u, Ncdf(x), v / sp.sqrt(2 * sp.pi)),
                Auxiliary(v, gauss, -x * v),
            ),
            note="exact gelu, erf form",
        ),
        "silu": Activation("silu", x / (1 + sp.exp(-x)), x * s, sig),
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
        argument = _to_sympy(node.args[0], text)
        function = _FUNCTIONS[node.func.id]
        if isinstance(function, type) and not argument.is_number:
            # unevaluated: sympy's evaluation of f(g(h(...))) asks assumptions of every inner call,
            # seconds for a few dozen nested calls; nothing is lost for an argument that is not a number
            return function(argument, evaluate=False)
        return function(argument)
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
    with symbolic_step(f"parsing activation {text[:40]!r}"):
        expr = parse_expression(text)
        return Activation(sp.sstr(expr), expr, expr)
