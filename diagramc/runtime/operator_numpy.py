"""NumPy operations of the differential-operator kernels (the same algebra as operator_torch).

A layer's state is three arrays: the value z (batch, width), the series' Taylor coefficients
Z (batch, rows, width) and the collapsed rows L (batch, groups, width); layer 1's Z and L are
the same for every point (batch dimension 1). Matrix products run over all rows of all points
as one BLAS call.
"""
from __future__ import annotations

import numpy as np

from . import operator_series
from .operator_tables import Tables, check_structure


def tables_on(tables: Tables, outputs: int, dtype, cache: dict) -> dict:
    """The tables in one dtype, made once per dtype."""
    dtype = np.dtype(dtype)
    if dtype not in cache:
        Q = tables.quadratic
        cache[dtype] = {
            "series_rows": len(tables.series),
            "order": tables.order,
            "start": tables.start,
            "input_rows": tables.input_rows.astype(dtype),
            "powers": tables.powers,
            "top_pairs": {k: (a, b, w.astype(dtype)) for k, (a, b, w) in tables.top_pairs.items()},
            "second": {k: (a, b, w.astype(dtype)) for k, (a, b, w) in tables.second.items()},
            "second_rows": tables.second_rows,
            "firsts": len(tables.firsts),
            "quadratic_kind": tables.quadratic_kind,
            "quadratic": Q.astype(dtype),
            "quadratic_diagonal": Q.diagonal(axis1=1, axis2=2).astype(dtype),
            "output": tables.output_matrix(outputs).astype(dtype),
        }
    return cache[dtype]


def _rows_times(X, M):
    """X (batch, rows, n) times M (n, n') as one matrix product over every row of every point."""
    return (X.reshape(-1, X.shape[2]) @ M).reshape(X.shape[0], X.shape[1], M.shape[1])


def input_series(x, t):
    """The input's state: x, and constants shared by every point (batch dimension 1): unit rows
    of the first-order entries, zeros above, the collapsed rows' first-order weights."""
    n = t["series_rows"] - 1
    rows = t["input_rows"][None]
    return x, rows[:, :n], rows[:, n:]


def first_layer(x, W, t):
    """Layer 1's matrix: z = x W^T; the other rows are the same for every point (batch dimension 1)."""
    return affine(input_series(x, t), W)


def affine(state, W):
    """A Linear layer's matrix on the value, the series and the collapsed rows (each one matrix
    product over all its rows); the activation that follows adds the bias to the value."""
    z, Z, L = state
    return z @ W.T, _rows_times(Z, W.T), _rows_times(L, W.T)


def _quadratic(Z, t):
    """T_2 per collapsed row: sum_ij Q[g, i, j] Z_i Z_j, (batch, groups, width)."""
    kind = t["quadratic_kind"]
    if kind == "uniform":  # the Laplacian: c sum_i Z_i^2, no Hessian
        return t["quadratic_diagonal"][None, :, 0, None] * np.einsum("bin,bin->bn", Z, Z)[:, None]
    if kind == "diagonal":
        return np.matmul(t["quadratic_diagonal"], Z * Z)
    Q = t["quadratic"]
    return np.stack([(np.matmul(Q[g], Z) * Z).sum(1) for g in range(Q.shape[0])], 1)


def collapsed_activation(state, b, activation, t):
    """The forward Laplacian through sigma, z + b: value sigma(z), Jacobian rows sigma'(z) Z,
    collapsed rows sigma'(z) L + sigma''(z)/2 T_2 (the series has first-order entries only)."""
    z, Z, L = state
    s, F = activation(z + b)
    F1 = F[0][:, None]
    top = F1 * L
    if t["quadratic_kind"] != "none" and len(F) > 1 and F[1] is not None:
        top += F[1][:, None] * _quadratic(Z, t)
    return s, F1 * Z, top


def _power(P, P1, buckets, rows):
    """P_(k-1) P_1 truncated to the series rows of order >= k: per bucket a gather, a product, a sum."""
    out = np.zeros((max(P.shape[0], P1.shape[0]), rows, P.shape[2]), dtype=P.dtype)
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
        Y = A[0, 0] * z + np.einsum("r,brn->bn", A[1:1 + n, 0], Z) + np.einsum("r,brn->bn", A[1 + n:, 0], L)
        return Y @ W.T + A[0, 0] * b
    out = ((z @ W.T + b) @ A[0] + (_rows_times(Z, W.T) * A[1:1 + n]).sum((1, 2))
           + (_rows_times(L, W.T) * A[1 + n:]).sum((1, 2)))
    return out[:, None]


def prepare(params, x, layer_sizes):
    """params and x as arrays in x's floating dtype, checked against the network's shapes."""
    x = np.asarray(x)
    check_structure(params, x, layer_sizes)
    if x.dtype.kind != "f":
        raise ValueError(f"x has dtype {x.dtype}; expected a floating-point dtype (float32 or float64)")
    return [np.asarray(p, dtype=x.dtype) for p in params], x


def _add_from_row(series, row, X):
    """series[:, row:] += X, in place (NumPy arrays have no autograd to keep)."""
    series[:, row:] += X
    return series


# the primitives operator_series takes from this backend
_OPS = type("NumpyOps", (), {"matmul": staticmethod(np.matmul), "power": staticmethod(_power),
                             "add_from_row": staticmethod(_add_from_row),
                             "concatenate": staticmethod(lambda arrays: np.concatenate(arrays, 1))})
