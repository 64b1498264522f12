"""Independent reference: nested torch.func.jacfwd on a plain torch MLP, float64.

Nothing here uses diagramc's derivation: activations are torch's own functions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.func import jacfwd, vmap

TORCH_ACTIVATIONS = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": lambda z: torch.logaddexp(z, torch.zeros_like(z)),
    "sin": torch.sin,
    "gelu": lambda z: F.gelu(z, approximate="none"),
    "silu": F.silu,
    "identity": lambda z: z,
    "relu": torch.relu,
    "x*tanh(x)": lambda z: z * torch.tanh(z),
    "exp(-x**2)*x + sin(2*x)/3": lambda z: torch.exp(-(z**2)) * z + torch.sin(2 * z) / 3,
    "x + x**2/4": lambda z: z + z**2 / 4,  # vertices of order 2 only
}


def random_params(layer_sizes, generator, dtype=torch.float64, scale=1.0):
    params = []
    for n_in, n_out in zip(layer_sizes[:-1], layer_sizes[1:]):
        params.append(torch.randn(n_out, n_in, generator=generator, dtype=dtype) * scale / math.sqrt(n_in))
        params.append(torch.randn(n_out, generator=generator, dtype=dtype) * 0.5)
    return params


def mlp(params, activation):
    sigma = TORCH_ACTIVATIONS[activation]

    def f(x):
        h = x
        for i in range(0, len(params) - 2, 2):
            h = sigma(params[i] @ h + params[i + 1])
        return params[-2] @ h + params[-1]

    return f


def reference_derivatives(params, x, activation, multi_indices):
    """(batch, m, len(multi_indices)) of D^alpha f(x) by nested jacfwd (one nesting per order)."""
    f = mlp(params, activation)
    order = max(sum(a) for a in multi_indices)
    by_order = []
    g = f
    for _ in range(order + 1):
        by_order.append(vmap(g)(x))  # (batch, m, d, d, ...)
        g = jacfwd(g)
    columns = []
    for alpha in multi_indices:
        idx = tuple(i for i, a in enumerate(alpha) for _ in range(a))
        columns.append(by_order[sum(alpha)][(slice(None), slice(None)) + idx])
    return torch.stack(columns, dim=-1)
