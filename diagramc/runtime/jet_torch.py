"""Taylor mode through an MLP in torch: jets along curves, and the series of a neural ODE's solution.

Differentiable (autograd, double backward too) with no Python loop over the batch; the loops
run over the order. Layout inside: coefficients first, ``(K + 1, batch, width)``, so that one
affine layer over all coefficients is one matrix product and each coefficient is contiguous.
"""
from __future__ import annotations

import torch

from . import jet_series


def jet(params, x, activation, rule):
    """Coefficients of f(x(t)) from those of x(t): x (batch, d, K + 1) -> (batch, m, K + 1).

    ``activation(h0) -> (sigma, weights)`` and ``rule`` (jet_series) come from the generated module.
    """
    h = x.permute(2, 0, 1)
    weights, biases = params[0::2], params[1::2]
    last = len(weights) - 1
    for layer, (W, b) in enumerate(zip(weights, biases)):
        z = torch.matmul(h, W.T)  # every coefficient in one product; the bias only on coefficient 0
        coefficients = [z[0] + b, *z[1:].unbind(0)]
        if layer == last:
            h = torch.stack(coefficients)
        else:
            h = torch.stack(jet_series.series(rule, activation, coefficients, torch.addcmul))
    return h.permute(1, 2, 0)


def ode_series(params, z, t, order, activation, rule):
    """Normalised Taylor coefficients z_[k] = z^(k)(t0)/k!, k = 0..order, of the solution of
    dz/dt = f(z) (t None) or f(cat(z, t)) through (t0, z): shape (batch, D, order + 1).

    One pass: coefficient k of f along the solution gives z_[k+1] = y_[k] / (k + 1); each hidden
    layer keeps its series and extends it by one coefficient per step, so the work grows as
    order^2 (the equation rules) and the matrix products as order.
    """
    biases = params[1::2]
    transposed = [W.T for W in params[0::2]]  # once per call, not once per coefficient
    D = z.shape[1]
    if t is not None:
        transposed[0], w_t = transposed[0][:D], transposed[0][D]
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(z.shape[0])
    hidden = len(transposed) - 1
    inputs = [[] for _ in range(hidden)]  # each hidden layer's pre-activation series
    states = [None] * hidden
    zs = [z]
    for k in range(order):
        h = zs[k]
        for layer in range(hidden + 1):
            if k == 0:
                pre = torch.addmm(biases[layer], h, transposed[layer])
            else:
                pre = torch.mm(h, transposed[layer])
            if layer == 0 and t is not None and k <= 1:
                # time's own series is t0 + 1 t: its column adds t0 w_t at k = 0 and w_t at k = 1
                pre = torch.addr(pre, t, w_t) if k == 0 else pre + w_t
            if layer == hidden:
                zs.append(pre / (k + 1) if k else pre)
                break
            inputs[layer].append(pre)
            if k == 0:
                states[layer], h = jet_series.start(rule, activation, pre, torch.addcmul)
            else:
                h = states[layer].push(inputs[layer])
    return torch.stack(zs, dim=2)
