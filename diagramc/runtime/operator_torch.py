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
from .arguments import torch_arguments
from .operator_tables import Tables


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


prepare = torch_arguments


def _add_from_row(series, row, X):
    """series with X added to its rows from row on, out of place (autograd keeps series)."""
    return series + torch.nn.functional.pad(X, (0, 0, row, 0))


# the primitives operator_series takes from this backend, and the layers it makes of them
_OPS = type("Ops", (), {"affine": staticmethod(affine), "quadratic": staticmethod(_quadratic),
                        "zeros": staticmethod(lambda like, shape: like.new_zeros(shape)), "matmul": staticmethod(torch.matmul),
                        "add_from_row": staticmethod(_add_from_row),
                        "concatenate": staticmethod(lambda arrays: torch.cat(arrays, 1))})
input_series = operator_series.input_series


def first_layer(x, W, t):
    return operator_series.first_layer(x, W, t, _OPS)


def collapsed_activation(state, b, activation, t):
    return operator_series.collapsed_activation(state, b, activation, t, _OPS)


def series_activation(state, b, activation, t):
    return operator_series.series_activation(state, b, activation, t, _OPS)
