"""The NumPy Taylor kernel's chunked path as one compiled call per thread's part.

TaylorKernel._series makes a chunk's series in about fifty NumPy and numba calls; two Python
threads running those calls side by side queue for the GIL between them, and each hand-over
costs tens of microseconds on a virtual machine. Here the same algorithm for one part of the
batch (all its chunks) is one numba call that releases the GIL throughout, and the parts of a
call run under one `prange` (series_parts) where numba's threading layer hands work over in
microseconds. The layer loop and the reverse sweep follow TaylorKernel._series and _top_order
step by step with the same fused loops, for the fused NumPy path from order 3: layer 1 from its
kept powers, the layers above by the activation's equation or by the powers of Z, the top order
by Gram entries folded at layer 1, the next-to-top order by the tangent or not.

Arrays only, no lists or tuples of them (numba compiles lists of arrays several times slower,
and a tuple's length is part of the compiled type): the weights and a layer's stored arrays
are views of flat buffers at per-layer offsets.
"""
import numba
import numpy as np

from .numpy_loops import (_call_activation, fused_add_row_dots, fused_add_scaled, fused_add_tangent_part,
                          fused_equation_series, fused_equation_top, fused_product, fused_tangent_lines, gemm, jit)


@jit()
def _affine(blas, h, W, b, ints, one):
    """h @ W.T + b by BLAS, a new (rows, W's rows) array."""
    z = np.empty((h.shape[0], W.shape[0]), dtype=h.dtype)
    for r in range(z.shape[0]):
        for j in range(z.shape[1]):
            z[r, j] = b[j]
    gemm(blas, h, W, z, False, True, one, ints, one)
    return z


@jit()
def _offsets(sizes):
    """Each size's first position in a buffer laid end to end, and one past the last."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    for i in range(len(sizes)):
        offsets[i + 1] = offsets[i] + sizes[i]
    return offsets


@jit()
def _matrix(flat, offsets, shapes, l):
    """Layer l's weight matrix, a view of the weights laid end to end."""
    return flat[offsets[l] : offsets[l + 1]].reshape((shapes[l, 0], shapes[l, 1]))


@jit()
def series_part(activation, weight_count, slots, blas, x, weights, biases, shapes, first_rows, first_orders, start, order,
                equation, by_equation, s_starts, s_left, s_right, s_weight, q_starts, q_left, q_right, q_weight,
                power_ks, power_starts, power_at, power_left, power_right, power_weight, terms, term_scales,
                pieces, gram_size, gram_starts, gram_entries, gram_weight, first_term, first_scale, first_gram_weight,
                by_tangent, tangent_positions, fold, low, pushed, chunk, out, u):
    """TaylorKernel._series for rows x, chunk points at a time, into out (rows, OUTPUTS,
    1 + series size: the value, the low orders and the top order in _TOP_ORDER) and, where
    `fold`, u (rows, OUTPUTS, layer 1's width), whose u @ K.T is layer 1's top-order part.

    activation, weight_count, slots: the module's activation cfunc's address, its weights'
    count and each order k's slot among them (-1: sigma^(k) = 0); weights, biases: every
    layer's, laid end to end (one array each, so that one compiled version serves every
    depth), shapes: each weight matrix's (rows, columns); first_rows (low, width 1),
    first_orders: layer 1's series rows before the vertex weight of their order (layer 1's
    powers); start: the series' _START; the equation's (c0, c1, c2) and product tables (s_*,
    q_*) where by_equation; else power_ks (k = 2, 3, ...), power_at (where each k's targets' starts
    begin in power_starts, and one past the last) and the fused products' rows, and terms (block rows r0, r1 and k, per term;
    term_scales) of the top order's left factors; pieces ... gram_weight: fused_equation_top's
    tables (weights (ORDER - a)/ORDER by the equation, 1 by the powers); first_term (rows r0,
    r1 and k = ORDER, r1 = r0 where there is none), first_scale, first_gram_weight (all 1):
    layer 1's one top-order term where it is not folded; tangent_positions: where the
    tangent's Gram entries go (by_tangent)."""
    dtype = x.dtype
    hidden, outputs = shapes.shape[0] - 1, shapes[-1, 0]
    w_at, b_at = _offsets(shapes[:, 0] * shapes[:, 1]), _offsets(shapes[:, 0])
    first = start[2]  # first-order columns
    ints, one, zero = np.empty(8, dtype=np.int32), np.ones(1, dtype=dtype), np.zeros(1, dtype=dtype)
    widths = np.empty(hidden, dtype=np.int64)
    for l in range(hidden):
        widths[l] = shapes[l, 0]
    power_rows = np.zeros(order + 1, dtype=np.int64)  # P_k's first row in a layer's powers (k in power_ks)
    rows = 0
    for k in power_ks:
        power_rows[k] = rows
        rows += low - start[k]
    kept_rows = low if by_equation else rows  # per layer from 2 on: Q, or the powers P_2, P_3, ...
    for i0 in range(0, x.shape[0], chunk):
        i1 = min(i0 + chunk, x.shape[0])
        n = i1 - i0
        # per hidden layer, in flat buffers: vertex weights, Z (from 2 on), Q or powers, next-to-top rows of S
        f_at, z_at = _offsets(weight_count * n * widths), _offsets(low * n * widths)
        k_at, s_at = _offsets(kept_rows * n * widths), _offsets((low - pushed) * n * widths)
        f_buf, z_buf = np.empty(f_at[-1], dtype=dtype), np.empty(z_at[-1], dtype=dtype)
        k_buf, s_buf = np.empty(k_at[-1], dtype=dtype), np.empty(s_at[-1], dtype=dtype)
        z = _affine(blas, x[i0:i1], _matrix(weights, w_at, shapes, 0), biases[b_at[0] : b_at[1]], ints, one)
        Z = z_buf[: low * n * widths[0]].reshape((low, n, widths[0]))  # a stand-in: layer 1 reads first_rows
        for l in range(hidden):
            w = widths[l]
            h, f = np.empty((n, w), dtype=dtype), f_buf[f_at[l] : f_at[l + 1]].reshape((weight_count, n, w))
            _call_activation(activation, z, h, f)
            H = np.empty((low, n, w), dtype=dtype)
            if l == 0:  # layer 1: the row of order k is sigma^(k)/k! times Z^k's (_first_layer_series)
                for c in range(low):
                    slot = slots[first_orders[c]]
                    for b in range(n):
                        for j in range(w):
                            H[c, b, j] = 0.0 if slot < 0 else f[slot, b, j] * first_rows[c, j]
            elif by_equation:  # S and Q = p(S) by the activation's equation (_equation_series)
                Q = k_buf[k_at[l] : k_at[l + 1]].reshape((low, n, w))
                slope = np.empty((n, w), dtype=dtype)
                for b in range(n):
                    for j in range(w):
                        slope[b, j] = equation[1] + 2.0 * equation[2] * h[b, j]
                fused_equation_series(Z.reshape((low, n * w)), slope.reshape(n * w), f[slots[1]].reshape(n * w),
                                      s_starts, s_left, s_right, s_weight, q_starts, q_left, q_right, q_weight,
                                      H.reshape((low, n * w)), Q.reshape((low, n * w)))
            else:  # the powers P_k = P_(k-1) Z and sum_k sigma^(k)/k! P_k (_powers, _through_activation)
                P = k_buf[k_at[l] : k_at[l + 1]].reshape((kept_rows, n, w))
                for i in range(len(power_ks)):
                    k = power_ks[i]
                    A = Z if k == 2 else P[power_rows[k - 1] : power_rows[k - 1] + low - start[k - 1]]
                    fused_product(A, Z, power_starts[power_at[i] : power_at[i + 1]], power_left, power_right,
                                  power_weight, P[power_rows[k] : power_rows[k] + low - start[k]])
                slope = f[slots[1]]
                for c in range(low):
                    for b in range(n):
                        for j in range(w):
                            H[c, b, j] = slope[b, j] * Z[c, b, j]
                for k in power_ks:
                    if slots[k] >= 0:
                        fused_add_scaled(H, start[k], f[slots[k]], P[power_rows[k] : power_rows[k] + low - start[k]])
            if by_tangent:
                S = s_buf[s_at[l] : s_at[l + 1]].reshape((low - pushed, n, w))
                for c in range(low - pushed):
                    for b in range(n):
                        for j in range(w):
                            S[c, b, j] = H[pushed + c, b, j]
            W = _matrix(weights, w_at, shapes, l + 1)
            wn = W.shape[0]  # the next layer's Z: S's first `pushed` rows times W.T, zeros above (_through_layer)
            Z = z_buf[z_at[l + 1] : z_at[l + 1] + low * n * wn].reshape((low, n, wn)) if l + 1 < hidden else np.empty((low, n, wn), dtype=dtype)
            gemm(blas, H[:pushed].reshape((pushed * n, w)), W, Z[:pushed].reshape((pushed * n, wn)), False, True, zero, ints, one)
            for c in range(pushed, low):
                for b in range(n):
                    for j in range(wn):
                        Z[c, b, j] = 0.0
            z = _affine(blas, h, W, biases[b_at[l + 1] : b_at[l + 2]], ints, one)
        part = out[i0:i1]
        for b in range(n):
            for o in range(outputs):
                part[b, o, 0] = z[b, o]
                for c in range(low):
                    part[b, o, 1 + c] = Z[c, b, o]
        top = part[:, :, 1 + low :]
        # the reverse sweep (_top_order): g = df/dh at each layer, from the output layer down
        g = np.empty((n, outputs, widths[-1]), dtype=dtype)
        for b in range(n):
            for o in range(outputs):
                for j in range(widths[-1]):
                    g[b, o, j] = weights[w_at[hidden] + o * widths[-1] + j]
        next_order = np.zeros((n, outputs, low - pushed), dtype=dtype)
        tangent_grams = np.zeros((n, outputs * first, low - pushed), dtype=dtype)
        tangent = np.empty((n, outputs * first, widths[-1]), dtype=dtype)
        written = False  # whether a layer's Gram entries are on top yet
        for l in range(hidden - 1, -1, -1):
            w = widths[l]
            f = f_buf[f_at[l] : f_at[l + 1]].reshape((weight_count, n, w))
            if by_tangent:
                S = s_buf[s_at[l] : s_at[l + 1]].reshape((low - pushed, n, w))
                fused_add_row_dots(next_order, g, S)
                if l < hidden - 1:  # the output line's tangent is zero at the last hidden layer
                    fused_add_row_dots(tangent_grams, tangent, S)
            if l == 0:
                slot = slots[order]
                if fold:  # layer 1's block, u = g sigma^(ORDER)/ORDER!, times K.T after all parts
                    for b in range(n):
                        for o in range(outputs):
                            for j in range(w):
                                u[i0 + b, o, j] = 0.0 if slot < 0 else g[b, o, j] * f[slot, b, j]
                elif first_term[1] > first_term[0] and slot >= 0:  # its Gram entries here: only P_(ORDER-1) Z
                    left, Z = np.zeros((low, n, w), dtype=dtype), np.zeros((low, n, w), dtype=dtype)
                    for r in range(first_term[0], first_term[1]):
                        for b in range(n):
                            for j in range(w):
                                left[r, b, j] = first_scale * f[slot, b, j] * first_rows[r, j]
                    for c in range(first):
                        for b in range(n):
                            for j in range(w):
                                Z[c, b, j] = first_rows[c, j]
                    fused_equation_top(g, left, Z, pieces, gram_size, gram_starts, gram_entries, first_gram_weight, top, written,
                                       blas, ints, zero, one)
                    written = True
                break
            Z = z_buf[z_at[l] : z_at[l + 1]].reshape((low, n, w))
            if by_equation:
                left = k_buf[k_at[l] : k_at[l + 1]].reshape((low, n, w))
            else:  # each block's left factor, sum over its terms of scale sigma^(k)/k! P_(k-1)
                P = k_buf[k_at[l] : k_at[l + 1]].reshape((kept_rows, n, w))
                left = np.zeros((low, n, w), dtype=dtype)
                for i in range(len(terms)):
                    r0, r1, k = terms[i, 0], terms[i, 1], terms[i, 2]
                    if slots[k] < 0:
                        continue
                    factor, scale = f[slots[k]], term_scales[i]
                    for r in range(r0, r1):
                        p = Z[r] if k == 2 else P[power_rows[k - 1] + r - start[k - 1]]
                        for b in range(n):
                            for j in range(w):
                                left[r, b, j] += scale * factor[b, j] * p[b, j]
            fused_equation_top(g, left, Z, pieces, gram_size, gram_starts, gram_entries, gram_weight, top, written, blas, ints,
                               zero, one)
            written = True
            below = np.empty((n, outputs, widths[l - 1]), dtype=dtype)
            if by_tangent:  # the tangent one layer down (_tangent_back)
                t = np.empty((n, outputs * first, w), dtype=dtype)
                above = l < hidden - 1  # the tangent from the layer above (zero at the last hidden layer)
                fused_tangent_lines(g, tangent if above else t, f[slots[1]], f[slots[2]], Z, above, t)
                tangent = np.empty((n, outputs * first, widths[l - 1]), dtype=dtype)
                gemm(blas, t.reshape((n * outputs * first, w)), _matrix(weights, w_at, shapes, l), tangent.reshape((n * outputs * first, widths[l - 1])),
                     False, False, zero, ints, one)
            slope = f[slots[1]]
            for b in range(n):  # g <- (g sigma') W (_line_back)
                for o in range(outputs):
                    for j in range(w):
                        g[b, o, j] *= slope[b, j]
            gemm(blas, g.reshape((n * outputs, w)), _matrix(weights, w_at, shapes, l), below.reshape((n * outputs, widths[l - 1])), False, False,
                 zero, ints, one)
            g = below
        if not written:  # one hidden layer: no Gram entries from layer 2 on
            for b in range(n):
                for o in range(outputs):
                    for c in range(top.shape[2]):
                        top[b, o, c] = 0.0
        if by_tangent:
            for b in range(n):
                for o in range(outputs):
                    for c in range(low - pushed):
                        part[b, o, 1 + pushed + c] += next_order[b, o, c]
            fused_add_tangent_part(top, tangent_grams, tangent_positions)


@jit(parallel=True)
def series_parts(activation, weight_count, slots, blas, x, weights, biases, shapes, first_rows, first_orders, start, order,
                 equation, by_equation, s_starts, s_left, s_right, s_weight, q_starts, q_left, q_right, q_weight,
                 power_ks, power_starts, power_at, power_left, power_right, power_weight, terms, term_scales,
                 pieces, gram_size, gram_starts, gram_entries, gram_weight, first_term, first_scale, first_gram_weight,
                 by_tangent, tangent_positions, fold, low, pushed, chunk, out, u, cuts):
    """series_part for each part x[cuts[p] : cuts[p + 1]], the parts under one prange."""
    for p in numba.prange(len(cuts) - 1):
        a, b = cuts[p], cuts[p + 1]
        rows_u = u[a:b] if fold else u
        series_part(activation, weight_count, slots, blas, x[a:b], weights, biases, shapes, first_rows, first_orders, start,
                    order, equation, by_equation, s_starts, s_left, s_right, s_weight, q_starts, q_left, q_right,
                    q_weight, power_ks, power_starts, power_at, power_left, power_right, power_weight, terms,
                    term_scales, pieces, gram_size, gram_starts, gram_entries, gram_weight, first_term, first_scale,
                    first_gram_weight, by_tangent, tangent_positions, fold, low, pushed, chunk, out[a:b], rows_u)
