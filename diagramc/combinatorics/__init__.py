"""The combinatorics of the Feynman rules: which diagrams make up ``D^alpha f``.

Modules: multi_index (multi-indices, canonical order), trees (nodes), diagram (one diagram),
enumeration, counting, sums (the whole sum as text, LaTeX, TikZ), evaluate (numeric values),
symbols (sympy pieces and printers), draw (pictures).

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
from .counting import count, distinct_diagrams, labelled_trees
from .diagram import Diagram, check_layers
from .enumeration import diagrams, iter_diagrams
from .evaluate import ForwardPass, evaluate_diagrams
from .sums import derivative_latex, derivative_text, latex_total, pretty_total, tikz_document, total_expression
from .symbols import SUPERSCRIPTS, ActivationDerivative, Propagator
from .trees import Input, Node, Vertex

__all__ = [
    "Input",
    "Vertex",
    "Node",
    "Diagram",
    "check_layers",
    "iter_diagrams",
    "diagrams",
    "count",
    "labelled_trees",
    "distinct_diagrams",
    "ForwardPass",
    "evaluate_diagrams",
    "Propagator",
    "ActivationDerivative",
    "SUPERSCRIPTS",
    "total_expression",
    "pretty_total",
    "latex_total",
    "tikz_document",
    "derivative_text",
    "derivative_latex",
]
