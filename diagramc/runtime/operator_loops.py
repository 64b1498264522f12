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

from .numpy_loops import gemm, jit


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
def rows_out(X, value, F, q, H, lo, n):
    """The output rows of points lo..lo+n-1 into H[0..n) (rows, width each): the value, F1 times
    every other row, and q F2 S added to the collapsed row, S = sum_i Z_i^2 made per point."""
    last, w = X.shape[1] - 1, H.shape[2]
    Sb = np.empty(w, dtype=H.dtype)
    for c in range(n):
        b = lo + c
        xb = b if X.shape[0] > 1 else 0
        f1, f2, Hb, Xb = F[0, b], F[1, b], H[c], X[xb]
        Hb[0, :] = value[b]
        for i in range(1, last + 1):
            z, h = Xb[i], Hb[i]
            for j in range(w):
                h[j] = f1[j] * z[j]
        if q != 0.0:
            if c == 0 or X.shape[0] > 1:
                _squares(X[xb : xb + 1], Sb.reshape((1, w)))
            h = Hb[last]
            for j in range(w):
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
def rows_back(dH, A, G, X, F, q, dX, sums, value_only):
    """The gradient of a layer's pre-activation rows dX (batch, rows, width; may be dH or X) from
    that of its output rows, dH (same shape), or where dH is empty dH[b, r] = A[r] G[b] (the last
    hidden layer: the output takes sum_r A[r] H_r): with F_k = sigma^(k)/k!,
    d value = F1 dh + 2 F2 dF1 + 3 q F3 S dL, d Z_i = F1 dH_i + 2 q F2 Z_i dL, d L = F1 dL,
    dF1 = sum_r dH_r X_r over the rows after the value, S = sum_i Z_i^2 made again here (not
    stored between the passes: memory is what a differentiable call keeps). sums (rows, width):
    dX summed over the batch; value_only: dX's value row alone is written (the first layer's
    other rows are the same for every point: their sums serve)."""
    last, w = X.shape[1] - 1, X.shape[2]
    combined = dH.shape[0] == 0
    cubic = q != 0.0
    s, dL, coupling = np.empty(w, dtype=dX.dtype), np.empty(w, dtype=dX.dtype), np.empty(w, dtype=dX.dtype)
    o, Sb = np.empty(w, dtype=dX.dtype), np.empty(w, dtype=dX.dtype)
    sums[:] = 0.0
    for b in range(dX.shape[0]):
        xb = b if X.shape[0] > 1 else 0
        f1, f2, f3, out, z = F[0, b], F[1, b], F[2, b], dX[b], X[xb]
        if b == 0 or X.shape[0] > 1:  # before dX, which may be X, is written
            _squares(X[xb : xb + 1], Sb.reshape((1, w)))
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


@jit()
def product(blas, A, W, C):
    """C = A @ W^T by BLAS's gemm (numpy_loops.gemm; rows of unit stride)."""
    ints = np.empty(8, dtype=np.int32)
    zero, one = np.zeros(1, dtype=C.dtype), np.ones(1, dtype=C.dtype)
    gemm(blas, A, W, C, False, True, zero, ints, one)


# The loops below take their large arrays from the caller (NumPy's allocations): arrays of megabytes
# made inside numba went back to the system at each free and cost a page fault per 4 kB at each call.


@jit()
def first_layer(blas, x, W, bias, rows_in, X, a):
    """Layer 1's pre-activation rows into X (1, rows, width; zero on entry: its value row stays
    zero, the others rows_in W^T, the same for every point) and a = x W^T + bias (batch, width)."""
    product(blas, rows_in, W, X[0, 1:])
    product(blas, x, W, a)
    for b in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[b, j] += bias[j]


@jit()
def next_layer(blas, X, value, F, q, W, bias, H, X_next, a):
    """The next layer's pre-activation rows X_next from a layer's X: its output rows, H.shape[0]
    points at a time into H (rows_out), each chunk one product by W^T, and the next value
    a = X_next[:, 0] + bias (contiguous). One call: no product goes through Python."""
    for lo in range(0, X_next.shape[0], H.shape[0]):
        n = min(H.shape[0], X_next.shape[0] - lo)
        rows_out(X, value, F, q, H, lo, n)
        rows_product(blas, H, n, W, X_next, lo)
    add_bias(X_next, bias, a)


@jit()
def rows_product(blas, H, n, W, X_next, lo):
    """X_next[points lo..lo+n) = H[0..n) W^T, one product over every row of those points."""
    rows = H.shape[1]
    chunk, out = H.reshape((H.shape[0] * rows, H.shape[2])), X_next.reshape((X_next.shape[0] * rows, W.shape[0]))
    product(blas, chunk[: n * rows], W, out[lo * rows : (lo + n) * rows])


@jit()
def add_bias(X_next, bias, a):
    """The next value, a = X_next[:, 0] + bias (contiguous)."""
    for b in range(X_next.shape[0]):
        for j in range(a.shape[1]):
            a[b, j] = X_next[b, 0, j] + bias[j]


@jit()
def last_layer(blas, X, value, F, q, A, W, bias, S, Y, out):
    """The output: Y = sum_r A[r] H_r of the last hidden layer's rows (rows_combined), then
    out = Y W^T + A[0] bias."""
    rows_combined(X, value, F, q, A, Y, S)
    product(blas, Y, W, out)
    for b in range(out.shape[0]):
        for o in range(out.shape[1]):
            out[b, o] += A[0] * bias[o]


@jit()
def back_top(g, Y, W, a0):
    """The output layer's gradients from g = d/d(out) (batch, outputs): W's (g^T Y), the bias's
    (a0 sum_b g) and G = g W, the gradient of the combined rows Y (a few outputs: plain loops)."""
    gW = np.zeros((g.shape[1], Y.shape[1]), dtype=Y.dtype)
    gb = np.zeros(g.shape[1], dtype=Y.dtype)
    G = np.zeros_like(Y)
    for b in range(g.shape[0]):
        for o in range(g.shape[1]):
            c, w, row = g[b, o], W[o], gW[o]
            gb[o] += a0 * c
            for j in range(Y.shape[1]):
                row[j] += c * Y[b, j]
                G[b, j] += c * w[j]
    return gW, gb, G


@jit()
def add_gradient(blas, dX, lo, n, H, gW):
    """gW (+)= dX[points lo..lo+n)^T H[0..n) over their rows (= where lo is 0), one BLAS call."""
    batch, rows, width = dX.shape
    ints = np.empty(8, dtype=np.int32)
    zero, one = np.zeros(1, dtype=dX.dtype), np.ones(1, dtype=dX.dtype)
    flat, chunk = dX.reshape((batch * rows, width)), H.reshape((H.shape[0] * rows, H.shape[2]))
    gemm(blas, flat[lo * rows : (lo + n) * rows], chunk[: n * rows], gW, True, False, zero if lo == 0 else one, ints,
         one)


@jit()
def propagate(blas, dX, W, H, dH_prev):
    """dH_prev = dX W, H.shape[0] points at a time through H (rows of width W.shape[1]): dH_prev
    may share dX's memory, its rows no further on than dX's that made them."""
    batch, rows, width = dX.shape
    n_in = W.shape[1]
    ints = np.empty(8, dtype=np.int32)
    zero, one = np.zeros(1, dtype=dX.dtype), np.ones(1, dtype=dX.dtype)
    flat, out = dX.reshape((batch * rows, width)), dH_prev.reshape((batch * rows, n_in))
    chunk = H.reshape((H.shape[0] * rows, n_in))
    if H.shape[0] >= batch and H.ctypes.data == dH_prev.ctypes.data:  # H is the whole of dH_prev: straight in
        gemm(blas, flat, W, out, False, False, zero, ints, one)
        return
    step = chunk.shape[0]
    for lo in range(0, batch * rows, step):
        hi = min(batch * rows, lo + step)
        gemm(blas, flat[lo:hi], W, chunk[: hi - lo], False, False, zero, ints, one)
        out[lo:hi] = chunk[: hi - lo]


@jit()
def first_gradients(blas, dX, sums, x, rows_in, W, dx):
    """The first layer's gradients from its value row's d = dX[:, 0] and the other rows' sums over
    the batch (the same for every point): W's d^T x + sums^T rows_in, the bias's, and x's (d W)
    into dx where dx has rows; returns (W's gradient, the bias's)."""
    batch, width = dX.shape[0], dX.shape[2]
    d = np.empty((batch, width), dtype=dX.dtype)
    for b in range(batch):
        d[b, :] = dX[b, 0]
    ints = np.empty(8, dtype=np.int32)
    zero, one = np.zeros(1, dtype=dX.dtype), np.ones(1, dtype=dX.dtype)
    gW = np.empty((width, x.shape[1]), dtype=dX.dtype)
    gemm(blas, d, x, gW, True, False, zero, ints, one)
    gemm(blas, sums[1:], rows_in, gW, True, False, one, ints, one)
    if dx.shape[0]:
        gemm(blas, d, W, dx, False, False, zero, ints, one)
    return gW, sums[0].copy()


@jit()
def below_gradients(blas, X_p, value_p, F_p, q, W, dX, H, dH_prev):
    """A hidden layer's W gradient from its dX (rows_back's), the layer below's output rows made
    again H.shape[0] points at a time into H (rows_out), and dH_prev = dX W (propagate)."""
    batch = dX.shape[0]
    gW = np.empty((dX.shape[2], W.shape[1]), dtype=dX.dtype)
    for lo in range(0, batch, H.shape[0]):
        n = min(H.shape[0], batch - lo)
        rows_out(X_p, value_p, F_p, q, H, lo, n)
        add_gradient(blas, dX, lo, n, H, gW)
    propagate(blas, dX, W, H, dH_prev)
    return gW
