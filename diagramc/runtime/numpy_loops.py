"""The NumPy kernels' loops, compiled by numba: truncated products of series, the activation's
equation, Gram contractions, and calls into SciPy's BLAS. Each makes one pass over memory where
NumPy operations make several. Compiled at a first call, they stay in numba's disk cache
(__pycache__ beside this file, else numba's per-user folder), shared by every kernel.
"""
import math
import os
import sys

import llvmlite.ir  # numba's own dependency: the code of the calls into SciPy's BLAS (_call_blas)
import numba
import numba.core.cgutils
import numba.core.event
import numba.extending
import numpy as np

from . import threads

# The equation's loop takes its rows EQUATION_TILE numbers at a time: a tile of every row stays in cache.
EQUATION_TILE = 512


def jit(**options):
    """numba.njit, cached on disk where numba has a folder to write to; a cache that fails
    to load or save is passed over (the loop is compiled, the call goes on)."""
    options.setdefault("nogil", True)  # a call's parts run on threads (runtime.threads) at once

    def decorate(function):
        try:
            loop = numba.njit(cache=True, **options)(function)
        except RuntimeError:  # no folder to write to
            return numba.njit(**options)(function)
        store = getattr(loop, "_cache", None)
        if hasattr(store, "load_overload") and hasattr(store, "save_overload"):
            store.load_overload, store.save_overload = map(_passed_over, (store.load_overload, store.save_overload))
        return loop
    return decorate


_ANNOUNCED = []


def announce_first_compilation(stream=None):
    """Says once per process, on stderr, that numba is compiling the runtime's loops (none in
    its disk cache yet: a machine's first kernel calls take up to a minute; later processes
    load them)."""
    if _ANNOUNCED:
        return False
    _ANNOUNCED.append(True)
    import sys

    (stream or sys.stderr).write("diagramc: numba is compiling the NumPy kernels' loops for this machine, once "
                                 "(up to a minute); later processes load them from its disk cache\n")
    return True


class _CompilationListener(numba.core.event.Listener):
    """numba's compile event, which it raises only where its disk cache misses: announced for
    the runtime's loops (this module's and the other loop modules built on its jit)."""

    def on_start(self, event):
        dispatcher = event.data.get("dispatcher") if isinstance(event.data, dict) else None
        module = getattr(getattr(dispatcher, "py_func", None), "__module__", None) or ""
        if module.startswith(__name__.rpartition(".")[0] + "."):
            announce_first_compilation()

    def on_end(self, event):
        pass


numba.core.event.register("numba:compile", _CompilationListener())


def _passed_over(method):
    def guarded(*args):
        try:
            return method(*args)
        except Exception:  # an unreadable cache file, a full disk
            return None
    return guarded

@numba.extending.intrinsic
def _call_int(typingctx, address):
    """Calls the C function ``int f(void)`` at `address`, passed in at run time (see _call_blas)."""
    def codegen(context, builder, signature, args):
        routine = llvmlite.ir.FunctionType(llvmlite.ir.IntType(32), [])
        return builder.call(builder.inttoptr(args[0], routine.as_pointer()), [])
    return numba.types.int32(address), codegen


@jit(parallel=True)
def _launch(out, gettid):
    """A prange loop that starts numba's threading layer (numba names the layer only once started):
    out[i] = the id of the thread that ran iteration i (libc's gettid at that address), or i without one."""
    for i in numba.prange(out.shape[0]):
        out[i] = _call_int(gettid) if gettid else i


_GETTID = threads.libc_function("gettid")
# "workers": the OpenMP threads' ids; "off": the core they were last moved off
_PARALLEL = {"pid": None, "fast": False, "workers": (), "off": None}


def fast_parallel_loops() -> bool:
    """Whether numba's prange loops hand work to threads in microseconds in this process: its
    threading layer is OpenMP or TBB (workqueue takes over a hundred microseconds a loop), and
    the layer was started by this process, not by a parent it was forked from (GNU OpenMP's
    threads do not survive a fork, and numba stops a child that uses them)."""
    pid = os.getpid()
    if _PARALLEL["pid"] is None:
        try:
            import ctypes
            import threading

            ids = np.zeros(64 * numba.config.NUMBA_NUM_THREADS, dtype=np.int64)
            _launch(ids, ctypes.cast(_GETTID, ctypes.c_void_p).value or 0 if _GETTID is not None else 0)
            _PARALLEL["fast"] = numba.threading_layer() in ("omp", "tbb")
            if _GETTID is not None and threads._current_cpu() is not None and hasattr(os, "sched_setaffinity"):
                _PARALLEL["workers"] = tuple(sorted(set(ids.tolist()) - {threading.get_native_id()}))
        except Exception:  # no threading layer loads: the callers' serial paths serve
            _PARALLEL["fast"] = False
        _PARALLEL["pid"] = pid
    return _PARALLEL["fast"] and _PARALLEL["pid"] == pid


def numba_threads() -> int:
    """numba.get_num_threads() once the threading layer is up (fast_parallel_loops): its C
    function directly, without the two locks numba's wrapper takes on every call."""
    parallel = sys.modules.get("numba.np.ufunc.parallel") if _PARALLEL["pid"] == os.getpid() else None
    count = getattr(parallel, "_get_num_threads", None)  # numba's private name: its public function where it moved
    return count() if callable(count) else numba.get_num_threads()


def workers_off_this_core():
    """Keeps numba's prange threads off the core this thread runs on (Linux), before a prange
    call: a worker woken there shares that core, the caller spinning at the loop's end while
    the worker waits behind it, for milliseconds while another core idles (seen on a 2-core
    virtual machine: sub-millisecond calls taking 4 to 24 ms). Moves them only when this
    thread's core has changed since the last call: a core lookup otherwise."""
    workers = _PARALLEL["workers"]
    if not workers or _PARALLEL["pid"] != os.getpid():
        return
    cpu = threads._current_cpu()
    if cpu == _PARALLEL["off"] or cpu < 0:
        return
    try:
        allowed = os.sched_getaffinity(0) - {cpu}
        if allowed:
            for worker in workers:
                os.sched_setaffinity(worker, allowed)
    except OSError:  # a cpuset that refuses the change, a worker gone: they stay where the system puts them
        _PARALLEL["workers"] = ()
        return
    _PARALLEL["off"] = cpu


@jit()
def fused_product(A, Z, starts, left, right, weight, out):
    """out[t] = sum over t's rows q of weight[q] * A[left[q]] * Z[right[q]] (batch axes 1 or out's)."""
    for t in range(len(starts) - 1):
        out[t] = 0.0
        for q in range(starts[t], starts[t + 1]):
            a, z, w = A[left[q]], Z[right[q]], weight[q]
            for b in range(out.shape[1]):
                ab = b if a.shape[0] > 1 else 0
                zb = b if z.shape[0] > 1 else 0
                for j in range(out.shape[2]):
                    out[t, b, j] += w * a[ab, j] * z[zb, j]
    return out

@jit()
def fused_add_scaled(H, start, f, P):
    """H[start + c] += f * P[c] (P's batch axis 1 or H's)."""
    for c in range(P.shape[0]):
        for b in range(H.shape[1]):
            pb = b if P.shape[1] > 1 else 0
            for j in range(H.shape[2]):
                H[start + c, b, j] += f[b, j] * P[c, pb, j]

@jit()
def fused_scaled_rows(out, g, scale, f, P, accumulate):
    """out[r, b, o] (+)= scale f[b] g[b, o] P[r, b] over the width (g's and P's batch axes 1 or out's)."""
    t = np.empty(out.shape[3], dtype=out.dtype)
    for b in range(out.shape[1]):
        for o in range(out.shape[2]):
            gb = g[b if g.shape[0] > 1 else 0, o]
            for j in range(t.shape[0]):
                t[j] = scale * f[b, j] * gb[j]
            for r in range(out.shape[0]):
                row, p = out[r, b, o], P[r, b if P.shape[1] > 1 else 0]
                if accumulate:
                    for j in range(row.shape[0]):
                        row[j] += t[j] * p[j]
                else:
                    for j in range(row.shape[0]):
                        row[j] = t[j] * p[j]

@jit(fastmath={"reassoc", "contract"})  # a dot product vectorizes only if its sum may be reordered
def fused_add_row_dots(out, a, rows):
    """out[b, r, n] += sum_j a[b, r, j] rows[n, b, j] (a's batch axis 1 or out's), point by
    point, two rows of a by four of rows at a time (as fused_equation_top's Gram pieces;
    at the edge the last row is taken again, its repeats not stored). The two loops keep
    their own copy of that kernel: a shared numba helper returning the eight sums is slower."""
    R, n = out.shape[1], out.shape[2]
    for b in range(out.shape[0]):
        ab = a[b if a.shape[0] > 1 else 0]
        for r in range(0, R, 2):
            r2 = min(r + 1, R - 1)
            x, x2 = ab[r], ab[r2]
            for c in range(0, n, 4):
                y0, y1, y2, y3 = rows[c, b], rows[min(c + 1, n - 1), b], rows[min(c + 2, n - 1), b], rows[min(c + 3, n - 1), b]
                s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = 0.0
                for j in range(x.shape[0]):
                    s0 += x[j] * y0[j]
                    s1 += x[j] * y1[j]
                    s2 += x[j] * y2[j]
                    s3 += x[j] * y3[j]
                    t0 += x2[j] * y0[j]
                    t1 += x2[j] * y1[j]
                    t2 += x2[j] * y2[j]
                    t3 += x2[j] * y3[j]
                for k, (s, t) in enumerate(((s0, t0), (s1, t1), (s2, t2), (s3, t3))):
                    if c + k < n:
                        out[b, r, c + k] += s
                        if r2 > r:
                            out[b, r2, c + k] += t

@jit()
def fused_tangent_lines(g, tangent, slope, curvature, Z, below, t):
    """t[b, o c, j] = 2 curvature[b, j] g[b, o, j] Z[c, b, j] (+ slope[b, j] tangent[b, o c, j]
    where `below` the last hidden layer): the tangent's rows before the product by W, one pass
    (g's and Z's batch axes 1 or t's; curvature = sigma''/2, c over Z's first rows)."""
    first = t.shape[1] // g.shape[1]
    for b in range(t.shape[0]):
        gb, zb = b if g.shape[0] > 1 else 0, b if Z.shape[1] > 1 else 0
        for o in range(g.shape[1]):
            for c in range(first):
                row, z = t[b, o * first + c], Z[c, zb]
                for j in range(row.shape[0]):
                    row[j] = 2.0 * curvature[b, j] * g[gb, o, j] * z[j]
                if below:
                    u = tangent[b, o * first + c]
                    for j in range(row.shape[0]):
                        row[j] += slope[b, j] * u[j]

@jit()
def fused_add_tangent_part(top, grams, positions):
    """top[b, o, positions[e]] += grams[b, o first + c, a] for e = c n + a (positions -1: not
    wanted), with n = grams.shape[2]: the tangent's Gram entries onto the top order."""
    n = grams.shape[2]
    first = grams.shape[1] // top.shape[1]
    for b in range(top.shape[0]):
        for o in range(top.shape[1]):
            for c in range(first):
                for a in range(n):
                    p = positions[c * n + a]
                    if p >= 0:
                        top[b, o, p] += grams[b, o * first + c, a]

@jit()
def fused_sum_entries(top, gram, starts, entries, weight, accumulate):
    """top[t] (+)= sum over t's entries q of weight[q] gram[entries[q]], for one point and output."""
    for t in range(top.shape[0]):
        total = 0.0
        for q in range(starts[t], starts[t + 1]):
            total += weight[q] * gram[entries[q]]
        top[t] = top[t] + total if accumulate else total

def _blas(name):
    """The address of SciPy's BLAS routine `name` (its 13 arguments by reference) in this
    process, or None without SciPy."""
    try:
        from numba.extending import get_cython_function_address
        return get_cython_function_address("scipy.linalg.cython_blas", name)
    except Exception:
        return None

DGEMM, SGEMM, DSYRK, SSYRK = _blas("dgemm"), _blas("sgemm"), _blas("dsyrk"), _blas("ssyrk")

_BLAS_ARGUMENTS: dict = {}  # dtype -> gemm's routine and constants (its integer scratch is per call: calls run on threads)


def blas_arguments(dtype):
    """gemm's routine (None without SciPy) and its constants 0 and 1 (beta, alpha) for a
    float64 or float32 dtype, made once."""
    dtype = np.dtype(dtype)
    arguments = _BLAS_ARGUMENTS.get(dtype)
    if arguments is None:
        arguments = _BLAS_ARGUMENTS[dtype] = (DGEMM if dtype == np.float64 else SGEMM, np.zeros(1, dtype=dtype),
                                              np.ones(1, dtype=dtype))
    return arguments

@numba.extending.intrinsic
def _call_blas(typingctx, address, pointers):
    """Calls the BLAS routine at `address` with `pointers`, its arguments' addresses, all
    integers. An address passed in at run time, not a ctypes function read from a global,
    which numba would compile in as this process's address: so the loops that call BLAS can
    be kept in numba's disk cache like the others, and no call pays for a ctypes argument."""
    def codegen(context, builder, signature, args):
        pointer = llvmlite.ir.IntType(8).as_pointer()
        routine = llvmlite.ir.FunctionType(llvmlite.ir.VoidType(), [pointer] * len(pointers))
        arguments = [builder.inttoptr(a, pointer) for a in numba.core.cgutils.unpack_tuple(builder, args[1])]
        builder.call(builder.inttoptr(args[0], routine.as_pointer()), arguments)
        return context.get_dummy_value()
    return numba.types.void(address, pointers), codegen

@jit()
def _row_stride(M):
    """M's row stride in items (BLAS's leading dimension): a lone row's may be anything, so its length."""
    return M.strides[0] // M.itemsize if M.shape[0] > 1 else max(M.shape[1], 1)

@jit()
def gemm(blas, A, B, C, transpose_a, transpose_b, beta, ints, one):
    """C = op(A) @ op(B) + beta C, op(M) = M.T where its flag says so, by BLAS's gemm (SciPy's,
    called directly: numba's np.dot would take seconds more to compile): float64 or float32
    matrices with rows of unit stride, seen by Fortran as their transposes, C.T = op(B).T @
    op(A).T. The Gram and layer products use A @ B and A.T @ B, the layouts OpenBLAS runs
    fastest (A @ B.T is slower). beta: [0] or [1] and one: [1], in the
    matrices' dtype (arrays, not flags: one compiled version serves every call); ints: scratch."""
    ints[0], ints[1], ints[2] = C.shape[1], C.shape[0], A.shape[0] if transpose_a else A.shape[1]
    ints[3], ints[4], ints[5] = _row_stride(B), _row_stride(A), _row_stride(C)
    ints[6], ints[7] = 84 if transpose_b else 78, 84 if transpose_a else 78  # 'T' or 'N'
    _call_blas(blas, (ints[6:].ctypes.data, ints[7:].ctypes.data, ints[0:].ctypes.data, ints[1:].ctypes.data,
                      ints[2:].ctypes.data, one.ctypes.data, B.ctypes.data, ints[3:].ctypes.data, A.ctypes.data,
                      ints[4:].ctypes.data, beta.ctypes.data, C.ctypes.data, ints[5:].ctypes.data))

FEW_ROWS = 4  # rows of a product up to which a numba loop beats a BLAS call's fixed cost

@jit(fastmath={"reassoc", "contract"})  # a dot product vectorizes only if its sum may be reordered
def add_few_rows_times_transposed(h, W, z):
    """z += h @ W.T for a few rows of h, as dot products of rows."""
    for b in range(h.shape[0]):
        for j in range(W.shape[0]):
            total = 0.0
            for k in range(W.shape[1]):
                total += h[b, k] * W[j, k]
            z[b, j] += total

@jit()
def few_rows_times(t, W, g):
    """g = t @ W for a few rows of t: W's rows added, scaled (no sum to reorder)."""
    for r in range(t.shape[0]):
        for i in range(W.shape[1]):
            g[r, i] = 0.0
        for j in range(W.shape[0]):
            s = t[r, j]
            for i in range(W.shape[1]):
                g[r, i] += s * W[j, i]

def activation_pointer(loop, dtype):
    """The module's activation loop (zs, value, weights) as a numba cfunc for one dtype: a
    function pointer fused_vertices calls, so that fused_vertices is compiled once per
    machine for every activation, not once per module. Cached on disk beside the module."""
    from numba.core import sigutils
    from numba.core.ccallback import CFunc  # what numba.cfunc makes, built here to guard its cache as jit's

    item = numba.from_dtype(np.dtype(dtype))
    signature = sigutils.normalize_signature(numba.types.void(item[:, ::1], item[:, ::1], item[:, :, ::1]))
    pointer = CFunc(loop, signature, locals={}, options={"error_model": "numpy"})
    try:
        pointer.enable_caching()
    except RuntimeError:  # no folder to write the cache to
        pass
    else:
        store = pointer._cache
        store.load_overload, store.save_overload = map(_passed_over, (store.load_overload, store.save_overload))
    pointer.compile()
    return pointer

@numba.extending.intrinsic
def _call_activation(typingctx, address, zs, value, weights):
    """Calls the activation cfunc at `address` (activation_pointer's) with its three arrays, each
    passed as its struct by value, the way numba's cfunc wrapper takes them. An integer address,
    not the cfunc object: typing a function object costs a call more than the work at one point."""
    def codegen(context, builder, signature, args):
        argtypes = [context.get_value_type(t) for t in signature.args[1:]]
        routine = llvmlite.ir.FunctionType(context.get_value_type(numba.types.void), argtypes)
        builder.call(builder.inttoptr(args[0], routine.as_pointer()), args[1:])
        return context.get_dummy_value()
    return numba.types.void(address, zs, value, weights), codegen

@jit()
def fused_vertices(activation, weight_count, slope_slot, curvature_slot, blas, x, weights, biases, out, slopes, lines):
    """The point-independent part of order 2 for a batch, without NumPy's per-operation
    cost (most of a one-point call): layer by layer z = h W^T + b (one BLAS product; up to
    FEW_ROWS points, a numba loop) and sigma'(z) by `activation` (activation_pointer's address: it
    writes the weight_count non-zero vertex weights, sigma' in slope_slot, sigma''/2 in
    curvature_slot) into slopes (hidden layers, batch, widest), the output value into
    out[:, :, 0] (out whole, as fused_order_two takes it); then the output lines g = df/dh
    back from the top, each a BLAS product (or loop), as g sigma''/2 into lines (hidden
    layers, batch, OUTPUTS, widest). A layer's entries are the first `width` of the last
    axis. (Arrays, not lists of them: numba compiles lists of arrays several times slower.)"""
    batch, outputs, value = x.shape[0], out.shape[1], out[:, :, 0]
    ints, one, zero = np.empty(8, dtype=np.int32), np.ones(1, dtype=x.dtype), np.zeros(1, dtype=x.dtype)
    curvatures = np.empty_like(slopes)
    h = x
    for l in range(len(weights)):
        width = weights[l].shape[0]
        z = np.empty((batch, width), dtype=x.dtype)
        for b in range(batch):
            for j in range(width):
                z[b, j] = biases[l][j]
        if batch <= FEW_ROWS:
            add_few_rows_times_transposed(h, weights[l], z)
        else:
            gemm(blas, h, weights[l], z, False, True, one, ints, one)  # z = h W^T + b
        if l == len(weights) - 1:
            for b in range(batch):
                for o in range(outputs):
                    value[b, o] = z[b, o]
            break
        h, factors = np.empty_like(z), np.empty((weight_count,) + z.shape, dtype=z.dtype)
        _call_activation(activation, z, h, factors)
        for b in range(batch):
            for j in range(width):
                slopes[l, b, j] = factors[slope_slot, b, j]
                curvatures[l, b, j] = factors[curvature_slot, b, j]
    g = np.empty((batch * outputs, weights[-1].shape[1]), dtype=x.dtype)  # df/dh at the last hidden layer
    for r in range(g.shape[0]):
        for j in range(g.shape[1]):
            g[r, j] = weights[-1][r % outputs, j]
    for l in range(len(weights) - 2, -1, -1):
        t = np.empty_like(g)
        for r in range(g.shape[0]):
            b, o = r // outputs, r % outputs
            for j in range(g.shape[1]):
                lines[l, b, o, j] = g[r, j] * curvatures[l, b, j]
                t[r, j] = g[r, j] * slopes[l, b, j]
        if l > 0:  # g <- (g sigma') W, one layer down
            g = np.empty((batch * outputs, weights[l].shape[1]), dtype=x.dtype)
            if g.shape[0] <= FEW_ROWS:
                few_rows_times(t, weights[l], g)
            else:
                gemm(blas, t, weights[l], g, False, False, zero, ints, one)

@jit()
def _syrk(syrk, A, C, alpha, beta, ints):
    """C = alpha A^T A + beta C on and above C's diagonal (C order; below it C is left as it
    was), by BLAS's syrk: A (k x n, k > 0) with rows of unit stride, seen by Fortran as A^T,
    so its lower triangle is C's upper. Half the multiply-adds of A^T @ A. alpha, beta: arrays."""
    ints[0], ints[1], ints[2], ints[3] = C.shape[0], A.shape[0], _row_stride(A), _row_stride(C)
    ints[6], ints[7] = 76, 78  # 'L', 'N'
    _call_blas(syrk, (ints[6:].ctypes.data, ints[7:].ctypes.data, ints[0:].ctypes.data, ints[1:].ctypes.data,
                      alpha.ctypes.data, A.ctypes.data, ints[2:].ctypes.data, beta.ctypes.data, C.ctypes.data,
                      ints[3:].ctypes.data))

@jit()
def fused_order_two(blas, syrk, J, first, KT, slopes, lines, weights, out, entries, weight, scale):
    """Order 2 for a batch, point by point in cache, after fused_vertices (called
    apart: one numba function calling both compiles much longer, as LLVM optimizes the callees
    again within it). Layer by layer the first-order
    series, kept transposed as Z (width x columns), goes on as Z <- W (sigma' Z), one BLAS
    product (into an output layer of at most FEW_ROWS rows, a numba loop of W's rows times
    sigma').
    The point's Gram matrix, summed over the layers from 2 on (from 1 unless folded: not
    first), is G = sum_j c_j Z_j^T Z_j with c = g sigma''/2 (row j of Z: unit j's gradient):
    each row goes, times sqrt(|c_j|), onto the stack of its sign (a row with c_j = 0 is
    dropped: all of them for ReLU), and G = P^T P - M^T M is two symmetric rank-k updates
    (_syrk) over all layers at once, half the multiply-adds of a Gram matrix; top-order
    coefficient t is then weight[t] G.flat[entries[t]] (plus layer 1's, folded), times
    scale[t] (1, or alpha! for the derivatives). Where layer 1 is folded, its part is
    first written for the whole batch as one BLAS product, (g sigma''/2 at layer 1) K^T,
    KT: K^T with the top order's columns in the series' order (else empty). J: layer 1's Z
    (width x columns); out: (batch, OUTPUTS, 1 + len(_SERIES)), whole (its slices' layouts
    would vary with the batch, each a compilation), written in the series' order: the
    value, the first orders and the top order."""
    columns, outputs, l0 = J.shape[1], out.shape[1], 0 if first else 1  # l0: the first layer with a Gram
    low, top, widest = out[:, :, 1 : 1 + columns], out[:, :, 1 + columns :], slopes.shape[2]
    ints, one, zero = np.empty(8, dtype=np.int32), np.ones(1, dtype=J.dtype), np.zeros(1, dtype=J.dtype)
    if not first:
        for o in range(outputs):
            gemm(blas, lines[0, :, o, : weights[0].shape[0]], KT, top[:, o], False, False, zero, ints, one)
    Z = np.empty(widest * columns, dtype=J.dtype)  # Z and H: reshaped to each layer's width
    H = np.empty_like(Z)
    stacked = 0  # rows of all layers with a Gram
    for l in range(l0, len(slopes)):
        stacked += weights[l].shape[0]
    plus, minus = np.empty((outputs, stacked, columns), dtype=J.dtype), np.empty((outputs, stacked, columns), dtype=J.dtype)
    n_plus, n_minus = np.empty(outputs, dtype=np.int64), np.empty(outputs, dtype=np.int64)
    gram, minus_one = np.empty((columns, columns), dtype=J.dtype), -one
    for b in range(top.shape[0]):
        Zl = J
        n_plus[:], n_minus[:] = 0, 0
        for l in range(len(slopes)):  # (explicit loops: array assignments compile slowly)
            slope, width = slopes[l, b], weights[l].shape[0]
            for o in range(outputs if l >= l0 else 0):
                line = lines[l, b, o]
                for j in range(width):
                    c = line[j]
                    if c < 0.0:
                        s, row = math.sqrt(-c), minus[o, n_minus[o]]
                        n_minus[o] += 1
                    elif c == 0.0:
                        continue
                    else:  # positive, or NaN: kept, so that it shows
                        s, row = math.sqrt(c), plus[o, n_plus[o]]
                        n_plus[o] += 1
                    for k in range(columns):
                        row[k] = s * Zl[j, k]
            W = weights[l + 1]
            if l == len(slopes) - 1 and W.shape[0] <= FEW_ROWS:  # into the output layer: W's rows times sigma'
                below, Zl = Zl, H[: W.shape[0] * columns].reshape((-1, columns))  # (below: J or Z; H is free)
                for r in range(W.shape[0]):
                    row = Zl[r]
                    for k in range(columns):
                        row[k] = 0.0
                    for j in range(width):
                        s = W[r, j] * slope[j]
                        for k in range(columns):
                            row[k] += s * below[j, k]
            else:
                Hl = H[: width * columns].reshape((width, columns))
                for j in range(width):
                    for k in range(columns):
                        Hl[j, k] = slope[j] * Zl[j, k]
                Zl = Z[: W.shape[0] * columns].reshape((-1, columns))
                gemm(blas, W, Hl, Zl, False, False, zero, ints, one)
        for o in range(outputs):
            for k in range(columns):
                low[b, o, k] = Zl[o, k]
            if n_plus[o] + n_minus[o] == 0:  # no layer curves (or none is summed, layer 1 folded)
                gram[:] = 0.0
            if n_plus[o]:
                _syrk(syrk, plus[o, : n_plus[o]], gram, one, zero, ints)
            if n_minus[o]:
                _syrk(syrk, minus[o, : n_minus[o]], gram, minus_one, one if n_plus[o] else zero, ints)
            flat, coefficients = gram.ravel(), top[b, o]
            for t in range(coefficients.shape[0]):
                v = weight[t] * flat[entries[t]]
                coefficients[t] = scale[t] * (v if first else coefficients[t] + v)

@jit()
def fused_equation_series(Z, slope, q0, s_starts, s_left, s_right, s_weight,
                           q_starts, q_left, q_right, q_weight, S, Q):
    """S and Q = p(S) by the activation's equation, target after target in column order (so
    by degree): S[t] = q0 Z[t] + sum w Z[l] Q[r], then Q[t] = slope S[t] + sum w S[l] S[r].
    Rows are (batch x width) numbers, taken EQUATION_TILE at a time: a tile of every row
    stays in cache while its targets are made."""
    for j0 in range(0, S.shape[1], EQUATION_TILE):
        j1 = min(S.shape[1], j0 + EQUATION_TILE)
        q, p = q0[j0:j1], slope[j0:j1]
        for t in range(S.shape[0]):
            s, z = S[t, j0:j1], Z[t, j0:j1]
            for j in range(j1 - j0):
                s[j] = q[j] * z[j]
            fused_add_pairs(s, Z, Q, s_starts[t], s_starts[t + 1], s_left, s_right, s_weight, j0)
            r = Q[t, j0:j1]
            for j in range(j1 - j0):
                r[j] = p[j] * s[j]
            fused_add_pairs(r, S, S, q_starts[t], q_starts[t + 1], q_left, q_right, q_weight, j0)

@jit()
def fused_add_pairs(out, A, B, first, end, left, right, weight, j0):
    """out += sum over rows i in [first, end) of weight[i] A[left[i]] B[right[i]], columns
    from j0 on, two rows a pass (out loaded and stored half as often)."""
    n = len(out)
    for i in range(first, end - 1, 2):
        a, c, w = A[left[i], j0 : j0 + n], B[right[i], j0 : j0 + n], weight[i]
        a2, c2, w2 = A[left[i + 1], j0 : j0 + n], B[right[i + 1], j0 : j0 + n], weight[i + 1]
        for j in range(n):
            out[j] += w * a[j] * c[j] + w2 * a2[j] * c2[j]
    if (end - first) % 2:
        a, c, w = A[left[end - 1], j0 : j0 + n], B[right[end - 1], j0 : j0 + n], weight[end - 1]
        for j in range(n):
            out[j] += w * a[j] * c[j]

GRAM_BLAS_WORK = 2**14  # multiply-adds of a Gram piece from which BLAS makes it (a call costs about a microsecond)

@jit(fastmath={"reassoc", "contract"})  # a dot product vectorizes only if its sum may be reordered
def fused_equation_top(g, Q, Z, pieces, size, starts, entries, weight, top, accumulate, blas, ints, zero, one):
    """top[b, o, t] (+)= sum over t's entries of weight G[entry]: the Gram entries
    G[r, c] = sum_j g[b, o, j] Q[r, b, j] Z[c, b, j] of every top-order block's pieces, made
    point by point (where a point's rows stay in cache): a piece of GRAM_BLAS_WORK
    multiply-adds or more by BLAS's gemm (blas: its address, 0 for none; ints, zero, one:
    gemm's scratch and constants), a smaller one two rows by four columns at a time (each loaded
    row serves four or two dot products; at a piece's edge the last row or column is taken
    again, and its repeats are not stored)."""
    width = Q.shape[2]
    gq = np.empty((Q.shape[0], width), dtype=Q.dtype)
    gram = np.empty(size, dtype=top.dtype)
    for b in range(top.shape[0]):
        for o in range(top.shape[1]):
            gb = g[b if g.shape[0] > 1 else 0, o]
            for r in range(Q.shape[0]):
                for j in range(width):
                    gq[r, j] = gb[j] * Q[r, b, j]
            for p in range(pieces.shape[0]):
                r0, r1, c0, c1, offset = pieces[p, 0], pieces[p, 1], pieces[p, 2], pieces[p, 3], pieces[p, 4]
                if blas != 0 and (r1 - r0) * (c1 - c0) * width >= GRAM_BLAS_WORK:
                    piece = gram[offset : offset + (r1 - r0) * (c1 - c0)].reshape((r1 - r0, c1 - c0))
                    gemm(blas, gq[r0:r1], Z[c0:c1, b], piece, False, True, zero, ints, one)
                    continue
                for r in range(r0, r1, 2):
                    r2 = min(r + 1, r1 - 1)
                    a, a2 = gq[r], gq[r2]
                    e, e2 = offset + (r - r0) * (c1 - c0) - c0, offset + (r2 - r0) * (c1 - c0) - c0
                    for c in range(c0, c1, 4):
                        z0, z1 = Z[c, b], Z[min(c + 1, c1 - 1), b]
                        z2, z3 = Z[min(c + 2, c1 - 1), b], Z[min(c + 3, c1 - 1), b]
                        s0 = s1 = s2 = s3 = t0 = t1 = t2 = t3 = 0.0
                        for j in range(width):
                            s0 += a[j] * z0[j]
                            s1 += a[j] * z1[j]
                            s2 += a[j] * z2[j]
                            s3 += a[j] * z3[j]
                            t0 += a2[j] * z0[j]
                            t1 += a2[j] * z1[j]
                            t2 += a2[j] * z2[j]
                            t3 += a2[j] * z3[j]
                        gram[e + c], gram[e2 + c] = s0, t0
                        if c + 1 < c1:
                            gram[e + c + 1], gram[e2 + c + 1] = s1, t1
                        if c + 2 < c1:
                            gram[e + c + 2], gram[e2 + c + 2] = s2, t2
                        if c + 3 < c1:
                            gram[e + c + 3], gram[e2 + c + 3] = s3, t3
            fused_sum_entries(top[b, o], gram, starts, entries, weight, accumulate)
