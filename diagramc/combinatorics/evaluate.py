"""Numeric values of diagrams: one forward pass shared by all of them."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import DiagramcError
from .trees import Input, Node

if TYPE_CHECKING:  # annotations only: diagram.py imports this module
    from .diagram import Diagram


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
