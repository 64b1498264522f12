"""The biharmonic's rows through a layer as numba loops (operator_torch.ForwardBiharmonicLoops):
one pass over (batch, rows, width) per layer and direction, each layer's product one BLAS call.

Rows of a layer, derivatives (not Taylor coefficients) over the m inputs the operator takes:
row 0 the value, then z_i = d_i z (m rows), e_p = d_i d_k z for the pairs p = (i, k), i <= k
(m(m+1)/2 rows), R_i = sum_k d_k^2 d_i z (m rows) and T = sum_ik d_i^2 d_k^2 z (1 row): the
biharmonic's top and next-to-top collapsed, never a third or fourth derivative stored apart.
Through sigma (s_k its k-th derivative; S = sum z_i^2, L = sum e_ii, M_i = sum_k E_ik z_k,
Q = sum_ik E_ik^2, P = sum z_i R_i, N = sum z_i M_i with E the symmetric matrix of the e_p):

    z_i -> s1 z_i        e_ik -> s1 e_ik + s2 z_i z_k
    R_i -> s1 R_i + s2 (2 M_i + L z_i) + s3 S z_i
    T   -> s1 T + s2 (L^2 + 2 Q + 4 P) + s3 (2 S L + 4 N) + s4 S^2

A first layer's rows other than the value are the same for every point (batch axis 1). F is
(5, batch, width), sigma^(k)/k! for k = 1..5 (the backward needs the fifth). pi, pk: the pairs'
indices; pos (m, m): the pair of (i, k) either way round.
"""
import numpy as np

from .numpy_loops import jit
from .operator_loops import add_bias, add_gradient, product, propagate, rows_product


def pair_tables(m: int):
    """(pi, pk, pos) for m inputs: the pairs i <= k in order and each (i, k)'s pair, int64."""
    pairs = [(i, k) for i in range(m) for k in range(i, m)]
    pos = np.empty((m, m), dtype=np.int64)
    for p, (i, k) in enumerate(pairs):
        pos[i, k] = pos[k, i] = p
    return (np.array([i for i, _ in pairs], dtype=np.int64), np.array([k for _, k in pairs], dtype=np.int64), pos)


@jit()
def _five(w, dtype):
    """Five scratch rows of width w (numba has no generator expressions to make them)."""
    block = np.empty((5, w), dtype=dtype)
    return block[0], block[1], block[2], block[3], block[4]


@jit(fastmath={"reassoc", "contract"})
def _sums(Xb, m, pi, pk, pos, S, L, Q, P, M, N):
    """The per-neuron sums S, L, Q, P, M (m, width) and N of one point's rows Xb."""
    npairs = pi.shape[0]
    e0, r0 = 1 + m, 1 + m + npairs
    S[:] = 0.0
    L[:] = 0.0
    Q[:] = 0.0
    P[:] = 0.0
    N[:] = 0.0
    w = S.shape[0]
    for i in range(m):
        z, R, d = Xb[1 + i], Xb[r0 + i], Xb[e0 + pos[i, i]]
        for j in range(w):
            S[j] += z[j] * z[j]
            L[j] += d[j]
            P[j] += z[j] * R[j]
    for p in range(npairs):
        e, c = Xb[e0 + p], 1.0 if pi[p] == pk[p] else 2.0
        for j in range(w):
            Q[j] += c * e[j] * e[j]
    for i in range(m):
        Mi = M[i]
        Mi[:] = 0.0
        for k in range(m):
            e, z = Xb[e0 + pos[i, k]], Xb[1 + k]
            for j in range(w):
                Mi[j] += e[j] * z[j]
        z = Xb[1 + i]
        for j in range(w):
            N[j] += z[j] * Mi[j]


@jit(fastmath={"reassoc", "contract"})
def rows_out(X, value, F, m, pi, pk, pos, H, lo, n):
    """The output rows of points lo..lo+n-1 into H[0..n) from their pre-activation rows X."""
    w, npairs = H.shape[2], pi.shape[0]
    e0, r0, t0 = 1 + m, 1 + m + npairs, 1 + 2 * m + npairs
    S, L, Q, P, N = _five(w, H.dtype)
    M = np.empty((m, w), dtype=H.dtype)
    for c in range(n):
        b = lo + c
        xb = b if X.shape[0] > 1 else 0
        Xb, Hb = X[xb], H[c]
        if c == 0 or X.shape[0] > 1:
            _sums(Xb, m, pi, pk, pos, S, L, Q, P, M, N)
        f1, f2, f3, f4 = F[0, b], F[1, b], F[2, b], F[3, b]
        Hb[0, :] = value[b]
        for i in range(m):
            z, h = Xb[1 + i], Hb[1 + i]
            for j in range(w):
                h[j] = f1[j] * z[j]
        for p in range(npairs):
            e, zi, zk, h = Xb[e0 + p], Xb[1 + pi[p]], Xb[1 + pk[p]], Hb[e0 + p]
            for j in range(w):
                h[j] = f1[j] * e[j] + 2.0 * f2[j] * zi[j] * zk[j]
        for i in range(m):
            z, R, Mi, h = Xb[1 + i], Xb[r0 + i], M[i], Hb[r0 + i]
            for j in range(w):
                h[j] = f1[j] * R[j] + 2.0 * f2[j] * (2.0 * Mi[j] + L[j] * z[j]) + 6.0 * f3[j] * S[j] * z[j]
        T, h = Xb[t0], Hb[t0]
        for j in range(w):
            h[j] = (f1[j] * T[j] + 2.0 * f2[j] * (L[j] * L[j] + 2.0 * Q[j] + 4.0 * P[j])
                    + 6.0 * f3[j] * (2.0 * S[j] * L[j] + 4.0 * N[j]) + 24.0 * f4[j] * S[j] * S[j])


@jit(fastmath={"reassoc", "contract"})
def top_out(X, F, m, pi, pk, pos, c, Y):
    """c times the top row rows_out would make, into Y (batch, width): all the output layer needs."""
    w, npairs = Y.shape[1], pi.shape[0]
    t0 = 1 + 2 * m + npairs
    S, L, Q, P, N = _five(w, Y.dtype)
    M = np.empty((m, w), dtype=Y.dtype)
    for b in range(Y.shape[0]):
        xb = b if X.shape[0] > 1 else 0
        Xb = X[xb]
        if b == 0 or X.shape[0] > 1:
            _sums(Xb, m, pi, pk, pos, S, L, Q, P, M, N)
        f1, f2, f3, f4, T, y = F[0, b], F[1, b], F[2, b], F[3, b], Xb[t0], Y[b]
        for j in range(w):
            y[j] = c * (f1[j] * T[j] + 2.0 * f2[j] * (L[j] * L[j] + 2.0 * Q[j] + 4.0 * P[j])
                        + 6.0 * f3[j] * (2.0 * S[j] * L[j] + 4.0 * N[j]) + 24.0 * f4[j] * S[j] * S[j])


@jit(fastmath={"reassoc", "contract"})
def rows_back(dH, G, c, X, F, m, pi, pk, pos, dX, sums, value_only):
    """The gradient of a layer's pre-activation rows, dX (batch, rows, width; may be dH itself),
    from that of its output rows dH, or where dH is empty from G (batch, width), the gradient of
    c T (the last hidden layer). sums (rows, width): dX summed over the batch; value_only: only
    dX's value row is written (a first layer's other rows are the same for every point)."""
    w, npairs, nrows = X.shape[2], pi.shape[0], X.shape[1]
    e0, r0, t0 = 1 + m, 1 + m + npairs, 1 + 2 * m + npairs
    combined = dH.shape[0] == 0
    S, L, Q, P, N = _five(w, X.dtype)
    M = np.empty((m, w), dtype=X.dtype)
    gT, gRz, df1, df2, acc = _five(w, X.dtype)
    scratch = np.zeros((nrows if combined else 0, w), dtype=X.dtype)
    sums[:] = 0.0
    for b in range(F.shape[1]):
        xb = b if X.shape[0] > 1 else 0
        Xb, out = X[xb], dX[b]
        if b == 0 or X.shape[0] > 1:
            _sums(Xb, m, pi, pk, pos, S, L, Q, P, M, N)
        if combined:
            g = G[b]
            for j in range(w):
                scratch[t0, j] = c * g[j]
            d = scratch
        else:
            d = dH[b]
        f1, f2, f3, f4, f5 = F[0, b], F[1, b], F[2, b], F[3, b], F[4, b]
        T = Xb[t0]
        for j in range(w):
            gT[j] = d[t0, j]
            gRz[j] = 0.0
            df1[j] = gT[j] * T[j]
            df2[j] = gT[j] * (L[j] * L[j] + 2.0 * Q[j] + 4.0 * P[j])
        for i in range(m):
            z, R, Mi, gi, gR = Xb[1 + i], Xb[r0 + i], M[i], d[1 + i], d[r0 + i]
            for j in range(w):
                gRz[j] += gR[j] * z[j]
                df1[j] += gi[j] * z[j] + gR[j] * R[j]
                df2[j] += gR[j] * (2.0 * Mi[j] + L[j] * z[j])
        for p in range(npairs):
            e, ge, zi, zk = Xb[e0 + p], d[e0 + p], Xb[1 + pi[p]], Xb[1 + pk[p]]
            for j in range(w):
                df1[j] += ge[j] * e[j]
                df2[j] += ge[j] * zi[j] * zk[j]
        # the value: sum_k s_(k+1) d s_k-weighted rows, s_k = k! F_k
        gv, v = d[0], out[0]
        for j in range(w):
            df3 = S[j] * gRz[j] + gT[j] * (2.0 * S[j] * L[j] + 4.0 * N[j])
            df4 = gT[j] * S[j] * S[j]
            v[j] = (gv[j] * f1[j] + 2.0 * f2[j] * df1[j] + 6.0 * f3[j] * df2[j] + 24.0 * f4[j] * df3
                    + 120.0 * f5[j] * df4)
            sums[0, j] += v[j]
        # each row below reads its own gradient, gT, gRz and rows not yet written (gR, then g_e)
        for i in range(m):
            z, R, Mi, gi, gR = Xb[1 + i], Xb[r0 + i], M[i], d[1 + i], d[r0 + i]
            for j in range(w):
                acc[j] = 0.0
            for k in range(m):
                p = pos[i, k]
                ge, ek, gRk, zk = d[e0 + p], Xb[e0 + p], d[r0 + k], Xb[1 + k]
                two = 2.0 if i == k else 1.0
                for j in range(w):
                    acc[j] += two * ge[j] * zk[j] + 2.0 * ek[j] * gRk[j]
            total = sums[1 + i]
            for j in range(w):
                s2, s3 = 2.0 * f2[j], 6.0 * f3[j]
                o = (f1[j] * gi[j] + s2 * (acc[j] + L[j] * gR[j]) + s3 * (2.0 * z[j] * gRz[j] + S[j] * gR[j])
                     + gT[j] * (4.0 * s2 * R[j] + s3 * (4.0 * L[j] * z[j] + 8.0 * Mi[j]) + 96.0 * f4[j] * S[j] * z[j]))
                total[j] += o
                if not value_only:
                    out[1 + i, j] = o
        for p in range(npairs):
            i, k = pi[p], pk[p]
            e, ge, zi, zk, gRi, gRk, total = Xb[e0 + p], d[e0 + p], Xb[1 + i], Xb[1 + k], d[r0 + i], d[r0 + k], \
                sums[e0 + p]
            for j in range(w):
                s2, s3 = 2.0 * f2[j], 6.0 * f3[j]
                if i == k:
                    o = (f1[j] * ge[j] + s2 * (2.0 * gRi[j] * zi[j] + gRz[j])
                         + gT[j] * (s2 * (2.0 * L[j] + 4.0 * e[j]) + s3 * (2.0 * S[j] + 4.0 * zi[j] * zi[j])))
                else:
                    o = (f1[j] * ge[j] + 2.0 * s2 * (gRi[j] * zk[j] + gRk[j] * zi[j])
                         + 8.0 * gT[j] * (s2 * e[j] + s3 * zi[j] * zk[j]))
                total[j] += o
                if not value_only:
                    out[e0 + p, j] = o
        for i in range(m):
            z, gR, total = Xb[1 + i], d[r0 + i], sums[r0 + i]
            for j in range(w):
                o = f1[j] * gR[j] + 8.0 * f2[j] * z[j] * gT[j]
                total[j] += o
                if not value_only:
                    out[r0 + i, j] = o
        total = sums[t0]
        for j in range(w):
            o = f1[j] * gT[j]
            total[j] += o
            if not value_only:
                out[t0, j] = o


@jit()
def next_layer(blas, X, value, F, m, pi, pk, pos, W, bias, H, X_next, a):
    """The next layer's pre-activation rows X_next: this layer's output rows, H.shape[0] points
    at a time into H (rows_out), each chunk one product by W^T, and the next value
    a = X_next[:, 0] + bias."""
    for lo in range(0, X_next.shape[0], H.shape[0]):
        n = min(H.shape[0], X_next.shape[0] - lo)
        rows_out(X, value, F, m, pi, pk, pos, H, lo, n)
        rows_product(blas, H, n, W, X_next, lo)
    add_bias(X_next, bias, a)


@jit()
def last_layer(blas, X, F, m, pi, pk, pos, c, W, Y, out):
    """The output: Y = c T of the last hidden layer (top_out), out = Y W^T (the bias has no derivative)."""
    top_out(X, F, m, pi, pk, pos, c, Y)
    product(blas, Y, W, out)


@jit()
def below_gradients(blas, X_p, value_p, F_p, m, pi, pk, pos, W, dX, H, dH_prev):
    """A hidden layer's W gradient from its dX (rows_back's), the layer below's output rows made
    again H.shape[0] points at a time into H, and dH_prev = dX W (operator_loops.propagate)."""
    batch = dX.shape[0]
    gW = np.empty((dX.shape[2], W.shape[1]), dtype=dX.dtype)
    for lo in range(0, batch, H.shape[0]):
        n = min(H.shape[0], batch - lo)
        rows_out(X_p, value_p, F_p, m, pi, pk, pos, H, lo, n)
        add_gradient(blas, dX, lo, n, H, gW)
    propagate(blas, dX, W, H, dH_prev)
    return gW
