"""One diagram: its tree, multiplicity, expression, pictures and value."""
from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import numpy as np
import sympy

from . import multi_index as mi
from ..errors import DiagramcError
from .evaluate import ForwardPass
from .symbols import ActivationDerivative, NETWORK_OUTPUT, OUTPUT_INDEX, Propagator, SUPERSCRIPTS, latex_of, pretty_of, width_symbol
from .trees import Input, Node, Vertex, walk


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
        H = check_layers(hidden_layers)
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
        return [n for n in walk(self.root) if isinstance(n, Vertex)] if self.root is not None else []

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
        return pretty_of(self.expression(with_multiplicity=with_multiplicity, display=True), unicode)

    def latex(self, with_multiplicity: bool = True) -> str:
        """LaTeX of the term ``multiplicity * value``, factors in reading order."""
        return latex_of(self.expression(with_multiplicity=with_multiplicity, display=True))

    def short(self, unicode: bool = True) -> str:
        """One line: ``σ⁽²⁾(z⁽²⁾; x0, σ⁽²⁾(z⁽¹⁾; x0, x1))``, each vertex with the lines coming into it.

        The output line is implicit; order 1 is the bare input line ``x3``, order 0 ``f``.
        """
        def text(node):
            if isinstance(node, Input):
                return f"x{node.variable}"
            inner = ", ".join(text(c) for c in node.children)
            if unicode:
                return "σ" + f"({node.k})".translate(SUPERSCRIPTS) + "(z" + f"({node.layer})".translate(SUPERSCRIPTS) + f"; {inner})"
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


def check_layers(hidden_layers: Any) -> int:
    if isinstance(hidden_layers, bool) or not isinstance(hidden_layers, (int, np.integer)) or hidden_layers < 0:
        raise DiagramcError(f"hidden layers must be a non-negative integer, got {hidden_layers!r}")
    return int(hidden_layers)
