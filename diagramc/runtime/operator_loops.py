"""The forward Laplacian's elementwise work (operator_torch.ForwardLaplacianLoops) as numba loops,
one pass over (batch, rows, width) per layer and direction, in place of a dozen torch operations.

A layer's pre-activation rows X are (batch or 1, rows, width) with row 0 the value (not read
here: the activation has it), rows 1..m the first-order series and row m + 1 the collapsed
row; a first layer's rows are the same for every point and keep a batch axis of 1. Whole
C-ordered arrays, not slices: numba vectorizes only loops over unit-stride rows it can see.
F is (3, batch, width), the vertex weights sigma^(k)/k!, k = 1..3; q the uniform quadratic
form's coefficient (0: none); A the output's row coefficients.
"""
import numpy as np

from .numpy_loops import jit


@jit(fastmath={"reassoc", "contract"})  # the sum of squares vectorizes only if it may be reordered
def _squares(X, S):
    """S[b] = sum_i Z_i^2 over the first-order rows of X[b]."""
    for b in range(S.shape[0]):
        Sb = S[b]
        Sb[:] = 0.0
        for i in range(1, X.shape[1] - 1):
            z = X[b, i]
            for j in range(z.shape[0]):
                Sb[j] += z[j] * z[j]


@jit(fastmath={"reassoc", "contract"})
def rows_out(X, value, F, q, H, S):
    """A layer's output rows into H (batch, rows, width): the value, F1 times every other row, and
    q F2 S added to the collapsed row; S = sum_i Z_i^2 (rows' batch, width) made first."""
    _squares(X, S)
    last = X.shape[1] - 1
    for b in range(H.shape[0]):
        xb = b if X.shape[0] > 1 else 0
        f1, f2, Sb, Hb, Xb = F[0, b], F[1, b], S[xb], H[b], X[xb]
        Hb[0, :] = value[b]
        for i in range(1, last + 1):
            z, h = Xb[i], Hb[i]
            for j in range(h.shape[0]):
                h[j] = f1[j] * z[j]
        if q != 0.0:
            h = Hb[last]
            for j in range(h.shape[0]):
                h[j] += q * f2[j] * Sb[j]


@jit(fastmath={"reassoc", "contract"})
def rows_combined(X, value, F, q, A, Y, S):
    """sum_r A[r] H[:, r] of the output rows rows_out would make, into Y (batch, width), never
    making H; S as rows_out's."""
    _squares(X, S)
    last = X.shape[1] - 1
    for b in range(Y.shape[0]):
        xb = b if X.shape[0] > 1 else 0
        f1, f2, Sb, y, v, Xb = F[0, b], F[1, b], S[xb], Y[b], value[b], X[xb]
        for j in range(y.shape[0]):
            y[j] = A[0] * v[j]
        for i in range(1, last + 1):
            z, a = Xb[i], A[i]
            if a != 0.0:
                for j in range(y.shape[0]):
                    y[j] += a * f1[j] * z[j]
        a = A[last] * q
        if a != 0.0:
            for j in range(y.shape[0]):
                y[j] += a * f2[j] * Sb[j]


@jit(fastmath={"reassoc", "contract"})
def rows_back(dH, A, G, X, S, F, q, dX, sums, value_only):
    """The gradient of a layer's pre-activation rows dX (batch, rows, width) from that of its
    output rows, dH (same shape), or where dH is empty dH[b, r] = A[r] G[b] (the last hidden
    layer: the output takes sum_r A[r] H_r): with F_k = sigma^(k)/k!,
    d value = F1 dh + 2 F2 dF1 + 3 q F3 S dL, d Z_i = F1 dH_i + 2 q F2 Z_i dL, d L = F1 dL,
    dF1 = sum_r dH_r X_r over the rows after the value. dX may be dH itself. sums (rows, width):
    dX summed over the batch; value_only: dX's value row alone is written (the first layer's
    other rows are the same for every point: their sums serve)."""
    last, w = X.shape[1] - 1, X.shape[2]
    combined = dH.shape[0] == 0
    cubic = q != 0.0
    s, dL, coupling = np.empty(w, dtype=dX.dtype), np.empty(w, dtype=dX.dtype), np.empty(w, dtype=dX.dtype)
    o = np.empty(w, dtype=dX.dtype)
    sums[:] = 0.0
    for b in range(dX.shape[0]):
        xb = b if X.shape[0] > 1 else 0
        f1, f2, f3, Sb, out, z = F[0, b], F[1, b], F[2, b], S[xb], dX[b], X[xb]
        s[:] = 0.0
        if combined:
            g = G[b]
            for i in range(1, last + 1):
                a = A[i]
                for j in range(w):
                    s[j] += a * z[i, j]
            for j in range(w):
                s[j] *= g[j]
                dL[j] = A[last] * g[j]
                out[0, j] = A[0] * g[j] * f1[j]
        else:
            d = dH[b]
            for i in range(1, last + 1):
                for j in range(w):
                    s[j] += d[i, j] * z[i, j]
            for j in range(w):
                dL[j] = d[last, j]
                out[0, j] = d[0, j] * f1[j]
        for j in range(w):
            da = out[0, j] + 2.0 * f2[j] * s[j]
            if cubic:
                da += 3.0 * q * f3[j] * Sb[j] * dL[j]
            out[0, j] = da
            sums[0, j] += da
            coupling[j] = 2.0 * q * f2[j] * dL[j]
        for i in range(1, last + 1):
            zi, total = z[i], sums[i]
            if i == last:
                for j in range(w):
                    o[j] = f1[j] * dL[j]
            elif combined:
                a, g = A[i], G[b]
                for j in range(w):
                    o[j] = f1[j] * a * g[j] + coupling[j] * zi[j]
            else:
                d = dH[b, i]
                for j in range(w):
                    o[j] = f1[j] * d[j] + coupling[j] * zi[j]
            for j in range(w):
                total[j] += o[j]
            if not value_only:
                out[i, :] = o
