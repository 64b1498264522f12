"""The fused operator kernels on NumPy arrays: the forward Laplacian's rows (operator_loops) and
the biharmonic's (biharmonic_loops) through every layer, each layer one numba pass and one BLAS
product, forward and the backward written out. operator_torch wraps them as one autograd node
on CPU tensors, operator_numpy calls the forward; both where numba and SciPy's BLAS are there.

A call whose layer products are small keeps BLAS on one thread and splits its batch instead:
one slice per thread (runtime.threads), each slice's layers numba calls that let go of the GIL.
A forward returns (out, stored, Y): per hidden layer (X, value, F), its pre-activation rows, its
sigma and vertex weights sigma^(k)/k!, and Y, what the output layer's product took.
"""
import numpy as np

from . import operator_tables, threads

# Multiply-adds of a layer's product below which a call keeps BLAS on one thread: BLAS's threads
# cost tens of milliseconds per small product when the cores are shared, and give little
SMALL_PRODUCT = 2**27
# A call with small products splits its batch from POINTS_PER_THREAD points and SPLIT_WORK
# multiply-adds a thread: handing work to another thread and back costs tens of microseconds
POINTS_PER_THREAD = 32
SPLIT_WORK = 2**22
# Elements of a layer's output rows made at a time where the products are small (forward, and
# backward, whose gradient then goes into dX's memory): a call holds little more than it stores
CHUNK_ELEMENTS = 2**14

UNCOMPILED: set = set()  # modules' activation loops that numba could not compile
_LOOPS = []  # [operator_loops] once imported, [None] where it cannot be


def loops():
    """operator_loops, or None without numba or SciPy's BLAS."""
    if not _LOOPS:
        try:
            from . import numpy_loops, operator_loops
        except Exception:  # numba missing or broken: the backends' operations serve
            operator_loops = None
        else:
            if numpy_loops.DGEMM is None or numpy_loops.SGEMM is None:
                operator_loops = None
        _LOOPS.append(operator_loops)
    return _LOOPS[0]


def is_numba_error(error) -> bool:
    try:
        from numba.core.errors import NumbaError
    except ImportError:
        return False
    return isinstance(error, NumbaError)


def small(rows, params) -> bool:
    """Whether every layer's product (rows per point times the batch, rows) is under SMALL_PRODUCT."""
    return rows * max(W.shape[0] * W.shape[1] for W in params[0::2]) < SMALL_PRODUCT


def parts(batch, rows, params, count):
    """The batch's slices, one per thread of count, or None for one call on the whole batch."""
    work = batch * rows * sum(W.shape[0] * W.shape[1] for W in params[0::2])
    count = min(count, batch // POINTS_PER_THREAD, work // SPLIT_WORK)
    if count <= 1:
        return None
    bounds = [batch * i // count for i in range(count + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


def split(batch, rows, params, count, blas_count):
    """(slices, BLAS threads) of a call: where every product is small the batch's slices over up
    to count threads (parts) and BLAS on one; the whole batch and BLAS on blas_count otherwise."""
    if small(batch * rows, params):
        return parts(batch, rows, params, count), 1
    return None, blas_count


def unless_uncompiled(fused_activation, call):
    """call() where the loops serve the module's activation loop; None where numba is missing, or
    cannot compile that loop (a custom activation: remembered, the module's other path serves)."""
    if fused_activation is None or fused_activation in UNCOMPILED or loops() is None:
        return None
    try:
        return call()
    except Exception as error:
        if not is_numba_error(error):
            raise
        UNCOMPILED.add(fused_activation)
        return None


def forward_in_parts(forward, x, params, fused_activation, tables, slices, blas_count):
    """(out, [(slice, stored, Y), ...]): forward(x, params, fused_activation, tables) on the whole
    batch with BLAS on blas_count threads, or on each slice on threads of its own."""
    if slices is None:
        with threads.blas_threads(blas_count):
            out, stored, Y = forward(x, params, fused_activation, tables)
        return out, [(slice(None), stored, Y)]
    results = threads.run_parts(lambda rows: forward(x[rows], params, fused_activation, tables), slices, len(slices))
    return np.concatenate([r[0] for r in results]), [(rows, stored, Y) for rows, (_, stored, Y) in zip(slices, results)]


def backward_in_parts(backward, g, x, params, pieces, tables, input_grad, blas_count):
    """(dx or None, grads): backward(g, x, params, stored, Y, tables, input_grad) per piece the
    forward made, the pieces' parameter gradients summed. It overwrites what the forward stored."""
    def job(piece):
        rows, stored, Y = piece
        return backward(g[rows], x[rows], params, stored, Y, tables, input_grad)

    if len(pieces) == 1:
        with threads.blas_threads(blas_count):
            return job(pieces[0])
    results = threads.run_parts(job, pieces, len(pieces))
    dx = np.concatenate([r[0] for r in results]) if input_grad else None
    return dx, [sum(r[1][i] for r in results) for i in range(len(params))]


def chunk_points(batch, rows, width, weights) -> int:
    """Points whose output rows (rows x width each) a layer makes at a time: CHUNK_ELEMENTS where
    the products are small, the whole batch where they are large enough for BLAS's threads."""
    if batch * rows * max(W.shape[0] * W.shape[1] for W in weights) >= SMALL_PRODUCT:
        return batch
    return max(1, min(batch, CHUNK_ELEMENTS // (rows * width)))


def vertices(a, fused_activation, weights=3):
    """sigma(a) and sigma^(k)/k!, k = 1..weights, by the module's numba loop (it writes every weight, zero where one vanishes)."""
    block = np.empty((1 + weights,) + a.shape, dtype=a.dtype)
    fused_activation(a, block[0], block[1:])
    return block[0], block[1:]


def _blas(dtype):
    from .numpy_loops import blas_arguments

    return blas_arguments(dtype)[0]


def laplacian_rows(tables) -> int:
    """Rows per point of the forward Laplacian: the value, the first-order rows, the collapsed row."""
    return tables[1].shape[0] + 1


def laplacian_forward(x, params, fused_activation, tables):
    """(out, stored, Y) of the forward Laplacian, tables = (q, input rows, A): the uniform quadratic
    form's coefficient (0: none), layer 1's rows other than the value, the output's row coefficients."""
    q, rows_in, A = tables
    ops = loops()
    blas = _blas(x.dtype)
    W, b = [np.ascontiguousarray(w) for w in params[0::2]], params[1::2]  # BLAS takes rows of unit stride
    batch, rows, dtype = x.shape[0], rows_in.shape[0] + 1, x.dtype
    X, a = np.zeros((1, rows, W[0].shape[0]), dtype=dtype), np.empty((batch, W[0].shape[0]), dtype=dtype)
    ops.first_layer(blas, np.ascontiguousarray(x), W[0], b[0], rows_in, X, a)
    stored = []
    for l in range(len(W) - 1):
        value, F = vertices(a, fused_activation)
        S = np.empty((X.shape[0], a.shape[1]), dtype=dtype)  # sum_i Z_i^2: made again in the backward
        stored.append((X, value, F))
        if l == len(W) - 2:  # the rows combined by the operator's coefficients, then one product
            Y, out = np.empty_like(value), np.empty((batch, W[-1].shape[0]), dtype=dtype)
            ops.last_layer(blas, X, value, F, q, A, W[-1], b[-1], S, Y, out)
        else:
            n = W[l + 1].shape[0]
            H = np.empty((chunk_points(batch, rows, a.shape[1], W), rows, a.shape[1]), dtype=dtype)
            X, a = np.empty((batch, rows, n), dtype=dtype), np.empty((batch, n), dtype=dtype)
            ops.next_layer(blas, stored[-1][0], value, F, q, W[l + 1], b[l + 1], H, X, a)
            del H
    return out, stored, Y


def laplacian_backward(g_out, x, params, stored, Y, tables, input_grad):
    """(dx or None, the parameters' gradients) of laplacian_forward's out against g_out."""
    q, rows_in, A = tables
    ops = loops()
    blas = _blas(x.dtype)
    W = [np.ascontiguousarray(w) for w in params[0::2]]
    grads = [None] * len(params)
    grads[-2], grads[-1], G = ops.back_top(np.ascontiguousarray(g_out), Y, W[-1], A[0])
    return _backward_layers(
        stored, W, x, input_grad, grads, True, blas, rows_in,
        lambda dH, X, F, dX, sums, value_only: ops.rows_back(dH, A, G, X, F, q, dX, sums, value_only),
        lambda below, Wl, dX, H, dH: ops.below_gradients(blas, *below, q, Wl, dX, H, dH))


def _backward_layers(stored, W, x, input_grad, grads, in_place, blas, rows_in, rows_back, below_gradients):
    """(dx or None, grads): the hidden layers backward, last to first, by the kernel's numba calls
    bound to its constants: rows_back(dH, X, F, dX, sums, value_only) and below_gradients(stored
    below, W_l, dX, H, dH_prev) -> W_l's gradient, the rows below remade in H, dX W_l into
    dH_prev. The last hidden layer's dH is never made (its rows_back takes it from the output's
    gradient); in_place: that layer's gradient may overwrite its stored rows. Each layer's stored arrays go as soon as its rows are
    done with, so the backward holds only what is left to do."""
    from .operator_loops import first_gradients

    batch, dtype = x.shape[0], x.dtype
    dH = np.empty((0, 1, 1), dtype=dtype)
    for l in range(len(W) - 2, -1, -1):
        X, _, F = stored[l]
        stored[l] = None
        if dH.shape[0]:
            dX = dH
        else:
            dX = X if in_place and l else np.empty((batch,) + X.shape[1:], dtype=dtype)
        sums = np.empty((X.shape[1], F.shape[2]), dtype=dtype)
        rows_back(dH, X, F, dX, sums, l == 0)
        del X, F
        if l:
            rows, n_in = dX.shape[1], W[l].shape[1]
            # the rows below, CHUNK_ELEMENTS at a time where the products are small, and dH_prev in dX's
            # memory where it fits (dX is done with once they are made); in one buffer otherwise
            points = chunk_points(batch, rows, n_in, W)
            H = np.empty((points, rows, n_in), dtype=dtype)
            if points >= batch:
                dH = H
            elif n_in <= dX.shape[2]:
                dH = dX.reshape(-1)[: batch * rows * n_in].reshape((batch, rows, n_in))
            else:
                dH = np.empty((batch, rows, n_in), dtype=dtype)
            grads[2 * l], grads[2 * l + 1] = below_gradients(stored[l - 1], W[l], dX, H, dH), sums[0]
            del H
    dx = np.empty((batch if input_grad else 0, x.shape[1]), dtype=dtype)
    grads[0], grads[1] = first_gradients(blas, dX, sums, np.ascontiguousarray(x), rows_in, W[0], dx)
    return (dx if input_grad else None), grads


def biharmonic_tables(inputs, dims, scale, dtype):
    """The fused biharmonic's constants: (m, pi, pk, pos, input rows, scale) for the inputs dims."""
    from . import biharmonic_loops

    m = len(dims)
    rows_in = np.zeros((operator_tables.biharmonic_rows(m) - 1, inputs), dtype=dtype)
    rows_in[np.arange(m), list(dims)] = 1.0
    return (m, *biharmonic_loops.pair_tables(m), rows_in, float(scale))


def biharmonic_rows(tables) -> int:
    return operator_tables.biharmonic_rows(tables[0])


def biharmonic_forward(x, params, fused_activation, tables):
    """(out, stored, Y = c T of the last hidden layer): F holds sigma^(k)/k! for k = 1..5."""
    from . import biharmonic_loops as ops
    from .operator_loops import first_layer

    m, pi, pk, pos, rows_in, scale = tables
    blas = _blas(x.dtype)
    W, b = [np.ascontiguousarray(w) for w in params[0::2]], params[1::2]
    batch, rows, dtype = x.shape[0], operator_tables.biharmonic_rows(m), x.dtype
    X, a = np.zeros((1, rows, W[0].shape[0]), dtype=dtype), np.empty((batch, W[0].shape[0]), dtype=dtype)
    first_layer(blas, np.ascontiguousarray(x), W[0], b[0], rows_in, X, a)
    stored = []
    for l in range(len(W) - 1):
        value, F = vertices(a, fused_activation, 5)
        stored.append((X, value, F))
        if l == len(W) - 2:
            Y, out = np.empty_like(value), np.empty((batch, W[-1].shape[0]), dtype=dtype)
            ops.last_layer(blas, X, F, m, pi, pk, pos, scale, W[-1], Y, out)
        else:
            n = W[l + 1].shape[0]
            H = np.empty((chunk_points(batch, rows, a.shape[1], W), rows, a.shape[1]), dtype=dtype)
            X, a = np.empty((batch, rows, n), dtype=dtype), np.empty((batch, n), dtype=dtype)
            ops.next_layer(blas, stored[-1][0], value, F, m, pi, pk, pos, W[l + 1], b[l + 1], H, X, a)
            del H
    return out, stored, Y


def biharmonic_backward(g_out, x, params, stored, Y, tables, input_grad):
    """(dx or None, the parameters' gradients) of biharmonic_forward's out against g_out."""
    from . import biharmonic_loops as ops
    from .operator_loops import back_top

    m, pi, pk, pos, rows_in, scale = tables
    blas = _blas(x.dtype)
    W = [np.ascontiguousarray(w) for w in params[0::2]]
    grads = [None] * len(params)
    grads[-2], grads[-1], G = back_top(np.ascontiguousarray(g_out), Y, W[-1], 0.0)
    return _backward_layers(
        stored, W, x, input_grad, grads, False, blas, rows_in,  # rows_back reads rows it has written: not in place
        lambda dH, X, F, dX, sums, value_only: ops.rows_back(dH, G, scale, X, F, m, pi, pk, pos, dX, sums,
                                                             value_only),
        lambda below, Wl, dX, H, dH: ops.below_gradients(blas, *below, m, pi, pk, pos, Wl, dX, H, dH))
