"""PyTorch operations of the differential-operator kernels (see operator_tables for the rows).

A layer's state is three tensors: the value z (batch, width), the series' Taylor
coefficients Z (batch, rows, width) and the collapsed rows L (batch, groups, width); Z and L
of layer 1 are the same for every point and keep a batch dimension of 1 until sigma'(z)
multiplies them. Separate tensors, not one, so that autograd never copies a slice around.
Every operation is differentiable and keeps x's device and dtype; no loop over the batch.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from . import operator_series, threads
from .arguments import numpy_views, torch_arguments
from .operator_tables import Tables


def tables_on(tables: Tables, outputs: int, like: torch.Tensor, cache: dict) -> dict:
    """The tables as tensors on like's device and dtype, made once per (device, dtype)."""
    key = (like.device, like.dtype)
    if key not in cache:
        with torch.inference_mode(False):  # kept for later calls, which may need autograd
            cache[key] = _tensors(tables, outputs, like.device, like.dtype)
    return cache[key]


def _tensors(tables: Tables, outputs: int, device, dtype) -> dict:
    def real(a):
        return torch.as_tensor(a, dtype=dtype, device=device)

    def index(a):
        return torch.as_tensor(a, dtype=torch.long, device=device)

    Q = tables.quadratic
    return {
        "series_rows": len(tables.series),
        "order": tables.order,
        "start": tables.start,
        "input_rows": real(tables.input_rows),
        "powers": {k: [(index(t), index(a), index(b)) for t, a, b in bs] for k, bs in tables.powers.items()},
        "top_pairs": {k: (index(a), index(b), real(w)) for k, (a, b, w) in tables.top_pairs.items()},
        "second": {k: (index(a), index(b), real(w)) for k, (a, b, w) in tables.second.items()},
        "second_rows": tables.second_rows,
        "firsts": len(tables.firsts),
        "quadratic_kind": tables.quadratic_kind,
        "uniform_q": float(Q[0, 0, 0]) if tables.quadratic_kind == "uniform" else 0.0,
        "quadratic": real(Q),
        "quadratic_diagonal": real(Q.diagonal(axis1=1, axis2=2).copy()),
        "output": real(tables.output_matrix(outputs)),
    }


def affine(state, W):
    """A Linear layer's matrix on the value, the series and the collapsed rows (each one matrix
    product over all its rows); the activation that follows adds the bias to the value."""
    z, Z, L = state
    return z @ W.T, Z @ W.T, L @ W.T


def _quadratic(Z, t):
    """T_2 per collapsed row: sum_ij Q[g, i, j] Z_i Z_j, (batch, groups, width)."""
    kind = t["quadratic_kind"]
    if kind == "uniform":  # the Laplacian: c sum_i Z_i^2, no Hessian
        return t["quadratic_diagonal"][None, :, 0, None] * Z.square().sum(1)[:, None]
    if kind == "diagonal":
        return torch.matmul(t["quadratic_diagonal"], Z.square())
    Q = t["quadratic"]
    return torch.stack([(torch.matmul(Q[g], Z) * Z).sum(1) for g in range(Q.shape[0])], 1)

def output(state, W, b, t, mixing: bool):
    """The linear output layer contracted with the operator's coefficients: (batch, OUTPUTS) or (batch, 1)."""
    z, Z, L = state
    A = t["output"]
    n = Z.shape[1]
    if not mixing:  # the same operator on every output: combine the rows first, one small product
        Y = A[0, 0] * z + torch.matmul(A[1:1 + n, 0], Z) + torch.matmul(A[1 + n:, 0], L)
        return Y @ W.T + A[0, 0] * b
    out = (z @ W.T + b) @ A[0] + ((Z @ W.T) * A[1:1 + n]).sum((1, 2)) + ((L @ W.T) * A[1 + n:]).sum((1, 2))
    return out[:, None]


prepare = torch_arguments


def _add_from_row(series, row, X):
    """series with X added to its rows from row on, out of place (autograd keeps series)."""
    return series + torch.nn.functional.pad(X, (0, 0, row, 0))


# the primitives operator_series takes from this backend, and the layers it makes of them
_OPS = type("Ops", (), {"affine": staticmethod(affine), "quadratic": staticmethod(_quadratic),
                        "zeros": staticmethod(lambda like, shape: like.new_zeros(shape)), "matmul": staticmethod(torch.matmul),
                        "add_from_row": staticmethod(_add_from_row),
                        "concatenate": staticmethod(lambda arrays: torch.cat(arrays, 1))})
input_series = operator_series.input_series


def first_layer(x, W, t):
    return operator_series.first_layer(x, W, t, _OPS)


def collapsed_activation(state, b, activation, t):
    return operator_series.collapsed_activation(state, b, activation, t, _OPS)


def series_activation(state, b, activation, t):
    return operator_series.series_activation(state, b, activation, t, _OPS)


def fused(tables: Tables, mixing: bool, hidden_layers: int) -> bool:
    """Whether the forward-Laplacian rows run as one autograd node with the backward written out:
    first-order series, one collapsed row, sigma'' times c sum_i Z_i^2 (the Laplacian, u_t - Delta u)."""
    return (tables.first_order_only and not mixing and hidden_layers >= 1 and len(tables.groups) == 1
            and tables.quadratic_kind in ("uniform", "none"))


# Multiply-adds of a layer's product below which the kernel runs on one thread: MKL's threads
# cost tens of milliseconds per small product when the cores are shared, and give little
SMALL_PRODUCT = 2**27


def forward_laplacian(params, x, activation, t, fused_activation=None):
    """The forward Laplacian of the whole network as one autograd node (see ForwardLaplacian);
    fused_activation(z, value, weights): the module's numba loop of sigma and sigma^(k)/k!,
    k = 1..3, which runs the elementwise work as numba loops where _loops_apply."""
    if fused_activation is not None and fused_activation not in _UNCOMPILED and _loops_apply(params, x):
        try:
            return ForwardLaplacianLoops.apply(x, fused_activation, t, *params)
        except Exception as error:  # an activation numba cannot compile (a custom one): torch's operations serve
            if not _is_numba_error(error):
                raise
            _UNCOMPILED.add(fused_activation)
    return ForwardLaplacian.apply(x, activation, t, *params)


_UNCOMPILED: set = set()  # modules' activation loops that numba could not compile


def _is_numba_error(error) -> bool:
    try:
        from numba.core.errors import NumbaError
    except ImportError:
        return False
    return isinstance(error, NumbaError)


def _loops_apply(params, x) -> bool:
    """Whether the numba loops serve this call: CPU float32/float64 tensors (the parameters are x's
    dtype and device: prepare checked), numba and SciPy's BLAS installed, no torch.func transform
    around it (NumPy views need real tensors)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return not torch._C._are_functorch_transforms_active() and _loops() is not None


def _import_loops():
    try:
        from . import numpy_loops, operator_loops
    except Exception:  # numba missing or broken: the torch operations serve
        return None
    return operator_loops if numpy_loops.DGEMM is not None and numpy_loops.SGEMM is not None else None


_LOOPS = []  # [operator_loops] once imported, [None] where it cannot be


def _loops():
    if not _LOOPS:
        _LOOPS.append(_import_loops())
    return _LOOPS[0]


@contextlib.contextmanager
def _threads_for(rows, params):
    """One intra-op thread for the duration when every layer's product is small (SMALL_PRODUCT);
    torch's own setting otherwise (and restored after)."""
    with _one_thread(rows * max(W.shape[0] * W.shape[1] for W in params[0::2]) < SMALL_PRODUCT):
        yield


@contextlib.contextmanager
def _one_thread(small=True):
    """One intra-op thread for the duration where small: a parallel region on a few hundred
    thousand elements waits for every thread to be scheduled, which on shared cores costs more
    than the work."""
    count = torch.get_num_threads()
    small = small and count > 1
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(count)


def _vertex(F, k, like):
    """sigma^(k)/k! as a tensor like `like` (printed constants are numbers, vanishing ones None)."""
    f = F[k - 1] if k - 1 < len(F) else None
    if isinstance(f, torch.Tensor):
        return f
    return torch.full_like(like, 0.0 if f is None else float(f))


def _vertices(a, activation):
    """sigma(a) and sigma^(k)(a)/k! for k = 1, 2, 3, each a tensor like a."""
    with _one_thread():  # a dozen elementwise operations on (batch, width) only
        s, F = activation(a)
        return (s,) + tuple(_vertex(F, k, a) for k in (1, 2, 3))


def _squares(rows):
    """sum_i Z_i^2 over the first-order rows (all rows but the collapsed last)."""
    Z = rows[:, :-1]
    if Z.numel() > 2**20:  # one reduction pass, no temporary the size of Z
        return torch.linalg.vector_norm(Z, dim=1).square_()
    return Z.square().sum(1)  # vector_norm over a strided middle dimension is slow on small arrays


def _rows_out(rows, S, s, F1, F2, q):
    """A layer's output rows: value sigma, sigma' times every other row, and sigma''/2 q sum Z_i^2
    added to the collapsed row."""
    H = s.new_empty((s.shape[0], rows.shape[1] + 1, s.shape[1]))
    H[:, 0] = s
    torch.mul(rows, F1[:, None], out=H[:, 1:])
    if q:
        H[:, -1].addcmul_(F2, S, value=q)
    return H


class ForwardLaplacian(torch.autograd.Function):
    """Value, Jacobian rows and the collapsed row through every layer, each layer's rows one
    matrix product (batch * rows, n_in) @ W^T; the backward is written out and reuses what the
    forward stored (each layer's pre-activation rows and its sigma^(k); the post-activation rows
    are remade), so autograd records one node instead of a dozen per layer on (batch, rows, width)."""

    @staticmethod
    def forward(ctx, x, activation, t, *params):
        with _threads_for(x.shape[0] * t["input_rows"].shape[0], params):
            return ForwardLaplacian._forward(ctx, x, activation, t, *params)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        with _threads_for(ctx.rows, ctx.saved_tensors[2:]):
            return ForwardLaplacian._backward(ctx, g_out)

    @staticmethod
    def _forward(ctx, x, activation, t, *params):
        q = t["uniform_q"]
        W, b = params[0::2], params[1::2]
        C1 = (t["input_rows"] @ W[0].T)[None]  # layer 1's rows other than the value: the same for every point
        a = torch.addmm(b[0], x, W[0].T)
        stored = [(C1, _squares(C1), *_vertices(a, activation))]
        H = _rows_out(C1, *stored[0][1:5], q)
        for l in range(1, len(W) - 1):
            X = (H.reshape(-1, H.shape[2]) @ W[l].T).reshape(H.shape[0], H.shape[1], -1)
            a = X[:, 0].add_(b[l])
            rows = X[:, 1:]
            stored.append((rows, _squares(rows), *_vertices(a, activation)))
            H = _rows_out(rows, *stored[-1][1:5], q)
        A = t["output"][:, 0]
        Y = torch.matmul(A, H)  # the rows combined by the operator's coefficients, then one product
        out = torch.addmm(b[-1] * A[0], Y, W[-1].T)
        ctx.t, ctx.stored, ctx.rows = t, stored, x.shape[0] * t["input_rows"].shape[0]
        ctx.save_for_backward(x, Y, *params)
        return out

    @staticmethod
    def _backward(ctx, g_out):
        x, Y, *params = ctx.saved_tensors
        W = params[0::2]
        t, stored = ctx.t, ctx.stored
        q, A = t["uniform_q"], t["output"][:, 0]
        grads = [None] * len(params)
        grads[-2] = g_out.T @ Y
        grads[-1] = A[0] * g_out.sum(0)
        dH = A[None, :, None] * (g_out @ W[-1])[:, None]  # d/d(rows of the last hidden layer)
        dx = None
        for l in range(len(W) - 2, -1, -1):
            dX = _rows_back(dH, *stored[l], q)
            if l:
                H_prev = _rows_out(*stored[l - 1][:5], q)
                flat = dX.reshape(-1, dX.shape[2])
                grads[2 * l] = flat.T @ H_prev.reshape(-1, H_prev.shape[2])
                grads[2 * l + 1] = dX[:, 0].sum(0)
                del H_prev
                dH = (flat @ W[l]).reshape(dX.shape[0], dX.shape[1], -1)
            else:
                grads[0] = dX[:, 0].T @ x + dX[:, 1:].sum(0).T @ t["input_rows"]
                grads[1] = dX[:, 0].sum(0)
                dx = dX[:, 0] @ W[0] if ctx.needs_input_grad[0] else None
        ctx.stored = None
        return (dx, None, None, *grads)


def _rows_back(dH, rows, S, s, F1, F2, F3, q):
    """The gradient of a layer's pre-activation rows from that of its output rows, in dH's memory:
    d value = F1 dh + 2 F2 dF1 + 3 q F3 S dL, d Z_i = F1 dH_i + 2 q F2 Z_i dL, d L = F1 dL
    (F_k = sigma^(k)/k!), with dF1 = sum_r dH_r rows_r over the rows after the value. In place and
    in this order: each step reads only rows of dH that no earlier step has changed."""
    dF1 = (dH[:, 1:] * rows).sum(1)
    dL = dH[:, -1]
    with _one_thread():  # (batch, width) only
        da = dH[:, 0].mul_(F1).addcmul_(F2, dF1, value=2.0)
        if q:
            da.addcmul_(F3 * S, dL, value=3.0 * q)
            coupling = F2 * dL  # d(F2 q sum Z_i^2)/dZ_i = 2 q F2 Z_i, times dL
    dH[:, 1:].mul_(F1[:, None])
    if q:
        dH[:, 1:-1].addcmul_(rows[:, :-1], coupling[:, None], value=2.0 * q)
    return dH


def _numpy(tensor):
    """A tensor's NumPy view (no copy on the CPU)."""
    return tensor.detach().numpy()


def _numpy_tables(t):
    """The tables' input rows and output coefficients as NumPy arrays, made once per tables."""
    if "numpy" not in t:
        t["numpy"] = (_numpy(t["input_rows"]), np.ascontiguousarray(_numpy(t["output"][:, 0])))
    return t["numpy"]


class ForwardLaplacianLoops(torch.autograd.Function):
    """ForwardLaplacian's algebra on NumPy views of CPU tensors: each layer's elementwise work
    (activation, output rows, their gradient) one numba loop (operator_loops), each product one
    NumPy matmul (its BLAS beats torch's on small products); one autograd node as ForwardLaplacian."""

    @staticmethod
    def forward(ctx, x, fused_activation, t, *params):
        return _node_forward(ctx, _loops_forward, t["input_rows"].shape[0] + 1, x, fused_activation, t, params)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        return _node_backward(ctx, _loops_backward, g_out)


# A call with small products (one BLAS thread) splits its batch over threads from
# POINTS_PER_THREAD points and SPLIT_WORK multiply-adds a thread: handing work to another
# thread and back costs tens of microseconds
POINTS_PER_THREAD = 32
SPLIT_WORK = 2**22


def _parts(batch, rows, params, blas_count):
    """The batch's slices, one per thread, or None for one call on the whole batch."""
    if blas_count > 1:  # products large enough for BLAS's own threads
        return None
    work = batch * rows * sum(W.shape[0] * W.shape[1] for W in params[0::2])
    # torch's count too: a user who set torch.set_num_threads(1) means this call as well
    count = min(threads.get_num_threads(), torch.get_num_threads(), batch // POINTS_PER_THREAD, work // SPLIT_WORK)
    if count <= 1:
        return None
    bounds = [batch * i // count for i in range(count + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _node_forward(ctx, forward, rows, x, fused_activation, tables, params):
    """A fused node's forward: forward(x, params, fused_activation, tables) -> (out, stored, Y) on
    NumPy views, on the whole batch or on its slices over threads; each slice's stored arrays kept."""
    xs, ps = _numpy(x), numpy_views(params)
    ctx.blas_threads = _blas_count(x.shape[0] * rows, params)
    parts = _parts(x.shape[0], rows, params, ctx.blas_threads)
    if parts is None:
        with threads.blas_threads(ctx.blas_threads):
            out, stored, Y = forward(xs, ps, fused_activation, tables)
        ctx.parts = [(slice(None), stored, Y)]
    else:
        results = threads.run_parts(lambda part: forward(xs[part], ps, fused_activation, tables), parts, len(parts))
        out = np.concatenate([r[0] for r in results])
        ctx.parts = [(part, stored, Y) for part, (_, stored, Y) in zip(parts, results)]
    ctx.tables = tables
    ctx.save_for_backward(x, *params)
    return torch.from_numpy(out)


def _node_backward(ctx, backward, g_out):
    """A fused node's backward: backward(g, x, params, stored, Y, tables, input_grad) -> (dx, grads)
    per slice the forward made, the slices' parameter gradients summed."""
    x, *params = ctx.saved_tensors
    g, xs, ps = _numpy(g_out), _numpy(x), numpy_views(params)
    need_x = ctx.needs_input_grad[0]
    parts, ctx.parts = ctx.parts, None  # the backward overwrites what the forward stored: never twice
    if parts is None:
        raise RuntimeError("a compiled operator's call can be differentiated once (retain_graph=True is not "
                           "supported): call apply again for another backward pass")

    def job(part):
        rows, stored, Y = part
        return backward(g[rows], xs[rows], ps, stored, Y, ctx.tables, need_x)

    if len(parts) == 1:
        with threads.blas_threads(ctx.blas_threads):
            dx, grads = job(parts[0])
    else:
        results = threads.run_parts(job, parts, len(parts))
        dx = np.concatenate([r[0] for r in results]) if need_x else None
        grads = [sum(r[1][i] for r in results) for i in range(len(params))]
    return (None if dx is None else torch.from_numpy(dx), None, None, *map(torch.from_numpy, grads))


def _blas_count(rows, params):
    """BLAS threads for a call: one where every layer's product is small (SMALL_PRODUCT), torch's count otherwise."""
    small = rows * max(W.shape[0] * W.shape[1] for W in params[0::2]) < SMALL_PRODUCT
    return 1 if small else torch.get_num_threads()


def _loop_vertices(a, fused_activation, weights=3):
    """sigma(a) and sigma^(k)/k!, k = 1..weights, by the module's numba loop (it writes every weight, zero where one vanishes)."""
    block = np.empty((1 + weights,) + a.shape, dtype=a.dtype)
    fused_activation(a, block[0], block[1:])
    return block[0], block[1:]


def _loops_forward(x, params, fused_activation, t):
    """(out, per hidden layer (X, value, F), Y): ForwardLaplacian._forward on NumPy arrays, each
    layer's pre-activation rows X whole (operator_loops), its products by SciPy's BLAS inside the loops."""
    from .numpy_loops import DGEMM, SGEMM

    loops = _loops()
    q = t["uniform_q"]
    rows_in, A = _numpy_tables(t)
    blas = DGEMM if x.dtype == np.float64 else SGEMM
    W, b = [np.ascontiguousarray(w) for w in params[0::2]], params[1::2]  # BLAS takes rows of unit stride
    batch, rows, dtype = x.shape[0], rows_in.shape[0] + 1, x.dtype
    X, a = np.zeros((1, rows, W[0].shape[0]), dtype=dtype), np.empty((batch, W[0].shape[0]), dtype=dtype)
    loops.first_layer(blas, np.ascontiguousarray(x), W[0], b[0], rows_in, X, a)
    stored = []
    for l in range(len(W) - 1):
        value, F = _loop_vertices(a, fused_activation)
        S = np.empty((X.shape[0], a.shape[1]), dtype=dtype)  # sum_i Z_i^2: made again in the backward
        stored.append((X, value, F))
        if l == len(W) - 2:  # the rows combined by the operator's coefficients, then one product
            Y, out = np.empty_like(value), np.empty((batch, W[-1].shape[0]), dtype=dtype)
            loops.last_layer(blas, X, value, F, q, A, W[-1], b[-1], S, Y, out)
        else:
            n = W[l + 1].shape[0]
            H, X, a = np.empty((batch, rows, a.shape[1]), dtype=dtype), np.empty((batch, rows, n), dtype=dtype), \
                np.empty((batch, n), dtype=dtype)
            loops.next_layer(blas, stored[-1][0], value, F, q, W[l + 1], b[l + 1], S, H, X, a)
            del H
    return out, stored, Y


def _loops_backward(g_out, x, params, stored, Y, t, input_grad):
    """(dx or None, the parameters' gradients): ForwardLaplacian._backward on NumPy arrays, a layer
    each numba call (operator_loops.back_layer), products by SciPy's BLAS inside them."""
    from .numpy_loops import DGEMM, SGEMM

    loops = _loops()
    q = t["uniform_q"]
    rows_in, A = _numpy_tables(t)
    blas = DGEMM if x.dtype == np.float64 else SGEMM
    W = [np.ascontiguousarray(w) for w in params[0::2]]
    grads = [None] * len(params)
    grads[-2], grads[-1], G = loops.back_top(np.ascontiguousarray(g_out), Y, W[-1], A[0])
    return _backward_layers(
        stored, W, x, input_grad, grads, True, blas, rows_in,
        lambda dH, X, F, dX, sums, value_only: loops.rows_back(dH, A, G, X, F, q, dX, sums, value_only),
        lambda below, Wl, dX, H: loops.below_gradients(blas, *below, q, Wl, dX, H))


def _backward_layers(stored, W, x, input_grad, grads, in_place, blas, rows_in, rows_back, below_gradients):
    """(dx or None, grads): the hidden layers backward, last to first, by the kernel's numba calls
    bound to its constants: rows_back(dH, X, F, dX, sums, value_only) and below_gradients(stored
    below, W_l, dX, H) -> W_l's gradient, leaving dH_prev in H. The last hidden layer's dH is
    never made (its rows_back takes it from the output's gradient); in_place: that layer's
    gradient may overwrite its stored rows. Each layer's stored arrays go as soon as its rows are
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
            dH = np.empty((batch, dX.shape[1], W[l].shape[1]), dtype=dtype)  # the rows below, then dH_prev
            grads[2 * l], grads[2 * l + 1] = below_gradients(stored[l - 1], W[l], dX, dH), sums[0]
    dx = np.empty((batch if input_grad else 0, x.shape[1]), dtype=dtype)
    grads[0], grads[1] = first_gradients(blas, dX, sums, np.ascontiguousarray(x), rows_in, W[0], dx)
    return (dx if input_grad else None), grads


def forward_biharmonic(params, x, t, fused_activation, dims, scale):
    """scale times the biharmonic over inputs dims as one autograd node (ForwardBiharmonicLoops),
    or None where the numba loops cannot serve this call (the module's series then do)."""
    if fused_activation is None or fused_activation in _UNCOMPILED or not _loops_apply(params, x):
        return None
    try:
        return ForwardBiharmonicLoops.apply(x, fused_activation, _biharmonic_tables(t, x.shape[1], dims, scale),
                                            *params)
    except Exception as error:  # an activation numba cannot compile (a custom one)
        if not _is_numba_error(error):
            raise
        _UNCOMPILED.add(fused_activation)
        return None


def _biharmonic_tables(t, inputs, dims, scale):
    """The fused biharmonic's constants, made once per tables: (m, pi, pk, pos, input rows, scale)."""
    if "biharmonic" not in t:
        from . import biharmonic_loops

        m = len(dims)
        rows_in = np.zeros((biharmonic_loops.rows(m) - 1, inputs))
        rows_in[np.arange(m), list(dims)] = 1.0
        t["biharmonic"] = (m, *biharmonic_loops.pair_tables(m), rows_in, float(scale))
    return t["biharmonic"]


class ForwardBiharmonicLoops(torch.autograd.Function):
    """The biharmonic's rows (biharmonic_loops: value, first and second derivatives, the collapsed
    third and fourth) through every layer, each layer's elementwise work one numba loop and its
    product one BLAS call; one autograd node whose backward is written out, as ForwardLaplacianLoops."""

    @staticmethod
    def forward(ctx, x, fused_activation, tables, *params):
        from .biharmonic_loops import rows

        return _node_forward(ctx, _biharmonic_forward, rows(tables[0]), x, fused_activation, tables, params)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        return _node_backward(ctx, _biharmonic_backward, g_out)


def _biharmonic_forward(x, params, fused_activation, tables):
    """(out, per hidden layer (X, value, F), Y = c T of the last): each layer's pre-activation rows
    X whole, F its sigma^(k)/k! for k = 1..5."""
    from . import biharmonic_loops as loops
    from .numpy_loops import DGEMM, SGEMM
    from .operator_loops import first_layer

    m, pi, pk, pos, rows_in, scale = tables
    blas = DGEMM if x.dtype == np.float64 else SGEMM
    W, b = [np.ascontiguousarray(w) for w in params[0::2]], params[1::2]
    batch, rows, dtype = x.shape[0], loops.rows(m), x.dtype
    X, a = np.zeros((1, rows, W[0].shape[0]), dtype=dtype), np.empty((batch, W[0].shape[0]), dtype=dtype)
    first_layer(blas, np.ascontiguousarray(x), W[0], b[0], rows_in.astype(dtype), X, a)
    stored = []
    for l in range(len(W) - 1):
        value, F = _loop_vertices(a, fused_activation, 5)
        stored.append((X, value, F))
        if l == len(W) - 2:
            Y, out = np.empty_like(value), np.empty((batch, W[-1].shape[0]), dtype=dtype)
            loops.last_layer(blas, X, F, m, pi, pk, pos, scale, W[-1], Y, out)
        else:
            n = W[l + 1].shape[0]
            H, X, a = (np.empty((batch, rows, a.shape[1]), dtype=dtype), np.empty((batch, rows, n), dtype=dtype),
                       np.empty((batch, n), dtype=dtype))
            loops.next_layer(blas, stored[-1][0], value, F, m, pi, pk, pos, W[l + 1], b[l + 1], H, X, a)
            del H
    return out, stored, Y


def _biharmonic_backward(g_out, x, params, stored, Y, tables, input_grad):
    """(dx or None, the parameters' gradients): a layer each numba call, products by BLAS inside them."""
    from . import biharmonic_loops as loops
    from .numpy_loops import DGEMM, SGEMM
    from .operator_loops import back_top

    m, pi, pk, pos, rows_in, scale = tables
    blas = DGEMM if x.dtype == np.float64 else SGEMM
    W = [np.ascontiguousarray(w) for w in params[0::2]]
    grads = [None] * len(params)
    grads[-2], grads[-1], G = back_top(np.ascontiguousarray(g_out), Y, W[-1], 0.0)
    rows_in = rows_in.astype(x.dtype)
    return _backward_layers(
        stored, W, x, input_grad, grads, False, blas, rows_in,  # rows_back reads rows it has written: not in place
        lambda dH, X, F, dX, sums, value_only: loops.rows_back(dH, G, scale, X, F, m, pi, pk, pos, dX, sums,
                                                               value_only),
        lambda below, Wl, dX, H: loops.below_gradients(blas, *below, m, pi, pk, pos, Wl, dX, H))
