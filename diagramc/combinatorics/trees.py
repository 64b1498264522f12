"""Diagram trees: input lines and vertices in canonical form."""
from __future__ import annotations

import itertools
import math
from typing import Any, Iterator, Sequence


from . import multi_index as mi
from ..errors import DiagramcError


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


def walk(node: Node) -> Iterator[Node]:
    """Pre-order traversal, children in canonical order."""
    yield node
    if isinstance(node, Vertex):
        for c in node.children:
            yield from walk(c)
