"""NumPy operations of the differential-operator kernels (the same algebra as operator_torch).

A layer's state is one array ``X`` of shape (batch, rows, width). Matrix products run over
all rows of all points as one BLAS call; the rest is in place where nothing else reads it.
"""
from __future__ import annotations

import numpy as np

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
    """The input's rows: x, then constants (unit rows of the first-order entries, collapsed rows)."""
    X = np.empty((x.shape[0], 1 + t["input_rows"].shape[0], x.shape[1]), dtype=x.dtype)
    X[:, 0] = x
    X[:, 1:] = t["input_rows"]
    return X


def first_layer(x, W, b, t):
    """Layer 1 (affine): the value row x W^T + b; every other row is the same for all points."""
    X = np.empty((x.shape[0], 1 + t["input_rows"].shape[0], W.shape[0]), dtype=x.dtype)
    X[:, 0] = x @ W.T + b
    X[:, 1:] = t["input_rows"] @ W.T
    return X


def affine(X, W, b):
    """A Linear layer on every row at once (one matrix product); the bias on the value row only."""
    Y = _rows_times(X, W.T)
    Y[:, 0] += b
    return Y


def _quadratic(Z, t):
    """T_2 per collapsed row: sum_ij Q[g, i, j] Z_i Z_j, (batch, groups, width)."""
    kind = t["quadratic_kind"]
    if kind == "uniform":  # the Laplacian: c sum_i Z_i^2, no Hessian
        return t["quadratic_diagonal"][None, :, 0, None] * np.einsum("bin,bin->bn", Z, Z)[:, None]
    if kind == "diagonal":
        return np.matmul(t["quadratic_diagonal"], Z * Z)
    Q = t["quadratic"]
    return np.stack([(np.matmul(Q[g], Z) * Z).sum(1) for g in range(Q.shape[0])], 1)


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
    out = np.zeros((P.shape[0], rows, P.shape[2]), dtype=P.dtype)
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
            H[:, n:] += Fk[:, None] * np.matmul(w, P[:, left] * P1[:, right])
        if k in t["powers"]:
            P = _power(P, P1, t["powers"][k], n - start[k])
            if Fk is not None:
                H[:, start[k]:n] += Fk[:, None] * P
    return H


def output(X, W, b, t, mixing: bool):
    """The linear output layer contracted with the operator's coefficients: (batch, OUTPUTS) or (batch, 1)."""
    A = t["output"]
    if not mixing:  # the same operator on every output: combine the rows first, one small product
        Y = np.einsum("r,brn->bn", A[:, 0], X)
        return Y @ W.T + A[0, 0] * b
    V = _rows_times(X, W.T)  # (batch, rows, outputs)
    return ((V * A).sum((1, 2)) + (A[0] * b).sum())[:, None]


def prepare(params, x, layer_sizes):
    """params and x as arrays in x's floating dtype, checked against the network's shapes."""
    x = np.asarray(x)
    check_structure(params, x, layer_sizes)
    if x.dtype.kind != "f":
        raise ValueError(f"x has dtype {x.dtype}; expected a floating-point dtype (float32 or float64)")
    return [np.asarray(p, dtype=x.dtype) for p in params], x
