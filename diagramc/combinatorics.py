"""The combinatorics of the Feynman rules: which diagrams make up ``D^alpha f``.

A diagram for ``D^alpha f`` of an MLP with ``H`` hidden layers (CONTRACT.md section 3)
is a rooted tree. Its leaves are input lines, one per unit of ``alpha``; every internal
node is a vertex ``sigma^(k)(z^(l))`` on a hidden layer ``l in 1..H`` with ``k >= 2``
children, each child a leaf or a vertex on a lower layer. The output line sits above
the top node (the "root" of the JSON form) and has exactly one child.

Conventions fixed here, and why:

* Trees are kept in canonical form: the children of a vertex are sorted by
  :attr:`Node.key` (inputs before vertices, inputs by variable, vertices by layer then
  recursively by their children). Two trees are the same diagram exactly when their
  canonical forms are equal, so merging is a dictionary look-up, never an isomorphism test.
* :func:`diagrams` returns (and :func:`iter_diagrams` yields, lazily, in the same order)
  the diagrams sorted by the key of their top node: root layer ascending, then children
  lexicographically. The order is a pure function of ``(multi_index, hidden_layers)``.
* The multiplicity of a diagram is ``alpha! / |Aut|``: the group of permutations of
  equal-variable leaves acts on trees with distinguishable leaves, a diagram is an orbit,
  and the stabiliser of a labelled tree is the automorphism group of the diagram.
* Order 0 is defined, not refused: ``D^0 f = f`` is one "diagram", the bare output line
  (``root is None``, JSON ``{"multiplicity": 1, "root": null}``), so that sums over
  diagrams also reproduce the value of the network.
* Indices are 0-based everywhere (variables, neurons, outputs), like the JSON form and
  the numpy arrays the values are compared with.

The value of a diagram for output ``o`` (what :meth:`Diagram.expression` writes and
:meth:`Diagram.evaluate` computes) is the sum over one neuron index per vertex of the
product of: the vertex factors ``sigma^(k)(z^(l)_j)``; one propagator per edge,
``P^(m<-l)_{j i} = dz^(m)_j / dh^(l)_i`` from a child (layer ``l``, neuron ``i``; an input
line of variable ``v`` is layer 0, index ``v``, since ``h^(0) = x``) into its parent
(layer ``m``, neuron ``j``); and the output line ``P^(L<-l)_{o j} = df_o / dh^(l)_j``
with ``L = H + 1``. Then ``D^alpha f_o = sum_diagrams multiplicity * value``.
"""
from __future__ import annotations

import itertools
import math
from functools import reduce
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import sympy
from sympy.printing.latex import LatexPrinter
from sympy.printing.pretty.pretty import PrettyPrinter
from sympy.printing.pretty.stringpict import prettyForm

from . import multi_index as mi
from .errors import DiagramcError

__all__ = [
    "Input",
    "Vertex",
    "Node",
    "Diagram",
    "iter_diagrams",
    "diagrams",
    "count",
    "labelled_trees",
    "distinct_diagrams",
    "ForwardPass",
    "evaluate_diagrams",
    "Propagator",
    "ActivationDerivative",
    "total_expression",
    "pretty_total",
    "latex_total",
    "tikz_document",
    "derivative_text",
    "derivative_latex",
]


# ----------------------------------------------------------------------------- tree nodes


class Node:
    """A node of a diagram: an input line (:class:`Input`) or a vertex (:class:`Vertex`).

    Nodes are immutable and compare, hash and sort by their canonical :attr:`key`, which
    determines the whole subtree; that is what makes identical diagrams merge.
    """

    __slots__ = ("key", "order", "_hash")

    layer: int  # 0 for input lines

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other):
        return isinstance(other, Node) and self.key == other.key

    def __lt__(self, other):
        return self.key < other.key

    def __hash__(self):
        return self._hash

    def multi_index(self, d: int) -> tuple[int, ...]:
        """The exponent vector of this subtree's leaves, in ``d`` variables."""
        return mi.exponents(self.variables(), d)

    def variables(self) -> tuple[int, ...]:
        """The variables of the leaves, sorted."""
        raise NotImplementedError

    def automorphisms(self) -> int:
        """Size of the group of leaf permutations (within equal variables) fixing the tree."""
        raise NotImplementedError

    def to_json(self) -> dict:
        raise NotImplementedError

    @staticmethod
    def from_json(data: Any) -> "Node":
        """Parse the contract's JSON node form; one-line :class:`DiagramcError` if malformed."""
        if not isinstance(data, dict):
            raise DiagramcError(f"diagram node {data!r} must be an object with 'input' or 'layer'")
        if "input" in data:
            if set(data) != {"input"}:
                raise DiagramcError(f"input node {data!r} must have the single key 'input'")
            v = data["input"]
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise DiagramcError(f"input node {data!r}: 'input' must be a non-negative integer")
            return Input(v)
        if set(data) != {"layer", "children"}:
            raise DiagramcError(f"vertex node {data!r} must have exactly the keys 'layer' and 'children'")
        layer, children = data["layer"], data["children"]
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise DiagramcError(f"vertex node: 'layer' must be an integer, got {layer!r}")
        if not isinstance(children, list):
            raise DiagramcError(f"vertex node: 'children' must be a list, got {children!r}")
        return Vertex(layer, [Node.from_json(c) for c in children])


class Input(Node):
    """An input line of variable ``variable`` (0-based): a leaf of the tree."""

    __slots__ = ("variable",)

    def __init__(self, variable: int):
        variable = int(variable)
        if variable < 0:
            raise DiagramcError(f"input variable must be >= 0, got {variable}")
        object.__setattr__(self, "variable", variable)
        object.__setattr__(self, "key", (0, variable))
        object.__setattr__(self, "order", 1)
        object.__setattr__(self, "_hash", hash(self.key))

    layer = 0

    def variables(self):
        return (self.variable,)

    def automorphisms(self):
        return 1

    def to_json(self):
        return {"input": self.variable}

    def __repr__(self):
        return f"Input({self.variable})"


class Vertex(Node):
    """A vertex ``sigma^(k)(z^(layer))`` with ``k = len(children) >= 2`` lines coming in.

    Children are stored sorted by key (canonical form), whatever order they are given in.
    """

    __slots__ = ("layer", "children", "_aut", "_vars")

    def __init__(self, layer: int, children: Sequence[Node], _sorted: bool = False):
        layer = int(layer)
        children = tuple(children) if _sorted else tuple(sorted(children))
        if layer < 1:
            raise DiagramcError(f"a vertex sits on a hidden layer >= 1, got layer {layer}")
        if len(children) < 2:
            raise DiagramcError(
                f"a vertex on layer {layer} needs at least 2 children (it is sigma^(k) with k >= 2), "
                f"got {len(children)}"
            )
        for c in children:
            if not isinstance(c, Node):
                raise DiagramcError(f"child {c!r} of a vertex is not a diagram node")
            if c.layer >= layer:
                raise DiagramcError(
                    f"a child of a vertex on layer {layer} must be an input or a vertex on a lower layer, "
                    f"got one on layer {c.layer}"
                )
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "children", children)
        object.__setattr__(self, "key", (1, layer, tuple(c.key for c in children)))
        object.__setattr__(self, "order", sum(c.order for c in children))
        object.__setattr__(self, "_hash", hash(self.key))
        object.__setattr__(self, "_aut", None)
        object.__setattr__(self, "_vars", None)

    @property
    def k(self) -> int:
        """The derivative order of the activation at this vertex: the number of lines in."""
        return len(self.children)

    def variables(self):
        if self._vars is None:
            object.__setattr__(self, "_vars", tuple(sorted(v for c in self.children for v in c.variables())))
        return self._vars

    def automorphisms(self):
        # Aut(vertex) = prod Aut(child) x prod (number of equal children)! : equal subtrees can
        # be swapped wholesale, and nothing else moves leaves between different children.
        if self._aut is None:
            n = math.prod(c.automorphisms() for c in self.children)
            for _, group in itertools.groupby(self.children):
                n *= math.factorial(len(list(group)))
            object.__setattr__(self, "_aut", n)
        return self._aut

    def to_json(self):
        return {"layer": self.layer, "children": [c.to_json() for c in self.children]}

    def __repr__(self):
        return f"Vertex({self.layer}, {list(self.children)!r})"


def _walk(node: Node) -> Iterator[Node]:
    """Pre-order traversal, children in canonical order."""
    yield node
    if isinstance(node, Vertex):
        for c in node.children:
            yield from _walk(c)


# ----------------------------------------------------------------------------- sympy pieces

_SUP = str.maketrans("0123456789()-+", "⁰¹²³⁴⁵⁶⁷⁸⁹⁽⁾⁻⁺")


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


def _pretty_form(expr, unicode: bool = True) -> prettyForm:
    """sympy's pretty form of ``expr``, products printed in the order they were built."""
    return _ReadingOrderPretty(unicode)._print(expr)


def _latex(expr) -> str:
    return _ReadingOrderLatex().doprint(expr)


def _pretty(expr, unicode: bool = True) -> str:
    """Pretty text of ``expr``, never wrapped at 80 columns (sympy's default), no trailing blanks."""
    return "\n".join(line.rstrip() for line in _pretty_form(expr, unicode).render(wrap_line=False).split("\n"))


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
            head = "P" + f"({m}".translate(_SUP) + "←" + f"{l})".translate(_SUP)
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
            s = "σ" + f"({k})".translate(_SUP) + "(z" + f"({l})".translate(_SUP) + f"[{_pretty_text(printer, j)}])"
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


# ----------------------------------------------------------------------------- diagrams


class Diagram:
    """One diagram of ``D^alpha f``: a canonical tree, its multiplicity and its context.

    Immutable and hashable. ``root`` is the node under the output line (``None`` for
    order 0, an :class:`Input` for order 1, else a :class:`Vertex`).
    """

    __slots__ = ("root", "multiplicity", "multi_index", "hidden_layers", "_graph")

    def __init__(self, root: Node | None, multi_index: Sequence[int], hidden_layers: int,
                 multiplicity: int | None = None):
        alpha = mi.validate(multi_index)
        H = _check_layers(hidden_layers)
        if root is None:
            if sum(alpha):
                raise DiagramcError(f"only order 0 has no tree; multi-index {alpha} has order {sum(alpha)}")
        else:
            if not isinstance(root, Node):
                raise DiagramcError(f"diagram root {root!r} is not a diagram node")
            if any(v >= len(alpha) for v in root.variables()) or root.multi_index(len(alpha)) != alpha:
                raise DiagramcError(
                    f"the diagram's input lines {list(root.variables())} do not make up multi-index {alpha}"
                )
            if root.layer > H:
                raise DiagramcError(f"the diagram has a vertex on layer {root.layer} but only {H} hidden layers")
        computed = mi.factorial(alpha) // (root.automorphisms() if root is not None else 1)
        if multiplicity is not None and (isinstance(multiplicity, bool) or not isinstance(multiplicity, (int, np.integer))):
            raise DiagramcError(f"multiplicity must be a positive integer, got {multiplicity!r}")
        if multiplicity is not None and multiplicity != computed:
            raise DiagramcError(f"multiplicity {multiplicity} disagrees with the tree's multiplicity {computed}")
        object.__setattr__(self, "root", root)
        object.__setattr__(self, "multiplicity", computed)
        object.__setattr__(self, "multi_index", alpha)
        object.__setattr__(self, "hidden_layers", H)
        object.__setattr__(self, "_graph", None)

    def __setattr__(self, name, value):
        raise AttributeError("Diagram is immutable")

    # -- identity ----------------------------------------------------------------------
    def _ident(self):
        return (self.root.key if self.root is not None else None, self.multi_index, self.hidden_layers)

    def __eq__(self, other):
        return isinstance(other, Diagram) and self._ident() == other._ident()

    def __hash__(self):
        return hash(self._ident())

    def __repr__(self):
        return (f"Diagram(multiplicity={self.multiplicity}, multi_index={self.multi_index}, "
                f"hidden_layers={self.hidden_layers}, root={self.root!r})")

    @property
    def order(self) -> int:
        return sum(self.multi_index)

    @property
    def output_layer(self) -> int:
        """``L = H + 1``, the affine output layer."""
        return self.hidden_layers + 1

    def vertices(self) -> list[Vertex]:
        """The vertices, pre-order from the top (the order their neuron indices are named in)."""
        return [n for n in _walk(self.root) if isinstance(n, Vertex)] if self.root is not None else []

    # -- JSON ---------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The contract's form: ``{"multiplicity": m, "root": <node>}`` (``root`` null at order 0)."""
        return {"multiplicity": self.multiplicity,
                "root": self.root.to_json() if self.root is not None else None}

    @classmethod
    def from_json(cls, data: Any, hidden_layers: int | None = None, inputs: int | None = None) -> "Diagram":
        """Inverse of :meth:`to_json`.

        The JSON form does not carry the context, so ``inputs`` (``d``, default: the
        highest variable + 1) and ``hidden_layers`` (default: the highest vertex layer,
        which is a lower bound; pass it to get the right output layer) may be given. A
        multiplicity that disagrees with the tree is an error, not silently replaced.
        """
        if not isinstance(data, dict) or "root" not in data:
            raise DiagramcError("a diagram in JSON is an object with keys 'multiplicity' and 'root'")
        root = Node.from_json(data["root"]) if data["root"] is not None else None
        variables = root.variables() if root is not None else ()
        d = inputs if inputs is not None else (max(variables) + 1 if variables else 1)
        if any(v >= d for v in variables):
            raise DiagramcError(f"the diagram uses variable {max(variables)} but inputs={d}")
        H = hidden_layers if hidden_layers is not None else (root.layer if root is not None else 0)
        alpha = mi.exponents(variables, d)
        return cls(root, alpha, H, data.get("multiplicity"))

    # -- graph --------------------------------------------------------------------------
    @property
    def graph(self):
        """A networkx ``DiGraph``: node 0 is the output, then the tree in pre-order.

        Node attributes: ``kind`` (``"output"``, ``"vertex"``, ``"input"``), ``layer``
        (0 for inputs, ``H + 1`` for the output), ``variable`` (inputs), ``k`` (vertices:
        derivative order of sigma), ``index`` (vertices: the name of their neuron index).
        Edges are propagators, directed from the inputs towards the output, with
        ``propagator = (m, l)`` for ``P^(m<-l)``.
        """
        if self._graph is None:
            import networkx as nx

            g = nx.DiGraph()
            L = self.output_layer
            g.add_node(0, kind="output", layer=L)
            names = iter(self._index_names())
            counter = itertools.count(1)

            def add(node, parent_id, parent_layer):
                nid = next(counter)
                if isinstance(node, Input):
                    g.add_node(nid, kind="input", layer=0, variable=node.variable)
                else:
                    g.add_node(nid, kind="vertex", layer=node.layer, k=node.k, index=str(next(names)))
                g.add_edge(nid, parent_id, propagator=(parent_layer, node.layer))
                if isinstance(node, Vertex):
                    for c in node.children:
                        add(c, nid, node.layer)

            if self.root is not None:
                add(self.root, 0, L)
            g.graph.update(multiplicity=self.multiplicity, multi_index=self.multi_index,
                           hidden_layers=self.hidden_layers)
            object.__setattr__(self, "_graph", g)
        return self._graph

    # -- pictures -----------------------------------------------------------------------
    def layout(self) -> dict[int, tuple[float, float]]:
        """Positions of the :attr:`graph` nodes for drawing: ``node -> (x, y)``.

        ``y`` is the layer (inputs 0 at the bottom, output ``H + 1`` at the top), so the
        strictly increasing layers towards the root read off the picture; inputs are
        spaced one unit apart in canonical order and a vertex sits above the mean of its
        children, so no edges cross.
        """
        g = self.graph
        pos: dict[int, tuple[float, float]] = {}
        leaves = itertools.count()

        def place(nid):
            kids = sorted(g.predecessors(nid))
            if not kids:
                x = float(next(leaves)) if g.nodes[nid]["kind"] == "input" else 0.0
            else:
                x = sum(place(c) for c in kids) / len(kids)
            pos[nid] = (x, float(g.nodes[nid]["layer"]))
            return x

        place(0)
        return pos

    def tikz(self) -> str:
        """TikZ-Feynman source of the diagram (``\\usepackage{tikz-feynman}``, LuaLaTeX).

        Explicit coordinates from :meth:`layout`: inputs ``x_v`` at the bottom, dotted
        vertices labelled ``\\sigma^{(k)}(z^{(l)})``, the output ``f`` on top.
        The picture alone; :func:`tikz_document` makes a whole compilable document.
        """
        g, pos = self.graph, self.layout()
        lines = [f"% diagram of D^{list(self.multi_index)} f, {self.hidden_layers} hidden layers, "
                 f"multiplicity {self.multiplicity}",
                 r"\begin{tikzpicture}", r"\begin{feynman}"]
        for nid, a in sorted(g.nodes(data=True)):
            x, y = pos[nid]
            at = f"at ({x:g}, {1.5 * y:g})"
            if a["kind"] == "output":
                lines.append(rf"  \vertex (n{nid}) {at} {{\(f\)}};")
            elif a["kind"] == "input":
                lines.append(rf"  \vertex (n{nid}) {at} {{\(x_{{{a['variable']}}}\)}};")
            else:
                # the label goes on the side away from the line up to the parent, so they never cross
                (parent,) = g.successors(nid)
                side = "left" if pos[parent][0] > x + 1e-9 else "right"
                lines.append(rf"  \vertex [dot, label={side}:{{\(\sigma^{{({a['k']})}}(z^{{({a['layer']})}})\)}}] "
                             rf"(n{nid}) {at} {{}};")
        if g.number_of_edges():
            edges = ", ".join(f"(n{u}) -- (n{v})" for u, v in sorted(g.edges()))
            lines.append(rf"  \diagram* {{ {edges} }};")
        lines += [r"\end{feynman}", r"\end{tikzpicture}"]
        return "\n".join(lines) + "\n"

    # -- symbolic value -----------------------------------------------------------------
    def _index_names(self) -> list[sympy.Symbol]:
        """One summation index per vertex, in pre-order: ``j_l``, then ``j'_l``, ``j''_l`` on a shared layer.

        Per occurrence, not per node object: equal subtrees are distinct vertices.
        """
        seen: dict[int, int] = {}
        names = []
        for v in self.vertices():
            p = seen.get(v.layer, 0)
            seen[v.layer] = p + 1
            names.append(sympy.Symbol(f"j{chr(39) * p}_{v.layer}", integer=True, nonnegative=True))
        return names

    def expression(self, output: Any = None, with_multiplicity: bool = False, display: bool = False) -> sympy.Expr:
        """The diagram's value for output ``output`` (default: the symbol ``o``), as sympy.

        Written with :class:`Propagator`, :class:`ActivationDerivative` and sums over one
        neuron index per vertex running over ``0..n_l-1``. Without ``with_multiplicity``
        it is the bare value that :meth:`evaluate` computes; the term in ``D^alpha f`` is
        ``multiplicity`` times it.

        With ``display`` the products are left unevaluated in the order of the paper's
        reading, from the output line down to the input lines (output line, vertex, the
        lines coming into it, ...), each line its own factor; print it with
        ``order="none"`` (as :meth:`pretty` and :meth:`latex` do). Evaluated, it is the
        same expression.
        """
        o = OUTPUT_INDEX if output is None else sympy.sympify(output)
        L = self.output_layer
        if self.root is None:
            value = NETWORK_OUTPUT[o]
        else:
            names = self._index_names()
            pending = iter(names)
            factors: list[sympy.Expr] = []

            def line_into(node, m, j):
                """Factors of the line from ``node`` up to a parent on layer ``m`` with index ``j``."""
                if isinstance(node, Input):
                    factors.append(Propagator(m, 0, j, node.variable))
                    return
                jn = next(pending)  # pre-order, like _index_names
                factors.append(Propagator(m, node.layer, j, jn))
                factors.append(ActivationDerivative(node.k, node.layer, jn))
                for c in node.children:
                    line_into(c, node.layer, jn)

            line_into(self.root, L, o)
            value = sympy.Mul(*factors, evaluate=not display)
            # sympy's first limit is the innermost sum: list them so the top vertex's is outermost
            limits = [(j, 0, width_symbol(v.layer) - 1) for j, v in zip(names, self.vertices())][::-1]
            if limits:
                value = sympy.Sum(value, *limits)
        if not with_multiplicity or (display and self.multiplicity == 1):
            return value
        return sympy.Mul(self.multiplicity, value, evaluate=not display)

    def pretty(self, with_multiplicity: bool = True, unicode: bool = True) -> str:
        """The term ``multiplicity * value`` through sympy's pretty printer, never wrapped."""
        return _pretty(self.expression(with_multiplicity=with_multiplicity, display=True), unicode)

    def latex(self, with_multiplicity: bool = True) -> str:
        """LaTeX of the term ``multiplicity * value``, factors in reading order."""
        return _latex(self.expression(with_multiplicity=with_multiplicity, display=True))

    def short(self, unicode: bool = True) -> str:
        """One line: ``σ⁽²⁾(z⁽²⁾; x0, σ⁽²⁾(z⁽¹⁾; x0, x1))``, each vertex with the lines coming into it.

        The output line is implicit; order 1 is the bare input line ``x3``, order 0 ``f``.
        """
        def text(node):
            if isinstance(node, Input):
                return f"x{node.variable}"
            inner = ", ".join(text(c) for c in node.children)
            if unicode:
                return "σ" + f"({node.k})".translate(_SUP) + "(z" + f"({node.layer})".translate(_SUP) + f"; {inner})"
            return f"sigma^({node.k})(z^({node.layer}); {inner})"

        return "f" if self.root is None else text(self.root)

    # -- numbers ------------------------------------------------------------------------
    def evaluate(self, params: Sequence[Any], x: Any, activation_derivative: Callable,
                 method: str = "numpy") -> np.ndarray:
        """The diagram's bare value (without multiplicity) for every output, on concrete weights.

        ``params = [W1, b1, ..., WL, bL]`` (``W^(l)`` of shape ``(n_l, n_{l-1})``), ``x`` of
        shape ``(d,)`` or ``(batch, d)``; ``activation_derivative(k, z)`` returns
        ``sigma^(k)(z)`` elementwise, ``k = 0`` being sigma itself. Returns ``(m,)`` or
        ``(batch, m)``. ``method="numpy"`` contracts the tree with numpy (any batch);
        ``method="sympy"`` expands :meth:`expression` on the given widths and substitutes
        the numbers, an independent check of the printed formula (tiny networks only).
        """
        net = ForwardPass(params, x, activation_derivative, hidden_layers=self.hidden_layers)
        if method == "numpy":
            out = net.diagram_value(self.root)
        elif method == "sympy":
            out = np.stack([self._evaluate_sympy(net, b) for b in range(net.batch)])
        else:
            raise DiagramcError(f"unknown evaluation method {method!r}: expected 'numpy' or 'sympy'")
        return out[0] if net.single else out

    def _evaluate_sympy(self, net: "ForwardPass", b: int) -> np.ndarray:
        widths = {width_symbol(l): net.widths[l] for l in range(1, self.hidden_layers + 1)}
        values = []
        for o in range(net.widths[-1]):
            expr = self.expression(output=o).subs(widths).doit()

            def number(e):
                if isinstance(e, Propagator):
                    m, l, r, c = (int(a) for a in e.args)
                    return sympy.Float(net.propagator(m, l)[b, r, c], 30)
                if isinstance(e, ActivationDerivative):
                    k, l, j = (int(a) for a in e.args)
                    return sympy.Float(net.sigma(k, l)[b, j], 30)
                return sympy.Float(net.output[b, int(e.indices[0])], 30)

            atoms = expr.atoms(Propagator, ActivationDerivative, sympy.Indexed)
            values.append(float(expr.xreplace({a: number(a) for a in atoms})))
        return np.array(values, dtype=net.dtype)


def _check_layers(hidden_layers: Any) -> int:
    if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, (int, np.integer)) or hidden_layers < 0:
        raise DiagramcError(f"hidden layers must be a non-negative integer, got {hidden_layers!r}")
    return int(hidden_layers)


# ----------------------------------------------------------------------------- the whole sum


def _one_derivative(diagrams: Sequence[Diagram]) -> tuple[tuple[int, ...], int]:
    """The common (multi-index, hidden layers) of a list of diagrams; an error if they mix."""
    diagrams = list(diagrams)
    if not diagrams:
        raise DiagramcError("no diagrams: the derivative is identically zero (a linear network)")
    alpha, H = diagrams[0].multi_index, diagrams[0].hidden_layers
    if any(d.multi_index != alpha or d.hidden_layers != H for d in diagrams):
        raise DiagramcError("the diagrams do not all belong to one derivative D^alpha f with one depth")
    return alpha, H


_SUB = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")


def derivative_text(multi_index: Sequence[int], unicode: bool = True) -> str:
    """``∂³fₒ/∂x₀²∂x₁`` (one line) for the left-hand side of ``D^alpha f_o = ...``."""
    alpha = mi.validate(multi_index)
    n = sum(alpha)
    if not unicode:
        return f"D^({','.join(map(str, alpha))}) f_o"
    f = "fₒ"
    if n == 0:
        return f
    den = "".join("∂x" + str(i).translate(_SUB) + (str(a).translate(_SUP) if a > 1 else "")
                  for i, a in enumerate(alpha) if a)
    return f"∂{str(n).translate(_SUP) if n > 1 else ''}{f}/{den}"


def derivative_latex(multi_index: Sequence[int]) -> str:
    r"""``\frac{\partial^{3} f_{o}}{\partial x_{0}^{2} \partial x_{1}}``."""
    alpha = mi.validate(multi_index)
    n = sum(alpha)
    if n == 0:
        return "f_{o}"
    den = " ".join(r"\partial x_{%d}%s" % (i, f"^{{{a}}}" if a > 1 else "") for i, a in enumerate(alpha) if a)
    return r"\frac{\partial%s f_{o}}{%s}" % (f"^{{{n}}}" if n > 1 else "", den)


def total_expression(diagrams: Sequence[Diagram], output: Any = None) -> sympy.Expr:
    """``sum multiplicity * value`` over the diagrams of one ``D^alpha f``: evaluated sympy.

    Equal to ``D^alpha f_o`` when ``diagrams`` are all diagrams of ``alpha``.
    """
    _one_derivative(diagrams)
    return sympy.Add(*(d.expression(output, with_multiplicity=True) for d in diagrams))


def pretty_total(diagrams: Sequence[Diagram], unicode: bool = True) -> str:
    """``D^alpha f_o = term + term + ...`` as text, one diagram's term below the other.

    Each term is sympy's pretty form (products in reading order, see
    :meth:`Diagram.expression`), the ``+`` on the term's baseline; nothing is wrapped.
    """
    alpha, _ = _one_derivative(diagrams)
    lines = [derivative_text(alpha, unicode) + " ="]
    for i, d in enumerate(diagrams):
        form = _pretty_form(d.expression(with_multiplicity=True, display=True), unicode)
        rows = form.render(wrap_line=False).split("\n")
        if i and len(rows) > 1:
            lines.append("")  # a blank line between multi-line terms keeps them apart
        for r, row in enumerate(rows):
            lead = "+ " if (i and r == form.baseline) else "  "
            lines.append((lead + row).rstrip())
    return "\n".join(lines)


def latex_total(diagrams: Sequence[Diagram]) -> str:
    r"""``D^alpha f_o = ...`` as an amsmath ``align*`` environment, one diagram per line."""
    alpha, _ = _one_derivative(diagrams)
    rows = [(r"%s &= " % derivative_latex(alpha) if i == 0 else r"&\quad + ") + d.latex()
            for i, d in enumerate(diagrams)]
    return "\\begin{align*}\n" + " \\\\\n".join(rows) + "\n\\end{align*}"


def tikz_document(diagrams: Sequence[Diagram]) -> str:
    """A complete LaTeX document with the TikZ-Feynman picture of every diagram.

    Compiles with ``lualatex`` or ``pdflatex`` (explicit coordinates: no automatic graph
    layout is needed) in a standard TeX installation with the tikz-feynman package.
    Each picture is captioned with its number in :func:`diagrams` order and its multiplicity.
    """
    alpha, H = _one_derivative(diagrams)
    total = sum(d.multiplicity for d in diagrams)
    head = [
        f"% TikZ-Feynman pictures of the {len(diagrams)} diagrams of D^{list(alpha)} f with {H} hidden layers",
        f"% ({total} labelled trees). Generated by diagramc; compile with lualatex or pdflatex.",
        r"\documentclass{article}",
        r"\usepackage[compat=1.1.0]{tikz-feynman}",
        r"\pagestyle{empty}",
        r"\begin{document}",
        r"\noindent",
    ]
    body = []
    for i, d in enumerate(diagrams, 1):
        body.append(r"\begin{tabular}[b]{c}")
        body.append(d.tikz().rstrip("\n"))
        body.append(rf"\\ ({i}) \(\times {d.multiplicity}\)")
        body.append(r"\end{tabular}\hspace{1em}\allowbreak")
    return "\n".join(head + body + [r"\end{document}"]) + "\n"


# ----------------------------------------------------------------------------- numeric values


class ForwardPass:
    """One forward pass of the MLP with everything diagrams are made of.

    Holds ``z^(l)``, ``sigma^(k)(z^(l))`` and the propagators ``P^(m<-l)``, each computed
    once on demand, so evaluating many diagrams on the same point shares the work. Batched
    over the first axis of ``x``.
    """

    def __init__(self, params: Sequence[Any], x: Any, activation_derivative: Callable,
                 hidden_layers: int | None = None):
        params = [np.asarray(p) for p in params]
        if len(params) < 2 or len(params) % 2:
            raise DiagramcError(f"params must be [W1, b1, ..., WL, bL], got {len(params)} arrays")
        H = len(params) // 2 - 1
        if hidden_layers is not None and H != hidden_layers:
            raise DiagramcError(f"params describe {H} hidden layers, the diagram {hidden_layers}")
        Ws, bs = params[0::2], params[1::2]
        x = np.asarray(x)
        self.single = x.ndim == 1
        x = x[None, :] if self.single else x
        if x.ndim != 2:
            raise DiagramcError(f"x must have shape (d,) or (batch, d), got {x.shape}")
        widths = [x.shape[1]]
        for l, (W, b) in enumerate(zip(Ws, bs), start=1):
            if W.ndim != 2 or W.shape[1] != widths[-1] or b.shape != (W.shape[0],):
                raise DiagramcError(
                    f"W{l} must have shape (n_{l}, {widths[-1]}) and b{l} shape (n_{l},), got {W.shape} and {b.shape}"
                )
            widths.append(W.shape[0])
        self.widths, self.W, self.H, self.batch = widths, [None] + Ws, H, x.shape[0]
        self.dtype = np.result_type(x, *params)
        self._act = activation_derivative
        self.z: list[Any] = [None]
        h = x
        for l in range(1, H + 1):
            self.z.append(h @ Ws[l - 1].T + bs[l - 1])
            h = np.asarray(activation_derivative(0, self.z[l]))
        self.output = h @ Ws[H].T + bs[H]
        self._sigma: dict = {}
        self._P: dict = {}

    def sigma(self, k: int, layer: int) -> np.ndarray:
        """``sigma^(k)(z^(layer))``, shape ``(batch, n_layer)``."""
        if (k, layer) not in self._sigma:
            self._sigma[k, layer] = np.broadcast_to(np.asarray(self._act(k, self.z[layer])), self.z[layer].shape)
        return self._sigma[k, layer]

    def propagator(self, m: int, l: int) -> np.ndarray:
        """``P^(m<-l) = dz^(m)/dh^(l) = W^(m) diag(sigma'(z^(m-1))) ... W^(l+1)``, ``(batch, n_m, n_l)``."""
        if (m, l) not in self._P:
            if m == l + 1:
                P = np.broadcast_to(self.W[m], (self.batch,) + self.W[m].shape)
            else:
                below = self.propagator(m - 1, l) * self.sigma(1, m - 1)[:, :, None]
                P = np.einsum("ij,bjk->bik", self.W[m], below)
            self._P[m, l] = P
        return self._P[m, l]

    def _line(self, node: Node, m: int) -> np.ndarray:
        """The subtree ``node`` carried up to layer ``m``: ``(batch, n_m)``."""
        if isinstance(node, Input):
            return self.propagator(m, 0)[:, :, node.variable]
        v = self.sigma(node.k, node.layer)
        for c in node.children:
            v = v * self._line(c, node.layer)
        return np.einsum("bji,bi->bj", self.propagator(m, node.layer), v)

    def diagram_value(self, root: Node | None) -> np.ndarray:
        """Bare value of the diagram with this top node for every output: ``(batch, m)``."""
        if root is None:
            return self.output
        return self._line(root, self.H + 1)


def evaluate_diagrams(diagrams: Sequence[Diagram], params: Sequence[Any], x: Any,
                      activation_derivative: Callable, weighted: bool = True) -> np.ndarray:
    """Values of many diagrams on one forward pass: ``(batch, m, len(diagrams))``.

    With ``weighted`` each is multiplied by its multiplicity, so the last axis sums to
    ``D^alpha f`` when ``diagrams`` are all diagrams of ``alpha``. ``x`` of shape ``(d,)``
    gives ``(m, len(diagrams))``.
    """
    if not diagrams:
        raise DiagramcError("no diagrams to evaluate")
    net = ForwardPass(params, x, activation_derivative, hidden_layers=diagrams[0].hidden_layers)
    cols = []
    for dg in diagrams:
        if dg.hidden_layers != net.H:
            raise DiagramcError(f"diagrams mix {net.H} and {dg.hidden_layers} hidden layers")
        cols.append(net.diagram_value(dg.root) * (dg.multiplicity if weighted else 1))
    out = np.stack(cols, axis=-1)
    return out[0] if net.single else out


# ----------------------------------------------------------------------------- enumeration


def _sub_indices(beta: tuple[int, ...]) -> list[tuple[int, ...]]:
    """All non-zero gamma < beta componentwise, gamma != beta."""
    return [g for g in itertools.product(*(range(b + 1) for b in beta)) if any(g) and g != beta]


class _Enumerator:
    """Canonical trees for sub-multi-indices of one alpha, memoised on (beta, max layer)."""

    def __init__(self, d: int):
        self.d = d
        self._subtrees: dict = {}
        self._candidates: dict = {}

    def subtrees(self, beta: tuple[int, ...], layer: int) -> tuple[Node, ...]:
        """Trees with leaf multiset ``beta`` whose top is a leaf or a vertex on a layer <= ``layer``, sorted."""
        key = (beta, layer)
        if key not in self._subtrees:
            n = sum(beta)
            if n == 1:
                result = (Input(beta.index(1)),)
            elif layer == 0:
                result = ()
            else:
                # vertices on `layer` have keys above every tree topped lower: concatenation stays sorted
                result = self.subtrees(beta, layer - 1) + tuple(self.vertices(beta, layer))
            self._subtrees[key] = result
        return self._subtrees[key]

    def vertices(self, beta: tuple[int, ...], layer: int) -> Iterator[Vertex]:
        """Lazily, in key order: vertices on ``layer`` over ``beta``.

        Their children are multisets (size >= 2) of trees topped below ``layer`` whose
        multi-indices add up to ``beta``; choosing them as non-decreasing sequences in key
        order makes each multiset appear once, and in lexicographic (= key) order.
        """
        cands = self._candidates_for(beta, layer - 1)
        chosen: list[Node] = []

        def extend(remaining, start):
            if not any(remaining):
                yield Vertex(layer, chosen, _sorted=True)
                return
            for i in range(start, len(cands)):
                node, gamma = cands[i]
                if all(g <= r for g, r in zip(gamma, remaining)):
                    chosen.append(node)
                    yield from extend(tuple(r - g for r, g in zip(remaining, gamma)), i)
                    chosen.pop()

        yield from extend(beta, 0)

    def _candidates_for(self, beta, layer):
        key = (beta, layer)
        if key not in self._candidates:
            cands = [(t, g) for g in _sub_indices(beta) for t in self.subtrees(g, layer)]
            cands.sort(key=lambda c: c[0].key)
            self._candidates[key] = cands
        return self._candidates[key]


def iter_diagrams(multi_index: Sequence[int], hidden_layers: int) -> Iterator[Diagram]:
    """Yield the distinct diagrams of ``D^alpha f`` lazily, in the order of :func:`diagrams`.

    Subtrees over proper sub-multi-indices are memoised; the top level is generated one
    diagram at a time, so the first diagrams arrive before all are known.
    """
    alpha = mi.validate(multi_index)
    H = _check_layers(hidden_layers)
    n = sum(alpha)
    if n == 0:
        yield Diagram(None, alpha, H)
        return
    if n == 1:
        yield Diagram(Input(alpha.index(1)), alpha, H)
        return
    enum = _Enumerator(len(alpha))
    for layer in range(1, H + 1):
        for root in enum.vertices(alpha, layer):
            yield Diagram(root, alpha, H)


def diagrams(multi_index: Sequence[int], hidden_layers: int) -> list[Diagram]:
    """All distinct diagrams of ``D^alpha f`` for ``hidden_layers`` hidden layers.

    Sorted by the key of the top node: root layer ascending (the single vertex on
    layer 1 comes first), then children lexicographically, inputs before vertices.
    Empty when no tree exists (order >= 2 with no hidden layer: a linear network).
    """
    return list(iter_diagrams(multi_index, hidden_layers))


# ----------------------------------------------------------------------------- counting


def labelled_trees(order: int, hidden_layers: int) -> int:
    """Trees with ``order`` distinguishable leaves: the sum of all multiplicities.

    With ``A_l(x)`` the exponential generating function of trees topped by a leaf or a
    vertex on a layer <= l, a vertex is a set of >= 2 such trees from below, so
    ``A_l = A_{l-1} + (exp(A_{l-1}) - 1 - A_{l-1}) = exp(A_{l-1}) - 1`` with ``A_0 = x``
    (H = 2 gives the Bell numbers). Exact integers, no enumeration.
    """
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or order < 0:
        raise DiagramcError(f"order must be a non-negative integer, got {order!r}")
    H = _check_layers(hidden_layers)
    if order == 0:
        return 1
    a = [0] * (order + 1)
    a[1] = 1
    for _ in range(H):
        b = [1] + [0] * order  # b = exp(a): n b_n = sum k a_k b_{n-k}, written with binomials
        for n in range(1, order + 1):
            b[n] = sum(math.comb(n - 1, k - 1) * a[k] * b[n - k] for k in range(1, n + 1))
        a = [0] + b[1:]
    return a[order]


def _splits(key: tuple[int, ...]) -> list[tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """Ways to write a multi-index as delta + rest, up to permuting variables.

    ``key`` is a multi-index reduced to its sorted non-zero entries (the counts only
    depend on that). Variables with equal entries are interchangeable, so a choice of
    delta is made per group of equal entries as a multiset, weighted by the number of
    ways to assign it to the group's variables (a multinomial). Yields (weight, delta
    key, rest key) for every non-zero delta.
    """
    groups = [(v, len(list(g))) for v, g in itertools.groupby(key)]
    per_group = []
    for v, c in groups:
        options = []
        for us in itertools.combinations_with_replacement(range(v + 1), c):
            w = math.factorial(c)
            for _, same in itertools.groupby(us):
                w //= math.factorial(len(list(same)))
            options.append((w, us, tuple(v - u for u in us)))
        per_group.append(options)
    out = []
    for combo in itertools.product(*per_group):
        delta = tuple(sorted((u for _, us, _ in combo for u in us if u), reverse=True))
        if not delta:
            continue
        rest = tuple(sorted((r for _, _, rs in combo for r in rs if r), reverse=True))
        out.append((math.prod(w for w, _, _ in combo), delta, rest))
    return out


def _sub_keys(key: tuple[int, ...]) -> list[tuple[int, ...]]:
    """All reduced keys of sub-multi-indices, by increasing order (so recursions find theirs ready)."""
    keys = {()}
    for _, delta, rest in _splits(key):
        keys.add(delta)
        keys.add(rest)
    return sorted(keys, key=lambda k: (sum(k), k))


def distinct_diagrams(multi_index: Sequence[int], hidden_layers: int) -> int:
    """The number of distinct diagrams of ``D^alpha f``, without enumerating them.

    ``T_l(beta)``, the trees over ``beta`` topped by a leaf or a vertex on a layer <= l,
    are the non-empty multisets of trees topped below l (a multiset of one tree is that
    tree; of >= 2, a new vertex on layer l): ``T_l = MSET(T_{l-1}) - 1``, the multivariate
    Euler transform. Its coefficients follow from the log-derivative recursion
    ``|beta| E(beta) = sum_{0 < delta <= beta} c(delta) E(beta - delta)`` with
    ``c(delta) = sum_{k | gcd(delta)} |delta|/k T_{l-1}(delta/k)``. Every quantity is
    symmetric in the variables, so it is tabulated on sorted non-zero entries only.
    """
    alpha = mi.validate(multi_index)
    H = _check_layers(hidden_layers)
    top = tuple(sorted((a for a in alpha if a), reverse=True))
    if sum(top) <= 1:
        return 1
    keys = _sub_keys(top)
    splits = {k: _splits(k) for k in keys if k}
    T = {k: (1 if sum(k) == 1 else 0) for k in keys}  # layer 0: a single input line
    for _ in range(H):
        c = {}
        for k in keys:
            if not k:
                continue
            g = reduce(math.gcd, k)
            c[k] = sum(sum(k) // q * T[tuple(x // q for x in k)] for q in range(1, g + 1) if g % q == 0)
        E = {(): 1}
        for k in keys:
            if k:
                total = sum(w * c[delta] * E[rest] for w, delta, rest in splits[k])
                E[k] = total // sum(k)
        T = {k: E[k] for k in keys}
        T[()] = 0
    return T[top]


def count(multi_index: Sequence[int], hidden_layers: int) -> tuple[int, int]:
    """``(distinct diagrams, labelled trees)`` of ``D^alpha f``, by recursion, not enumeration.

    The second is the sum of the multiplicities; it depends only on the order and ``H``.
    """
    alpha = mi.validate(multi_index)
    return distinct_diagrams(alpha, hidden_layers), labelled_trees(sum(alpha), hidden_layers)
