"""PyTorch operations of the differential-operator kernels (see operator_tables for the rows).

A layer's state is three tensors: the value z (batch, width), the series' Taylor
coefficients Z (batch, rows, width) and the collapsed rows L (batch, groups, width); Z and L
of layer 1 are the same for every point and keep a batch dimension of 1 until sigma'(z)
multiplies them. Separate tensors, not one, so that autograd never copies a slice around.
Every operation is differentiable and keeps x's device and dtype; no loop over the batch.
"""
from __future__ import annotations

import torch

from . import operator_series
from .operator_tables import Tables, check_structure, param_name


def tables_on(tables: Tables, outputs: int, like: torch.Tensor, cache: dict) -> dict:
    """The tables as tensors on like's device and dtype, made once per (device, dtype)."""
    key = (like.device, like.dtype)
    if key not in cache:
        with torch.inference_mode(False):  # kept for later calls, which may need autograd
            cache[key] = _tensors(tables, outputs, like.device, like.dtype)
    return cache[key]


def _tensors(tables: Tables, outputs: int, device, dtype) -> dict:
    def real(a):
        return torch.as_tensor(a, dtype=dtype, device=device)

    def index(a):
        return torch.as_tensor(a, dtype=torch.long, device=device)

    Q = tables.quadratic
    return {
        "series_rows": len(tables.series),
        "order": tables.order,
        "start": tables.start,
        "input_rows": real(tables.input_rows),
        "powers": {k: [(index(t), index(a), index(b)) for t, a, b in bs] for k, bs in tables.powers.items()},
        "top_pairs": {k: (index(a), index(b), real(w)) for k, (a, b, w) in tables.top_pairs.items()},
        "second": {k: (index(a), index(b), real(w)) for k, (a, b, w) in tables.second.items()},
        "second_rows": tables.second_rows,
        "firsts": len(tables.firsts),
        "quadratic_kind": tables.quadratic_kind,
        "quadratic": real(Q),
        "quadratic_diagonal": real(Q.diagonal(axis1=1, axis2=2).copy()),
        "output": real(tables.output_matrix(outputs)),
    }


def input_series(x, t):
    """The input's state: x, and constants shared by every point (batch dimension 1): unit rows
    of the first-order entries, zeros above, the collapsed rows' first-order weights."""
    n = t["series_rows"] - 1
    rows = t["input_rows"][None]
    return x, rows[:, :n], rows[:, n:]


def first_layer(x, W, t):
    """Layer 1's matrix: z = x W^T; the other rows are the same for every point (batch dimension 1)."""
    x, Z, L = input_series(x, t)
    return affine((x, Z, L), W)


def affine(state, W):
    """A Linear layer's matrix on the value, the series and the collapsed rows (each one matrix
    product over all its rows); the activation that follows adds the bias to the value."""
    z, Z, L = state
    return z @ W.T, Z @ W.T, L @ W.T


def _quadratic(Z, t):
    """T_2 per collapsed row: sum_ij Q[g, i, j] Z_i Z_j, (batch, groups, width)."""
    kind = t["quadratic_kind"]
    if kind == "uniform":  # the Laplacian: c sum_i Z_i^2, no Hessian
        return t["quadratic_diagonal"][None, :, 0, None] * Z.square().sum(1)[:, None]
    if kind == "diagonal":
        return torch.matmul(t["quadratic_diagonal"], Z.square())
    Q = t["quadratic"]
    return torch.stack([(torch.matmul(Q[g], Z) * Z).sum(1) for g in range(Q.shape[0])], 1)


def collapsed_activation(state, b, activation, t):
    """The forward Laplacian through sigma, z + b: value sigma(z), Jacobian rows sigma'(z) Z,
    collapsed rows sigma'(z) L + sigma''(z)/2 T_2 (the series has first-order entries only)."""
    z, Z, L = state
    s, F = activation(z + b)
    F1 = F[0][:, None]
    top = F1 * L
    if t["quadratic_kind"] != "none" and len(F) > 1 and F[1] is not None:
        top = top + F[1][:, None] * _quadratic(Z, t)
    return s, F1 * Z, top


def _power(P, P1, buckets, rows):
    """P_(k-1) P_1 truncated to the series rows of order >= k: per bucket a gather, a product, a sum."""
    batch = max(P.shape[0], P1.shape[0])
    out = P.new_zeros((batch, rows, P.shape[2]))
    for targets, left, right in buckets:
        out[:, targets] = (P[:, left] * P1[:, right]).sum(2)
    return out


def series_activation(state, b, activation, t):
    """See operator_series.series_activation."""
    return operator_series.series_activation(state, b, activation, t, _OPS)


def output(state, W, b, t, mixing: bool):
    """The linear output layer contracted with the operator's coefficients: (batch, OUTPUTS) or (batch, 1)."""
    z, Z, L = state
    A = t["output"]
    n = Z.shape[1]
    if not mixing:  # the same operator on every output: combine the rows first, one small product
        Y = A[0, 0] * z + torch.matmul(A[1:1 + n, 0], Z) + torch.matmul(A[1 + n:, 0], L)
        return Y @ W.T + A[0, 0] * b
    out = (z @ W.T + b) @ A[0] + ((Z @ W.T) * A[1:1 + n]).sum((1, 2)) + ((L @ W.T) * A[1 + n:]).sum((1, 2))
    return out[:, None]


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


def _add_from_row(series, row, X):
    """series with X added to its rows from row on, out of place (autograd keeps series)."""
    return series + torch.nn.functional.pad(X, (0, 0, row, 0))


# the primitives operator_series takes from this backend
_OPS = type("TorchOps", (), {"matmul": staticmethod(torch.matmul), "power": staticmethod(_power),
                             "add_from_row": staticmethod(_add_from_row),
                             "concatenate": staticmethod(lambda tensors: torch.cat(tensors, 1))})
