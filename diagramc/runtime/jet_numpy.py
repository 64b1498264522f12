"""Taylor mode through an MLP in NumPy: jets along curves (the torch module's twin, without autograd)."""
from __future__ import annotations

import numpy as np

from . import jet_series


def jet(params, x, activation, rule):
    """Coefficients of f(x(t)) from those of x(t): x (batch, d, K + 1) -> (batch, m, K + 1)."""
    h = np.ascontiguousarray(np.moveaxis(x, 2, 0))  # (K + 1, batch, d): each coefficient contiguous
    weights, biases = params[0::2], params[1::2]
    last = len(weights) - 1
    for layer, (W, b) in enumerate(zip(weights, biases)):
        # every coefficient in one product; the bias only on coefficient 0
        z = (h.reshape(-1, h.shape[2]) @ W.T).reshape(h.shape[0], h.shape[1], W.shape[0])
        z[0] += b
        if layer == last:
            h = z
        else:
            h = np.stack(jet_series.series(rule, activation, list(z)))
    return np.ascontiguousarray(np.moveaxis(h, 0, 2))
