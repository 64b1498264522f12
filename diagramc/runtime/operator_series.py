"""The operators' layers, the same algebra for both backends: a backend passes `ops`, its
primitives (affine, quadratic, zeros, matmul, add_from_row, concatenate)."""
from __future__ import annotations


def _with_firsts(Q, Z1, t):
    """sum_j Z_j Q[(g, j)] per group: a twice-collapsed row's pairs with the first-order entries."""
    groups = Q.shape[1] // t["firsts"]
    return (Q.reshape(Q.shape[0], groups, t["firsts"], Q.shape[2]) * Z1[:, None]).sum(2)


def series_activation(state, b, activation, t, ops):
    """Truncated Taylor series through sigma, z + b: h = sum_k F_k P_k on the series rows, and
    the collapsed rows F_1 L + sum_k F_k T_k with T_k contracted before it is stored. Rows
    collapsed twice (R, before the top rows) carry Q_1; Q_k (k >= 2) is made from P_(k-1)."""
    z, P1, L = state
    s, F = activation(z + b)
    start, n_R = t["start"], t["second_rows"]
    series, top, R_h = F[0][:, None] * P1, F[0][:, None] * L[:, n_R:], F[0][:, None] * L[:, :n_R]
    if any(f is not None for f in F[1:]):  # relu and identity have no vertices: sigma' carries all
        P, Q = P1, L[:, :n_R]  # P_(k-1) and Q_(k-1) at step k
        for k in range(2, t["order"] + 1):
            Fk = F[k - 1] if k - 1 < len(F) else None
            if k in t["top_pairs"] and Fk is not None:
                left, right, w = t["top_pairs"][k]
                top = top + Fk[:, None] * ops.matmul(w, P[:, left] * P1[:, right])
            if n_R and Fk is not None and Q is not None:  # (beta, e_j) pairs, both orders at k = 2
                top = top + (2.0 if k == 2 else 1.0) * Fk[:, None] * _with_firsts(Q, P1[:, :t["firsts"]], t)
            Q = None
            if k in t["second"]:
                left, right, w = t["second"][k]
                Q = ops.matmul(w, P[:, left] * P1[:, right])
                if Fk is not None:
                    R_h = R_h + Fk[:, None] * Q
            if k in t["powers"]:
                P = power(P, P1, t["powers"][k], t["series_rows"] - start[k], ops)
                if Fk is not None:  # onto the rows of order >= k
                    series = ops.add_from_row(series, start[k] - 1, Fk[:, None] * P)
    return s, series, ops.concatenate([R_h, top])


def input_series(x, t):
    """The input's state: x, and constants shared by every point (batch dimension 1): unit rows
    of the first-order entries, zeros above, the collapsed rows' first-order weights."""
    n = t["series_rows"] - 1
    rows = t["input_rows"][None]
    return x, rows[:, :n], rows[:, n:]


def first_layer(x, W, t, ops):
    """Layer 1's matrix: z = x W^T; the other rows are the same for every point (batch dimension 1)."""
    return ops.affine(input_series(x, t), W)


def collapsed_activation(state, b, activation, t, ops):
    """The forward Laplacian through sigma, z + b: value sigma(z), Jacobian rows sigma'(z) Z,
    collapsed rows sigma'(z) L + sigma''(z)/2 T_2 (the series has first-order entries only)."""
    z, Z, L = state
    s, F = activation(z + b)
    F1 = F[0][:, None]
    top = F1 * L
    if t["quadratic_kind"] != "none" and len(F) > 1 and F[1] is not None:
        top = top + F[1][:, None] * ops.quadratic(Z, t)
    return s, F1 * Z, top


def power(P, P1, buckets, rows, ops):
    """P_(k-1) P_1 truncated to the series rows of order >= k: per bucket a gather, a product, a sum."""
    out = ops.zeros(P, (max(P.shape[0], P1.shape[0]), rows, P.shape[2]))
    for targets, left, right in buckets:
        out[:, targets] = (P[:, left] * P1[:, right]).sum(2)
    return out
