"""Enumeration of the distinct diagrams of a derivative, in a fixed order."""
from __future__ import annotations

import itertools
from typing import Iterator, Sequence
from .diagram import Diagram, check_layers
from .trees import Input, Node, Vertex


from . import multi_index as mi


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
    H = check_layers(hidden_layers)
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
