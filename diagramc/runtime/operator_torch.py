"""PyTorch operations of the differential-operator kernels (see operator_tables for the rows).

A layer's state is one tensor ``X`` of shape (batch, rows, width): the value, the series'
Taylor coefficients, the collapsed rows. Every operation is differentiable and keeps x's
device and dtype; there is no loop over the batch.
"""
from __future__ import annotations

import torch

from .operator_tables import Tables, check_structure, param_name


def tables_on(tables: Tables, outputs: int, like: torch.Tensor, cache: dict) -> dict:
    """The tables as tensors on like's device and dtype, made once per (device, dtype)."""
    key = (like.device, like.dtype)
    if key not in cache:
        def real(a):
            return torch.as_tensor(a, dtype=like.dtype, device=like.device)

        def index(a):
            return torch.as_tensor(a, dtype=torch.long, device=like.device)

        Q = tables.quadratic
        cache[key] = {
            "series_rows": len(tables.series),
            "order": tables.order,
            "start": tables.start,
            "input_rows": real(tables.input_rows),
            "powers": {k: [(index(t), index(a), index(b)) for t, a, b in bs] for k, bs in tables.powers.items()},
            "top_pairs": {k: (index(a), index(b), real(w)) for k, (a, b, w) in tables.top_pairs.items()},
            "quadratic_kind": tables.quadratic_kind,
            "quadratic": real(Q),
            "quadratic_diagonal": real(Q.diagonal(axis1=1, axis2=2).copy()) if Q.ndim == 3 else None,
            "output": real(tables.output_matrix(outputs)),
        }
    return cache[key]


def input_series(x: torch.Tensor, t: dict) -> torch.Tensor:
    """The input's rows: x, then constants (unit rows of the first-order entries, collapsed rows)."""
    rows = t["input_rows"]
    return torch.cat([x[:, None], rows.expand(x.shape[0], -1, -1)], 1)


def first_layer(x, W, b, t):
    """Layer 1 (affine): the value row x W^T + b; every other row is the same for all points."""
    z = torch.addmm(b, x, W.T)
    constant = t["input_rows"] @ W.T
    return torch.cat([z[:, None], constant.expand(x.shape[0], -1, -1)], 1)


def affine(X, W, b):
    """A Linear layer on every row at once (one matrix product); the bias on the value row only."""
    Y = X @ W.T
    Y[:, 0] += b
    return Y


def _quadratic(Z, t):
    """T_2 per collapsed row: sum_ij Q[g, i, j] Z_i Z_j, (batch, groups, width)."""
    kind = t["quadratic_kind"]
    if kind == "uniform":  # the Laplacian: c sum_i Z_i^2, no Hessian
        return t["quadratic_diagonal"][None, :, 0, None] * Z.square().sum(1)[:, None]
    if kind == "diagonal":
        return torch.matmul(t["quadratic_diagonal"], Z.square())
    Q = t["quadratic"]
    return torch.stack([(torch.matmul(Q[g], Z) * Z).sum(1) for g in range(Q.shape[0])], 1)


def collapsed_activation(X, activation, t):
    """The forward Laplacian through sigma: value sigma(z), Jacobian rows sigma'(z) Z, collapsed
    rows sigma'(z) L + sigma''(z)/2 T_2 (the series has first-order entries only)."""
    s, F = activation(X[:, 0])
    H = X * F[0][:, None]
    H[:, 0] = s
    if t["quadratic_kind"] != "none" and len(F) > 1 and F[1] is not None:
        n = t["series_rows"]
        H[:, n:] += F[1][:, None] * _quadratic(X[:, 1:n], t)
    return H


def _power(P, P1, buckets, rows):
    """P_(k-1) P_1 truncated to the series rows of order >= k: per bucket a gather, a product, a sum."""
    out = P.new_zeros((P.shape[0], rows, P.shape[2]))
    for targets, left, right in buckets:
        out[:, targets] = (P[:, left] * P1[:, right]).sum(2)
    return out


def series_activation(X, activation, t):
    """Truncated Taylor series through sigma: h = sum_k F_k P_k on the series rows, and the
    collapsed rows F_1 L + sum_k F_k T_k with T_k contracted before it is stored."""
    s, F = activation(X[:, 0])
    H = X * F[0][:, None]
    H[:, 0] = s
    if all(f is None for f in F[1:]):  # no vertices (relu, identity): sigma' carries everything
        return H
    n, start = t["series_rows"], t["start"]
    P1 = X[:, 1:n]
    P = P1
    for k in range(2, t["order"] + 1):
        Fk = F[k - 1] if k - 1 < len(F) else None
        if k in t["top_pairs"] and Fk is not None:
            left, right, w = t["top_pairs"][k]
            H[:, n:] += Fk[:, None] * torch.matmul(w, P[:, left] * P1[:, right])
        if k in t["powers"]:
            P = _power(P, P1, t["powers"][k], n - start[k])
            if Fk is not None:
                H[:, start[k]:n] += Fk[:, None] * P
    return H


def output(X, W, b, t, mixing: bool):
    """The linear output layer contracted with the operator's coefficients: (batch, OUTPUTS) or (batch, 1)."""
    A = t["output"]
    if not mixing:  # the same operator on every output: combine the rows first, one small product
        Y = torch.matmul(A[:, 0], X)
        return Y @ W.T + A[0, 0] * b
    V = X @ W.T  # (batch, rows, outputs)
    return (V * A).sum((1, 2))[:, None] + (A[0] * b).sum()


def prepare(params, x, layer_sizes):
    """params and x checked: tensors of one floating dtype on one device, of the network's shapes."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor of shape (batch, {layer_sizes[0]}), got {type(x).__name__}")
    check_structure(params, x, layer_sizes)
    if not x.is_floating_point():
        raise ValueError(f"x has dtype {x.dtype}; expected a floating-point dtype")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise ValueError(f"params[{i}] ({param_name(i)}) must be a torch.Tensor, got {type(p).__name__}")
        if p.dtype != x.dtype or p.device != x.device:
            raise ValueError(f"params[{i}] ({param_name(i)}) is {p.dtype} on {p.device}; expected x's {x.dtype} on {x.device}")
    return list(params), x
