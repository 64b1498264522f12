"""NumPy operations of the differential-operator kernels (the same algebra as operator_torch).

A layer's state is three arrays: the value z (batch, width), the series' Taylor coefficients
Z (batch, rows, width) and the collapsed rows L (batch, groups, width); layer 1's Z and L are
the same for every point (batch dimension 1). Matrix products run over all rows of all points
as one BLAS call.
"""
from __future__ import annotations

import numpy as np

from . import operator_fused, operator_series, threads
from .arguments import numpy_arguments
from .operator_tables import Tables


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
            "uniform_q": float(Q[0, 0, 0]) if tables.quadratic_kind == "uniform" else 0.0,
            "quadratic": Q.astype(dtype),
            "quadratic_diagonal": Q.diagonal(axis1=1, axis2=2).astype(dtype),
            "output": tables.output_matrix(outputs).astype(dtype),
        }
    return cache[dtype]


def _rows_times(X, M):
    """X (batch, rows, n) times M (n, n') as one matrix product over every row of every point."""
    return (X.reshape(-1, X.shape[2]) @ M).reshape(X.shape[0], X.shape[1], M.shape[1])


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


prepare = numpy_arguments


def _add_from_row(series, row, X):
    """series[:, row:] += X, in place (NumPy arrays have no autograd to keep)."""
    series[:, row:] += X
    return series


# the primitives operator_series takes from this backend, and the layers it makes of them
_OPS = type("Ops", (), {"affine": staticmethod(affine), "quadratic": staticmethod(_quadratic),
                        "zeros": staticmethod(lambda like, shape: np.zeros(shape, dtype=like.dtype)), "matmul": staticmethod(np.matmul),
                        "add_from_row": staticmethod(_add_from_row),
                        "concatenate": staticmethod(lambda arrays: np.concatenate(arrays, 1))})
input_series = operator_series.input_series


def first_layer(x, W, t):
    return operator_series.first_layer(x, W, t, _OPS)


def collapsed_activation(state, b, activation, t):
    return operator_series.collapsed_activation(state, b, activation, t, _OPS)


def series_activation(state, b, activation, t):
    return operator_series.series_activation(state, b, activation, t, _OPS)


def forward_laplacian(params, x, t, fused_activation):
    """The forward Laplacian by operator_fused's numba loops (one pass and one BLAS product a
    layer), or None where they cannot serve (the module's layers then do)."""
    tables = (t["uniform_q"], t["input_rows"], np.ascontiguousarray(t["output"][:, 0]))
    return _fused(operator_fused.laplacian_forward, operator_fused.laplacian_rows(tables), params, x,
                  fused_activation, tables)


def forward_biharmonic(params, x, t, fused_activation, dims, scale):
    """scale times the biharmonic over inputs dims by operator_fused's numba loops, or None where
    they cannot serve (the module's series then do)."""
    if "biharmonic" not in t:
        t["biharmonic"] = operator_fused.biharmonic_tables(x.shape[1], dims, scale, x.dtype)
    tables = t["biharmonic"]
    return _fused(operator_fused.biharmonic_forward, operator_fused.biharmonic_rows(tables), params, x,
                  fused_activation, tables)


def _fused(forward, rows, params, x, fused_activation, tables):
    """forward's out on float32/float64 arrays, the batch split over threads where the products are small."""
    if x.dtype not in (np.float32, np.float64):
        return None
    count = threads.get_num_threads()
    slices, blas_count = operator_fused.split(x.shape[0], rows, params, count, count)
    return operator_fused.unless_uncompiled(
        fused_activation,
        lambda: operator_fused.forward_in_parts(forward, x, params, fused_activation, tables, slices, blas_count)[0])
