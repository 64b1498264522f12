"""The sympy pieces a diagram's expression is written with, and their printers."""
from __future__ import annotations


import sympy
from sympy.printing.latex import LatexPrinter
from sympy.printing.pretty.pretty import PrettyPrinter
from sympy.printing.pretty.stringpict import prettyForm



# ----------------------------------------------------------------------------- sympy pieces

SUPERSCRIPTS = str.maketrans("0123456789()-+", "⁰¹²³⁴⁵⁶⁷⁸⁹⁽⁾⁻⁺")


def _pretty_text(printer, e) -> str:
    return "\n".join(printer._print(e).picture)


class _ReadingOrderPretty(PrettyPrinter):
    """Products in the order they were built (output line first); sums as sympy orders them."""

    def __init__(self, unicode: bool = True):
        super().__init__({"use_unicode": unicode, "order": "none", "wrap_line": False})

    def _print_Add(self, expr, order=None):
        return super()._print_Add(expr, order=order or "lex")


class _ReadingOrderLatex(LatexPrinter):
    """LaTeX twin of :class:`_ReadingOrderPretty`."""

    def __init__(self):
        super().__init__({"order": "none"})

    def _print_Add(self, expr, order=None):
        return super()._print_Add(expr, order=order or "lex")


def pretty_form_of(expr, unicode: bool = True) -> prettyForm:
    """sympy's pretty form of ``expr``, products printed in the order they were built."""
    return _ReadingOrderPretty(unicode)._print(expr)


def latex_of(expr) -> str:
    return _ReadingOrderLatex().doprint(expr)


def pretty_of(expr, unicode: bool = True) -> str:
    """Pretty text of ``expr``, never wrapped at 80 columns (sympy's default), no trailing blanks."""
    return "\n".join(line.rstrip() for line in pretty_form_of(expr, unicode).render(wrap_line=False).split("\n"))


class Propagator(sympy.Function):
    """``P^(m<-l)_{row col} = dz^(m)_row / dh^(l)_col``; ``l = 0`` is the input line ``dz^(m)/dx``.

    A sympy function of ``(m, l, row, col)`` with printers for the paper's notation; it
    never evaluates by itself, numbers are substituted by :meth:`Diagram.evaluate`.
    """

    nargs = 4

    @classmethod
    def eval(cls, *args):
        return None

    def _latex(self, printer, exp=None):
        m, l, r, c = (printer._print(a) for a in self.args)
        tex = r"P^{(%s \leftarrow %s)}_{%s %s}" % (m, l, r, c)
        return tex if exp is None else r"\left(%s\right)^{%s}" % (tex, exp)

    def _pretty(self, printer):
        m, l, r, c = self.args
        if printer._use_unicode:
            head = "P" + f"({m}".translate(SUPERSCRIPTS) + "←" + f"{l})".translate(SUPERSCRIPTS)
        else:
            head = f"P^({m}<-{l})"
        return prettyForm(f"{head}[{_pretty_text(printer, r)},{_pretty_text(printer, c)}]")

    def _sympystr(self, printer):
        m, l, r, c = (printer._print(a) for a in self.args)
        return f"P^({m}<-{l})[{r}, {c}]"


class ActivationDerivative(sympy.Function):
    """``sigma^(k)(z^(l)_j)``: the vertex factor, a function of ``(k, l, j)``."""

    nargs = 3

    @classmethod
    def eval(cls, *args):
        return None

    def _latex(self, printer, exp=None):
        k, l, j = (printer._print(a) for a in self.args)
        tex = r"\sigma^{(%s)}\left(z^{(%s)}_{%s}\right)" % (k, l, j)
        return tex if exp is None else r"\left(%s\right)^{%s}" % (tex, exp)

    def _pretty(self, printer):
        k, l, j = self.args
        if printer._use_unicode:
            s = "σ" + f"({k})".translate(SUPERSCRIPTS) + "(z" + f"({l})".translate(SUPERSCRIPTS) + f"[{_pretty_text(printer, j)}])"
        else:
            s = f"sigma^({k})(z^({l})[{_pretty_text(printer, j)}])"
        return prettyForm(s)

    def _sympystr(self, printer):
        k, l, j = (printer._print(a) for a in self.args)
        return f"sigma^({k})(z^({l})[{j}])"


OUTPUT_INDEX = sympy.Symbol("o", integer=True, nonnegative=True)
NETWORK_OUTPUT = sympy.IndexedBase("f")


def width_symbol(layer: int) -> sympy.Symbol:
    """``n_l``, the number of neurons on hidden layer ``l`` (the range of its sums)."""
    return sympy.Symbol(f"n_{layer}", integer=True, positive=True)
