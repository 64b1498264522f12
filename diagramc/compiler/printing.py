"""Printing stage: sympy vertex functions -> NumPy / PyTorch source.

Printers subclass SymPy's own (``_print_<Class>`` methods), as SymForce and lambdify do.
Common subexpressions of all vertex weights sigma^(k)/k! are shared through ``sympy.cse``,
so the activation and its auxiliaries are evaluated once per layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.printing.numpy import NumPyPrinter
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.pycode import PythonCodePrinter
from sympy.printing.pytorch import TorchPrinter

from ..activations import Activation, Softplus, Step, x

# The pre-activation variable's name inside generated code.
Z_NAME = "z"


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


def _numeric_constants(expr: sp.Expr) -> sp.Expr:
    """Irrational constants (sqrt(2), pi) as 17-digit floats: tensors cannot take torch.sqrt(2)."""
    return expr.replace(
        lambda e: e.is_number and not e.is_Rational and e.is_real,
        lambda e: sp.Float(e.evalf(17), 17),
    )


def activation_code(activation: Activation, order: int, backend: str) -> ActivationCode:
    """Print sigma and sigma^(k)/k!, k = 1..order, with shared subexpressions, for one backend."""
    printer = PRINTERS[backend]()
    z = sp.Symbol(Z_NAME, real=True)
    order = max(order, 1)  # sigma' is always printed: it carries the series (empty at order 0)
    factors = activation.taylor_factors(order)
    nonzero = [k for k, f in enumerate(factors) if f != 0 or k == 0]
    # Auxiliaries are named after their symbols (u, v) and computed first.
    lines = [
        f"{aux.symbol.name} = {printer.doprint(_numeric_constants(aux.definition.subs(x, z)))}"
        for aux in activation.auxiliaries
    ]
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


__all__ = ["activation_code", "ActivationCode", "Softplus", "Step"]
