"""The operators' series through the activation, the same for both backends: a backend module
passed as `ops` supplies matmul, power, add_from_row and concatenate."""
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
                P = ops.power(P, P1, t["powers"][k], t["series_rows"] - start[k])
                if Fk is not None:  # onto the rows of order >= k
                    series = ops.add_from_row(series, start[k] - 1, Fk[:, None] * P)
    return s, series, ops.concatenate([R_h, top])
