"""The forward Laplacian's elementwise work (operator_torch.ForwardLaplacian) as numba loops, one
pass over (batch, rows, width) per layer and direction, in place of a dozen torch operations.

Rows are (batch or 1, rows, width): a first layer's rows are the same for every point and keep
a batch axis of 1. F is (k, batch, width), the vertex weights sigma^(k+1)/(k+1)!; q the
uniform quadratic form's coefficient (0: none). A is the output's row coefficients.
"""
import numpy as np

from .numpy_loops import jit


@jit(fastmath={"reassoc", "contract"})  # the sum of squares vectorizes only if it may be reordered
def rows_out(rows, value, F, q, H, S):
    """A layer's output rows into H (batch, rows + 1, width): the value, F1 times every row, and
    q F2 S added to the last (collapsed) row; S = sum_i Z_i^2 over the rows but the last, into
    S (rows' batch, width)."""
    m = rows.shape[1] - 1
    for b in range(S.shape[0]):
        Sb = S[b]
        Sb[:] = 0.0
        for i in range(m):
            z = rows[b, i]
            for j in range(z.shape[0]):
                Sb[j] += z[j] * z[j]
    for b in range(H.shape[0]):
        rb = b if rows.shape[0] > 1 else 0
        f1, f2, Sb, Hb = F[0, b], F[1, b], S[rb], H[b]
        Hb[0, :] = value[b]
        for i in range(m + 1):
            z, h = rows[rb, i], Hb[i + 1]
            for j in range(h.shape[0]):
                h[j] = f1[j] * z[j]
        if q != 0.0:
            h = Hb[m + 1]
            for j in range(h.shape[0]):
                h[j] += q * f2[j] * Sb[j]


@jit(fastmath={"reassoc", "contract"})
def rows_combined(rows, value, F, q, A, Y, S):
    """sum_r A[r] H[:, r] of the output rows rows_out would make, into Y (batch, width), never
    making H; S as rows_out's."""
    m = rows.shape[1] - 1
    for b in range(S.shape[0]):
        Sb = S[b]
        Sb[:] = 0.0
        for i in range(m):
            z = rows[b, i]
            for j in range(z.shape[0]):
                Sb[j] += z[j] * z[j]
    for b in range(Y.shape[0]):
        rb = b if rows.shape[0] > 1 else 0
        f1, f2, Sb, y, v = F[0, b], F[1, b], S[rb], Y[b], value[b]
        for j in range(y.shape[0]):
            y[j] = A[0] * v[j]
        for i in range(m + 1):
            z, a = rows[rb, i], A[i + 1]
            if a != 0.0:
                for j in range(y.shape[0]):
                    y[j] += a * f1[j] * z[j]
        a = A[m + 1] * q
        if a != 0.0:
            for j in range(y.shape[0]):
                y[j] += a * f2[j] * Sb[j]


@jit(fastmath={"reassoc", "contract"})
def rows_back(dH, A, G, rows, S, F, q, dX):
    """The gradient of a layer's pre-activation rows dX (batch, rows + 1, width) from that of its
    output rows, dH (same shape), or where dH is empty dH[b, r] = A[r] G[b] (the last hidden
    layer: the output takes sum_r A[r] H_r): with F_k = sigma^(k)/k!,
    d value = F1 dh + 2 F2 dF1 + 3 q F3 S dL, d Z_i = F1 dH_i + 2 q F2 Z_i dL, d L = F1 dL,
    dF1 = sum_r dH_r rows_r over the rows after the value. dX may be dH itself."""
    m, w = rows.shape[1] - 1, rows.shape[2]
    combined = dH.shape[0] == 0
    cubic = q != 0.0 and F.shape[0] > 2
    s, dL, coupling = np.empty(w, dtype=dX.dtype), np.empty(w, dtype=dX.dtype), np.empty(w, dtype=dX.dtype)
    for b in range(dX.shape[0]):
        rb = b if rows.shape[0] > 1 else 0
        f1, f2, Sb, out, z = F[0, b], F[1, b], S[rb], dX[b], rows[rb]
        f3 = F[2, b] if cubic else F[1, b]
        s[:] = 0.0
        if combined:
            g = G[b]
            for i in range(m + 1):
                a = A[i + 1]
                for j in range(w):
                    s[j] += a * z[i, j]
            for j in range(w):
                s[j] *= g[j]
                dL[j] = A[m + 1] * g[j]
                out[0, j] = A[0] * g[j] * f1[j]
        else:
            d = dH[b]
            for i in range(m + 1):
                for j in range(w):
                    s[j] += d[i + 1, j] * z[i, j]
            for j in range(w):
                dL[j] = d[m + 1, j]
                out[0, j] = d[0, j] * f1[j]
        for j in range(w):
            da = out[0, j] + 2.0 * f2[j] * s[j]
            if cubic:
                da += 3.0 * q * f3[j] * Sb[j] * dL[j]
            out[0, j] = da
            coupling[j] = 2.0 * q * f2[j] * dL[j]
        for i in range(m):
            o = out[i + 1]
            if combined:
                a, g = A[i + 1], G[b]
                for j in range(w):
                    o[j] = f1[j] * a * g[j] + coupling[j] * z[i, j]
            else:
                d = dH[b, i + 1]
                for j in range(w):
                    o[j] = f1[j] * d[j] + coupling[j] * z[i, j]
        for j in range(w):
            out[m + 1, j] = f1[j] * dL[j]
