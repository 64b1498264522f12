"""A neural ODE's solution series (jet_torch.ode_series) in two compiled passes, forward and reverse,
for activations with sigma' = c0 + c1 sigma + c2 sigma^2 (tanh, sigmoid).

Eager torch pays a fixed cost per operation and per autograd node; the one-pass recursion is
hundreds of small operations. Here each pass is one numba call: the layers' products by BLAS
(numpy_loops.gemm), the Cauchy products of the activation's series as fused loops, and the
reverse pass the exact adjoint of the forward recursion, written out by hand.

Layout: coefficients first. Per hidden layer l of width n, ``store`` holds P (pre-activation),
A (activation) and U (sigma' along the curve), each (K, batch, n) for K steps; ``grads`` the
same layout for their adjoints. ``series`` is (K + 1, batch, D): z_[0..K].
"""
from __future__ import annotations

import numba
import numpy as np

from .numpy_loops import gemm, jit

@jit()
def _sizes(weights):
    """Offsets of each hidden layer's (P, A, U) block in a store, per batch row and step."""
    hidden = len(weights) - 1
    offsets = np.zeros(hidden + 1, dtype=np.int64)
    for l in range(hidden):
        offsets[l + 1] = offsets[l] + 3 * weights[l].shape[0]
    return offsets


@jit()
def _block(store, offsets, l, which, K, B, n):
    """P (which 0), A (1) or U (2) of hidden layer l: (K, B * n), each coefficient a contiguous row."""
    start = K * B * offsets[l] + which * K * B * n
    return store[start: start + K * B * n].reshape((K, B * n))


@jit()
def _gradient_views(gradient, starts, weights):
    """The weights' and biases' gradients as lists of views of the flat buffer."""
    L = len(weights)
    dweights = [gradient[starts[l]: starts[l + 1]].reshape(weights[l].shape) for l in range(L)]
    dbiases = [gradient[starts[L + l]: starts[L + l + 1]] for l in range(L)]
    return dweights, dbiases


@jit()
def transposed_layer(flat, weights, timed, l):
    """Layer l's weights transposed, without time's column (inputs, width): a view of `flat`."""
    start = 0
    for j in range(l):
        start += (weights[j].shape[1] - (1 if timed and j == 0 else 0)) * weights[j].shape[0]
    inputs = weights[l].shape[1] - (1 if timed and l == 0 else 0)
    return flat[start: start + inputs * weights[l].shape[0]].reshape((inputs, weights[l].shape[0]))


@jit()
def transpose_weights(weights, timed, flat):
    """Every layer's weights transposed into `flat` (transposed_layer's layout): OpenBLAS runs
    x @ W.T slower than x @ (W.T made contiguous), and made here it costs no Python call per layer."""
    for l in range(len(weights)):
        W, T = weights[l], transposed_layer(flat, weights, timed, l)
        for i in range(T.shape[0]):
            for o in range(T.shape[1]):
                T[i, o] = W[o, i]


@jit()
def affine(x, transposed, bias, t, w_t, timed, pre, blas, ints, zero, one):
    """Coefficient 0 through a layer: pre = x @ transposed + bias (+ the outer product t w_t of
    time and its column of weights, when timed)."""
    gemm(blas, x, transposed, pre, False, False, zero, ints, one)
    for b in range(pre.shape[0]):
        scale = t[b] if timed else 0.0
        for o in range(pre.shape[1]):
            pre[b, o] += bias[o] + scale * w_t[o]


# tanh(x) = x p(x^2) / q(x^2) on [-CLAMP, CLAMP], x itself below TINY: Eigen's and XLA's float32
# tanh, within 5 units in the last place (NumPy's within 2), and, unlike numba's call of
# the C library's tanh (forty times slower than NumPy's), a loop the compiler vectorizes
TANH_NUMERATOR = np.array([4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
                           -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16], dtype=np.float32)
TANH_DENOMINATOR = np.array([4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06],
                            dtype=np.float32)
TANH_CLAMP, TANH_TINY = np.float32(7.90531110763549805), np.float32(0.0004)


@jit(fastmath={"contract"}, error_model="numpy", inline="always")
def _tanh32(v):
    """tanh(v) of a float32 by the rational approximation above."""
    n0, n1, n2, n3, n4, n5, n6 = TANH_NUMERATOR
    q0, q1, q2, q3 = TANH_DENOMINATOR
    x = TANH_CLAMP if v > TANH_CLAMP else (-TANH_CLAMP if v < -TANH_CLAMP else v)
    x2 = x * x
    num = x * (n0 + x2 * (n1 + x2 * (n2 + x2 * (n3 + x2 * (n4 + x2 * (n5 + x2 * n6))))))
    den = q0 + x2 * (q1 + x2 * (q2 + x2 * q3))
    return v if abs(v) < TANH_TINY else num / den


@jit(fastmath={"contract"}, error_model="numpy")  # numba's check of every division for zero would keep the loop scalar
def tanh32_equation(p, a, u, c0, c1, c2):
    """a = tanh(p) (float32) and u = c0 + c1 a + c2 a^2 in one pass."""
    for i in range(p.size):
        v = _tanh32(p[i])
        a[i] = v
        u[i] = c0 + c1 * v + c2 * v * v


# The passes' elementwise loops, each its own function over whole rows: written inline in the
# passes, among their many arrays, the compiler left them scalar (the forward's u loop took six
# times as long there)
@jit(fastmath={"reassoc", "contract"})
def _equation(a, u, c0, c1, c2):
    """u = c0 + c1 a + c2 a^2."""
    for i in range(a.size):
        u[i] = c0 + c1 * a[i] + c2 * a[i] * a[i]


@jit(fastmath={"reassoc", "contract"})
def _scale(out, x, s):
    """out = s x."""
    for i in range(out.size):
        out[i] = s * x[i]


@jit(fastmath={"reassoc", "contract"})
def _add_scaled(out, x, s):
    """out += s x."""
    for i in range(out.size):
        out[i] += s * x[i]


@jit(fastmath={"reassoc", "contract"})
def _product(out, x, y):
    """out = x y."""
    for i in range(out.size):
        out[i] = x[i] * y[i]


@jit(fastmath={"reassoc", "contract"})
def _add_product(out, x, y, s):
    """out += s x y."""
    for i in range(out.size):
        out[i] += s * x[i] * y[i]


@jit(fastmath={"reassoc", "contract"})
def _adjoint_pair(g, w, pb, ur, ub, pj):
    """The adjoint of a += w pj ur: pb += w g ur and ub += w g pj."""
    for i in range(g.size):
        h = w * g[i]
        pb[i] += h * ur[i]
        ub[i] += h * pj[i]


@jit(fastmath={"reassoc", "contract"})
def forward(c, frac, t, timed, weights, transposed, fill, biases, K, inside, first_p, first_a, lo, hi, z, series, store,
            top, top_scale, blas, ints, zero, one):
    """Rows lo..hi of the batch: series[k] = z_[k] for k = 0..K and this part's store filled (see
    the module's docstring), from z (batch, D) and each hidden layer's coefficient 0: with
    `inside` (float32 tanh), made here, sigma by tanh32_equation; else given for the whole batch,
    first_p[l] = P[0] and first_a[l] = A[0] = sigma(P[0]) (sigma by NumPy's vectorized
    functions: numba's tanh is scalar and forty times slower), set by the caller; top
    (batch,), unless empty, gets top_scale times the sum of squares of z_[K] per row.

    c = (c0, c1, c2) of sigma' = c0 + c1 sigma + c2 sigma^2 and frac[k, j] = j / k, both in the
    dtype (no float64 inside the float32 loops); t (batch,) read when timed (time the last input
    of the first layer); transposed: the weights' transposes without the time column, laid out
    by transposed_layer, made here first where `fill` says so."""
    L = len(weights)
    B, D = hi - lo, series.shape[2]
    offsets = _sizes(weights)
    c0, c1, c2 = c[0], c[1], c[2]
    twice = c2 + c2  # in the dtype: a float64 constant would widen the float32 loops
    if fill:
        transpose_weights(weights, timed, transposed)
    y = np.empty((B, D), dtype=series.dtype)
    series[0][lo:hi] = z[lo:hi]
    for k in range(K):
        x = series[k][lo:hi]
        for l in range(L):
            n = weights[l].shape[0]
            last = l == L - 1
            if not last:
                P = _block(store, offsets, l, 0, K, B, n)
                A = _block(store, offsets, l, 1, K, B, n)
                U = _block(store, offsets, l, 2, K, B, n)
            if k == 0 and not last and not inside:  # P[0], A[0] given: sigma' at coefficient 0 by the equation
                p, a, u, fp, fa = P[0], A[0], U[0], first_p[l], first_a[l]
                for b in range(B):
                    for o in range(n):
                        p[b * n + o] = fp[lo + b, o]
                        a[b * n + o] = fa[lo + b, o]
                _equation(a, u, c0, c1, c2)
                x = a.reshape((B, n))
                continue
            pre = y if last else P[k].reshape((B, n))
            gemm(blas, x, transposed_layer(transposed, weights, timed, l), pre, False, False, zero, ints, one)
            if k == 0:
                bias = biases[l]
                for b in range(B):
                    for o in range(n):
                        pre[b, o] += bias[o]
            if l == 0 and timed and k <= 1:  # time's series is t0 + 1 s
                w_t = weights[0][:, weights[0].shape[1] - 1]
                for b in range(B):
                    scale = t[lo + b] if k == 0 else 1.0
                    for o in range(n):
                        pre[b, o] += scale * w_t[o]
            if last:
                out, scale = series[k + 1], frac[k + 1, 1]
                for b in range(B):
                    for o in range(D):
                        out[lo + b, o] = y[b, o] * scale
                break
            if k == 0:  # inside: sigma and sigma' at coefficient 0
                tanh32_equation(P[0], A[0], U[0], c0, c1, c2)
                x = A[0].reshape((B, n))
                continue
            p, a = P[k], A[k]
            m = k - 1  # sigma' to coefficient k - 1, then sigma to k
            if m >= 1:
                um = U[m]
                _scale(um, A[m], c1)
                for j in range((m + 1) // 2):
                    _add_product(um, A[j], A[m - j], twice)
                if m % 2 == 0:
                    _add_product(um, A[m // 2], A[m // 2], c2)
            _product(a, p, U[0])
            for j in range(1, k):
                _add_product(a, P[j], U[k - j], frac[k, j])
            x = a.reshape((B, n))
    if top.shape[0] > 0:
        zk = series[K]
        for b in range(B):
            total = 0.0
            for i in range(D):
                total += zk[lo + b, i] * zk[lo + b, i]
            top[lo + b] = top_scale * total


@jit(fastmath={"reassoc", "contract"})
def reverse(c, frac, t, timed, weights, K, series, lo, hi, store, grads, G, g_top, top_scale, gradient, starts, dz, dt,
            blas, ints, zero, one):
    """The adjoint of forward on rows lo..hi: from G (K + 1, batch, D), the gradient of series (empty:
    none), and g_top (batch,) that of forward's top (empty: none), accumulate this part's weight
    and bias gradients into `gradient` (zeroed by the caller; _gradient_views' layout), and write
    its rows of dz (batch, D; empty: not wanted, its product not made) and dt (batch,, zeroed by
    the caller, read when timed). grads, the adjoints of this part's store: empty, made here;
    else the caller's buffer of its size, kept between calls, zeroed here layer by layer (made
    here on a prange thread, it came from the thread's own malloc arena, which handed it back to
    the system after each call once JAX was loaded: 1000 page faults and 1.8 ms of system time a
    call; made here on the calling thread it is faster, a store of megabytes by a tenth)."""
    L = len(weights)
    dweights, dbiases = _gradient_views(gradient, starts, weights)
    B, D = hi - lo, series.shape[2]
    offsets = _sizes(weights)
    c1, c2 = c[1], c[2]
    twice = c2 + c2
    zbar = np.zeros((K + 1, B, D), dtype=series.dtype)
    fresh = grads.shape[0] == 0
    if fresh:
        grads = np.zeros_like(store)
    if G.shape[0] > 0:
        zbar[:] = G[:, lo:hi]
    if g_top.shape[0] > 0:
        top = series[K]
        for b in range(B):
            scale = top_scale * g_top[lo + b]
            for i in range(D):
                zbar[K, b, i] += scale * top[lo + b, i]
    ybar = np.empty((K, B, D), dtype=series.dtype)
    for k in range(K - 1, -1, -1):
        scale, below, pbar = frac[k + 1, 1], zbar[k + 1], ybar[k]
        for b in range(B):
            for i in range(D):
                pbar[b, i] = below[b, i] * scale
        for l in range(L - 1, -1, -1):
            n = weights[l].shape[0]
            inputs = weights[l].shape[1] - (1 if timed and l == 0 else 0)
            if l < L - 1:
                P = _block(store, offsets, l, 0, K, B, n)
                A = _block(store, offsets, l, 1, K, B, n)
                U = _block(store, offsets, l, 2, K, B, n)
                Pb = _block(grads, offsets, l, 0, K, B, n)
                Ab = _block(grads, offsets, l, 1, K, B, n)
                Ub = _block(grads, offsets, l, 2, K, B, n)
                ab = Ab[k]
                if k == 0:
                    _add_product(Pb[0], ab, U[0], frac[1, 1])  # frac[1, 1]: 1 in the dtype
                else:
                    for j in range(1, k + 1):  # a_k = (1/k) sum_j j p_j u_(k-j)
                        _adjoint_pair(ab, frac[k, j], Pb[j], U[k - j], Ub[k - j], P[j])
                    m = k - 1  # u_m = c1 a_m + c2 sum_j a_j a_(m-j) (u_0 = sigma'(p_0) alike)
                    um = Ub[m]
                    _add_scaled(Ab[m], um, c1)
                    for j in range(m + 1):
                        _add_product(Ab[j], um, A[m - j], twice)
                pbar = Pb[k].reshape((B, n))
            if l == 0 and timed:
                w_t = weights[0][:, inputs]
                if k == 0:
                    for b in range(B):
                        total = 0.0
                        for o in range(n):
                            total += pbar[b, o] * w_t[o]
                        dt[lo + b] += total
                if k <= 1:  # time's series is t0 + 1 s
                    dw = dweights[0]  # out of the loops: a list's item costs a reference count each time
                    for b in range(B):
                        scale = t[lo + b] if k == 0 else 1.0
                        for o in range(n):
                            dw[o, inputs] += scale * pbar[b, o]
            if l == 0:
                if k > 0 or dz.shape[0] > 0:  # zbar[0] goes to dz alone
                    gemm(blas, pbar, weights[0][:, :inputs], zbar[k], False, False, one, ints, one)
            else:
                if k == K - 1 and not fresh:  # layer l - 1's adjoints zeroed just before their first use: in cache after
                    grads[K * B * offsets[l - 1]: K * B * offsets[l]] = 0.0
                below = _block(grads, offsets, l - 1, 1, K, B, weights[l - 1].shape[0])[k]
                gemm(blas, pbar, weights[l], below.reshape((B, weights[l - 1].shape[0])), False, False, one, ints, one)
            if k == 0:
                db = dbiases[l]
                for b in range(B):
                    for o in range(n):
                        db[o] += pbar[b, o]
    if dz.shape[0] > 0:
        dz[lo:hi] = zbar[0]
    # each layer's weight gradient over all steps at once: sum_k pbar_k^T x_k
    for l in range(L):
        n = weights[l].shape[0]
        inputs = weights[l].shape[1] - (1 if timed and l == 0 else 0)
        if l == L - 1:
            Pall = ybar.reshape((K * B, n))
        else:
            Pall = _block(grads, offsets, l, 0, K, B, n).reshape((K * B, n))
        if l == 0:  # this part's rows of each coefficient: not one block
            for k in range(K):
                gemm(blas, Pall[k * B: (k + 1) * B], series[k][lo:hi], dweights[0][:, :inputs], True, False, one, ints, one)
        else:
            X = _block(store, offsets, l - 1, 1, K, B, weights[l - 1].shape[0]).reshape((K * B, inputs))
            gemm(blas, Pall, X, dweights[l][:, :inputs], True, False, one, ints, one)


@jit(parallel=True)
def forward_parts(c, frac, t, timed, weights, transposed, fill, biases, K, inside, first_p, first_a, cuts, stores, parts,
                  z, series, store, top, top_scale, blas, zero, one):
    """forward over the batch's tiles (rows cuts[i]..cuts[i + 1], store stores[i]..stores[i + 1]),
    part g taking tiles parts[g]..parts[g + 1] on its own thread, every part at once; the
    transposes made first, once, where `fill` says so."""
    if fill:
        transpose_weights(weights, timed, transposed)
    for g in numba.prange(len(parts) - 1):
        ints = np.empty(8, np.int32)
        for i in range(parts[g], parts[g + 1]):
            forward(c, frac, t, timed, weights, transposed, False, biases, K, inside, first_p, first_a, cuts[i], cuts[i + 1],
                    z, series, store[stores[i]: stores[i + 1]], top, top_scale, blas, ints, zero, one)


@jit(parallel=True)
def reverse_parts(c, frac, t, timed, weights, K, series, cuts, stores, parts, store, grads, G, g_top, top_scale,
                  gradients, starts, dz, dt, blas, zero, one):
    """reverse over the tiles as forward_parts goes over them, part g accumulating into its own
    row of gradients (zeroed here), then every row summed into row 0."""
    for g in numba.prange(len(parts) - 1):
        ints = np.empty(8, np.int32)
        gradients[g] = 0.0
        for i in range(parts[g], parts[g + 1]):
            reverse(c, frac, t, timed, weights, K, series, cuts[i], cuts[i + 1], store[stores[i]: stores[i + 1]],
                    grads[stores[i]: stores[i + 1]], G, g_top, top_scale, gradients[g], starts, dz, dt, blas, ints, zero, one)
    for g in range(1, len(parts) - 1):
        gradients[0] += gradients[g]
