"""Printing stage: sympy vertex functions -> NumPy / PyTorch source.

Printers subclass SymPy's own (``_print_<Class>`` methods), as SymForce and lambdify do.
Common subexpressions of all vertex weights sigma^(k)/k! are shared through ``sympy.cse``,
so the activation and its auxiliaries are evaluated once per layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter
from sympy.printing.pytorch import TorchPrinter

from ..activations import Activation, Sigmoid, Softplus, Step, x

# The pre-activation variable's name inside generated code.
Z_NAME = "z"
_SQRT_HALF = repr(math.sqrt(0.5))


class _NumpyKernelPrinter(NumPyPrinter):
    """NumPy printer writing ``np.`` and the module's own overflow-free helpers."""

    def __init__(self):
        super().__init__({"fully_qualified_modules": True, "allow_unknown_functions": False})
        self.helpers: set[str] = set()

    def _module_format(self, fqn, register=True):
        if fqn == "math.erf" or fqn == "scipy.special.erf":
            self.helpers.add("erf")
            return "_erf"
        if fqn.startswith("numpy."):
            return "np." + fqn[len("numpy.") :]
        return super()._module_format(fqn, register)

    def _print_erf(self, expr):
        self.helpers.add("erf")
        return f"_erf({self._print(expr.args[0])})"

    def _print_Softplus(self, expr):
        return f"np.logaddexp(0, {self._print(expr.args[0])})"

    def _print_Sigmoid(self, expr):
        # exp(-log(1 + exp(-a))): no overflow, and accurate where it is tiny (a far below zero)
        return f"np.exp(-np.logaddexp(0, -({self._print(expr.args[0])})))"

    def sigmoid_pair(self, a: str, s: str, c: str):
        """s = sigmoid(a) and c = sigmoid(-a) from one exponential, each accurate where it is tiny."""
        return [f"{s}_exp = np.exp(-np.abs({a}))", f"{s}_inv = 1.0 / (1.0 + {s}_exp)",
                f"{s} = np.where({a} >= 0, {s}_inv, {s}_exp * {s}_inv)",
                f"{c} = np.where({a} >= 0, {s}_exp * {s}_inv, {s}_inv)"]

    def _print_Ncdf(self, expr):
        # erfc(-a/sqrt(2))/2 by math.erfc (NumPy has none): accurate where it is tiny
        return (f"(0.5 * np.frompyfunc(math.erfc, 1, 1)(-({self._print(expr.args[0])}) * {_SQRT_HALF})"
                f".astype({Z_NAME}.dtype))")

    def _print_Step(self, expr):
        a = self._print(expr.args[0])
        return f"({a} > 0).astype({Z_NAME}.dtype)"

    def constant(self, value: str) -> str:
        return f"np.full_like({Z_NAME}, {value})"


class _TorchKernelPrinter(TorchPrinter):
    """PyTorch printer; stays on the input's device and dtype."""

    def __init__(self):
        super().__init__({"allow_unknown_functions": False})
        self.helpers: set[str] = set()

    def _print_Softplus(self, expr):
        a = self._print(expr.args[0])
        return f"torch.logaddexp({a}, torch.zeros_like({a}))"

    def _print_Sigmoid(self, expr):
        return f"torch.sigmoid({self._print(expr.args[0])})"

    def sigmoid_pair(self, a: str, s: str, c: str):
        return None  # torch.sigmoid is one fused kernel each

    def _print_Ncdf(self, expr):
        return f"(0.5 * torch.special.erfc(-({self._print(expr.args[0])}) * {_SQRT_HALF}))"

    def _print_Step(self, expr):
        a = self._print(expr.args[0])
        return f"({a} > 0).to({Z_NAME}.dtype)"

    def _print_Pow(self, expr, rational=False):
        # u**2 reads better than torch.pow(u, 2) and autograd handles both.
        base, exp = expr.as_base_exp()
        if exp.is_Integer and exp > 0:
            return f"{self.parenthesize(base, PRECEDENCE['Pow'])}**{int(exp)}"
        return super()._print_Pow(expr)

    def constant(self, value: str) -> str:
        return f"torch.full_like({Z_NAME}, {value})"


class _ScalarKernelPrinter(PythonCodePrinter):
    """Scalar Python over ``math`` for the NumPy kernels' fused activation loop (numba
    compiles it): one pass computes sigma and every vertex weight of an entry."""

    def __init__(self):
        super().__init__({"fully_qualified_modules": True, "allow_unknown_functions": False})
        self.helpers: set[str] = set()

    def _print_Softplus(self, expr):
        a = self._print(expr.args[0])
        return f"(max({a}, 0.0) + math.log1p(math.exp(-abs({a}))))"

    def _print_Sigmoid(self, expr):
        a = self._print(expr.args[0])
        # branch-free (numba compiles long straight-line code much faster without branches):
        # exp(min(a, 0)) / (1 + exp(-|a|)), no overflow, accurate for both signs
        return f"(math.exp(min({a}, 0.0)) / (1.0 + math.exp(-abs({a}))))"

    def sigmoid_pair(self, a: str, s: str, c: str):
        """s = sigmoid(a) and c = sigmoid(-a) from one exponential, each accurate where it is tiny."""
        return [f"{s}_exp = math.exp(-abs({a}))", f"{s}_inv = 1.0 / (1.0 + {s}_exp)",
                f"{s} = {s}_inv if {a} >= 0.0 else {s}_exp * {s}_inv",
                f"{c} = {s}_exp * {s}_inv if {a} >= 0.0 else {s}_inv"]

    def _print_Ncdf(self, expr):
        return f"(0.5 * math.erfc(-({self._print(expr.args[0])}) * {_SQRT_HALF}))"

    def _print_Step(self, expr):
        return f"(1.0 if {self._print(expr.args[0])} > 0 else 0.0)"

    def _print_Pow(self, expr, rational=False):
        # numba raises ZeroDivisionError for 0.0**-n whatever its error model; 1.0/0.0 gives
        # inf (error_model="numpy"), as NumPy's and torch's operations do
        base, exp = expr.as_base_exp()
        if exp.is_number and exp.is_negative:
            return f"(1.0/{self._print(sp.Pow(base, -exp, evaluate=False))})"
        return super()._print_Pow(expr, rational=rational)

    def constant(self, value: str) -> str:
        return value


PRINTERS = {"numpy": _NumpyKernelPrinter, "torch": _TorchKernelPrinter, "scalar": _ScalarKernelPrinter}


@dataclass(frozen=True)
class ActivationCode:
    """Source lines computing sigma(z) and the vertex weights sigma^(k)(z)/k!."""

    lines: tuple[str, ...]  # assignments, in order
    value: str  # expression of sigma(z)
    factors: tuple["str | None", ...]  # index k = 1..n: expression, or None where it vanishes
    helpers: frozenset[str]
    # how the weights were derived: "symbolic" (sympy's derivatives, within the size bound) or
    # "taylor" (univariate Taylor arithmetic on the expression tree, diagramc.taylor_arith)
    route: str = "symbolic"


def _numeric_constants(expr: sp.Expr) -> sp.Expr:
    """Irrational constants (sqrt(2), pi) as 17-digit floats: tensors cannot take torch.sqrt(2)."""
    return expr.replace(
        lambda e: e.is_number and not e.is_Rational and e.is_real,
        lambda e: sp.Float(e.evalf(17), 17),
    )


def activation_code(activation: Activation, order: int, backend: str) -> ActivationCode:
    """Print sigma and sigma^(k)/k!, k = 1..order, with shared subexpressions, for one backend.

    A custom activation whose derivatives grow past the size bound
    (:meth:`Activation.symbolic`) is printed from its Taylor arithmetic instead: straight-line
    assignments of small expressions, as many as O(order^2) per node of its expression tree."""
    from ..errors import symbolic_step

    with symbolic_step(f"deriving the vertex functions of {activation.name!r} to order {order}"):
        if activation.symbolic(max(order, 1)):
            return _symbolic_code(activation, order, backend)
        return _taylor_code(activation, order, backend)


def _symbolic_code(activation: Activation, order: int, backend: str) -> ActivationCode:
    printer = PRINTERS[backend]()
    z = sp.Symbol(Z_NAME, real=True)
    order = max(order, 1)  # sigma' is always printed: it carries the series (empty at order 0)
    factors = activation.taylor_factors(order)
    nonzero = [k for k, f in enumerate(factors) if f != 0 or k == 0]
    # Auxiliaries are named after their symbols (u, v) and computed first.
    lines = _auxiliary_lines(activation, printer, z)
    exprs = [_numeric_constants(factors[k].subs(x, z)) for k in nonzero]
    taken = {Z_NAME} | {aux.symbol.name for aux in activation.auxiliaries}
    symbols = sp.numbered_symbols("t", exclude=[sp.Symbol(n) for n in taken])
    shared, reduced = sp.cse(exprs, symbols=symbols, optimizations="basic")
    lines += [f"{name} = {printer.doprint(e)}" for name, e in shared]
    printed = {}
    for k, e in zip(nonzero, reduced):
        text = printer.doprint(e)
        printed[k] = printer.constant(text) if not e.free_symbols else text
    return ActivationCode(
        lines=tuple(lines),
        value=printed[0],
        factors=tuple(printed.get(k) for k in range(1, order + 1)),
        helpers=frozenset(printer.helpers),
    )


def _auxiliary_lines(activation: Activation, printer, z) -> list[str]:
    """One line per auxiliary; a sigmoid and its complement (s = Sigmoid(a), c = Sigmoid(-a))
    together where the printer has a form for the pair that shares one exponential."""
    definitions = {aux.symbol: aux.definition.subs(x, z) for aux in activation.auxiliaries}
    by_definition = {d: symbol for symbol, d in definitions.items()}
    lines, done = [], set()
    for symbol, definition in definitions.items():
        if symbol in done:
            continue
        complement = by_definition.get(Sigmoid(-definition.args[0])) if isinstance(definition, Sigmoid) else None
        pair = None if complement is None else printer.sigmoid_pair(
            printer.doprint(_numeric_constants(definition.args[0])), symbol.name, complement.name)
        if pair is not None:
            lines += pair
            done.add(complement)
        else:
            lines.append(f"{symbol.name} = {printer.doprint(_numeric_constants(definition))}")
    return lines


_SYMPY_CALLS = {"sigmoid": Sigmoid}


def _taylor_code(activation: Activation, order: int, backend: str) -> ActivationCode:
    from ..taylor_arith import sum_text

    printer = PRINTERS[backend]()
    order = max(order, 1)
    program = activation.series(order)
    lines = []
    for name, kind, payload in program.assignments:
        if kind == "sum":
            text = sum_text(payload)
        elif kind == "call":
            function = _SYMPY_CALLS.get(payload[0]) or getattr(sp, payload[0])
            text = printer.doprint(function(sp.Symbol(payload[1], real=True)))
        elif kind == "reciprocal":
            text = f"1.0/{payload[0]}"
        elif payload[1] < 0:  # numba raises ZeroDivisionError for 0.0**-p; 1.0/0.0 gives inf
            text = f"1.0/{payload[0]}**{-payload[1]!r}"
        else:
            text = f"{payload[0]}**{payload[1]!r}"
        lines.append(f"{name} = {text}")
    printed = []
    for k, c in enumerate(program.coefficients):
        if isinstance(c, str):
            printed.append(c)
        elif k and c == 0:
            printed.append(None)
        else:
            printed.append(printer.constant(repr(float(c))))
    return ActivationCode(
        lines=tuple(lines),
        value=printed[0],
        factors=tuple(printed[1:]),
        helpers=frozenset(printer.helpers),
        route="taylor",
    )


__all__ = ["activation_code", "ActivationCode", "Softplus", "Step"]
