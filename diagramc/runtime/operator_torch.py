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

from . import operator_fused, operator_series, threads
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


def forward_laplacian(params, x, activation, t, fused_activation=None):
    """The forward Laplacian of the whole network as one autograd node (see ForwardLaplacian);
    fused_activation(z, value, weights): the module's numba loop of sigma and sigma^(k)/k!,
    k = 1..3, which runs the elementwise work as numba loops where _loops_apply."""
    if _loops_apply(params, x):  # torch's operations serve where the loops cannot
        out = operator_fused.unless_uncompiled(fused_activation,
                                               lambda: ForwardLaplacianLoops.apply(x, fused_activation, t, *params))
        if out is not None:
            return out
    return ForwardLaplacian.apply(x, activation, t, *params)


def _loops_apply(params, x) -> bool:
    """Whether the numba loops serve this call: CPU float32/float64 tensors (the parameters are x's
    dtype and device: prepare checked), numba and SciPy's BLAS installed, no torch.func transform
    around it (NumPy views need real tensors)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return False
    return not torch._C._are_functorch_transforms_active() and operator_fused.loops() is not None


@contextlib.contextmanager
def _threads_for(rows, params):
    """One intra-op thread for the duration when every layer's product is small (operator_fused.SMALL_PRODUCT);
    torch's own setting otherwise (and restored after)."""
    with _one_thread(operator_fused.small(rows, params)):
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


def _laplacian_tables(t):
    """operator_fused's Laplacian constants (q, input rows, output coefficients), made once per tables."""
    if "numpy" not in t:
        t["numpy"] = (t["uniform_q"], _numpy(t["input_rows"]), np.ascontiguousarray(_numpy(t["output"][:, 0])))
    return t["numpy"]


class ForwardLaplacianLoops(torch.autograd.Function):
    """ForwardLaplacian's algebra on NumPy views of CPU tensors (operator_fused.laplacian_forward
    and its backward): each layer's elementwise work one numba loop, each product one SciPy BLAS
    call (its BLAS beats torch's on small products); one autograd node as ForwardLaplacian."""

    @staticmethod
    def forward(ctx, x, fused_activation, t, *params):
        tables = _laplacian_tables(t)
        return _node_forward(ctx, operator_fused.laplacian_forward, operator_fused.laplacian_rows(tables), x,
                             fused_activation, tables, params)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        return _node_backward(ctx, operator_fused.laplacian_backward, g_out)


def _node_forward(ctx, forward, rows, x, fused_activation, tables, params):
    """A fused node's forward (operator_fused.forward_in_parts): the batch split over torch's
    threads (and no more than diagramc's) where the products are small, BLAS on torch's otherwise."""
    xs, ps = _numpy(x), numpy_views(params)
    # torch's count too: a user who set torch.set_num_threads(1) means this call as well
    slices, ctx.blas_threads = operator_fused.split(x.shape[0], rows, params,
                                                    min(threads.get_num_threads(), torch.get_num_threads()),
                                                    torch.get_num_threads())
    out, ctx.pieces = operator_fused.forward_in_parts(forward, xs, ps, fused_activation, tables, slices,
                                                      ctx.blas_threads)
    ctx.tables = tables
    ctx.save_for_backward(x, *params)
    return torch.from_numpy(out)


def _node_backward(ctx, backward, g_out):
    """A fused node's backward (operator_fused.backward_in_parts), once: it overwrites what the forward stored."""
    x, *params = ctx.saved_tensors
    pieces, ctx.pieces = ctx.pieces, None
    if pieces is None:
        raise RuntimeError("a compiled operator's call can be differentiated once (retain_graph=True is not "
                           "supported): call apply again for another backward pass")
    dx, grads = operator_fused.backward_in_parts(backward, _numpy(g_out), _numpy(x), numpy_views(params), pieces,
                                                 ctx.tables, ctx.needs_input_grad[0], ctx.blas_threads)
    return (None if dx is None else torch.from_numpy(dx), None, None, *map(torch.from_numpy, grads))


def forward_biharmonic(params, x, t, fused_activation, dims, scale):
    """scale times the biharmonic over inputs dims as one autograd node (ForwardBiharmonicLoops),
    or None where the numba loops cannot serve this call (the module's series then do)."""
    if not _loops_apply(params, x):
        return None
    if "biharmonic" not in t:
        t["biharmonic"] = operator_fused.biharmonic_tables(x.shape[1], dims, scale, _numpy(t["input_rows"]).dtype)
    return operator_fused.unless_uncompiled(
        fused_activation, lambda: ForwardBiharmonicLoops.apply(x, fused_activation, t["biharmonic"], *params))


class ForwardBiharmonicLoops(torch.autograd.Function):
    """The biharmonic's rows (operator_fused.biharmonic_forward: value, first and second
    derivatives, the collapsed third and fourth) through every layer, each layer's elementwise
    work one numba loop and its product one BLAS call; one autograd node whose backward is
    written out, as ForwardLaplacianLoops."""

    @staticmethod
    def forward(ctx, x, fused_activation, tables, *params):
        return _node_forward(ctx, operator_fused.biharmonic_forward, operator_fused.biharmonic_rows(tables), x,
                             fused_activation, tables, params)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        return _node_backward(ctx, operator_fused.biharmonic_backward, g_out)
