"""Taylor mode through an MLP in torch: jets along curves, and the series of a neural ODE's solution.

Differentiable (autograd, double backward too) with no Python loop over the batch; the loops
run over the order. Layout inside: coefficients first, ``(K + 1, batch, width)``, so that one
affine layer over all coefficients is one matrix product and each coefficient is contiguous.
"""
from __future__ import annotations

import math

import torch

from . import jet_series, threads


def jet(params, x, activation, rule):
    """Coefficients of f(x(t)) from those of x(t): x (batch, d, K + 1) -> (batch, m, K + 1).

    ``activation(h0) -> (sigma, weights)`` and ``rule`` (jet_series) come from the generated module.
    """
    h = x.permute(2, 0, 1)
    weights, biases = params[0::2], params[1::2]
    last = len(weights) - 1
    for layer, (W, b) in enumerate(zip(weights, biases)):
        z = torch.matmul(h, W.T)  # every coefficient in one product; the bias only on coefficient 0
        coefficients = [z[0] + b, *z[1:].unbind(0)]
        if layer == last:
            h = torch.stack(coefficients)
        else:
            h = torch.stack(jet_series.series(rule, activation, coefficients, torch.addcmul))
    return h.permute(1, 2, 0)


def ode_series(params, z, t, order, activation, rule, name=None, regularizer=False):
    """Normalised Taylor coefficients z_[k] = z^(k)(t0)/k!, k = 0..order, of the solution of
    dz/dt = f(z) (t None) or f(cat(z, t)) through (t0, z): shape (batch, D, order + 1); with
    ``regularizer``, also (batch,) the mean over the D states of (d^order z/dt^order)^2.

    One pass: coefficient k of f along the solution gives z_[k+1] = y_[k] / (k + 1); each hidden
    layer keeps its series and extends it by one coefficient per step, so the work grows as
    order^2 (the equation rules) and the matrix products as order. On the CPU, for tanh and
    sigmoid (``name``), the pass and its gradient run compiled (_CompiledSeries); elsewhere, and
    for a gradient of the gradient, as torch operations.
    """
    if t is not None:
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device).expand(z.shape[0])
    if _compiled_applies(name, rule, params, z, t, order):
        series, top = _CompiledSeries.apply(_compiled_kinds()[name], activation, rule, order, regularizer, z, t, *params)
        return (series.permute(1, 2, 0), top) if regularizer else series.permute(1, 2, 0)
    series = _torch_series(params, z, t, order, activation, rule)
    return (series, _regularizer(series, order)) if regularizer else series


def _regularizer(series, order):
    top = series[..., order] * float(math.factorial(order))
    return (top * top).mean(dim=1)


def _compiled_kinds():
    return {"tanh": 0, "sigmoid": 1}


def _sigmoid(x, out):
    from scipy.special import expit

    return expit(x, out=out)


def _tanh(x, out):
    import numpy as np

    return np.tanh(x, out=out)


_SIGMA = (_tanh, _sigmoid)  # NumPy's vectorized functions, by kind


_BLAS: dict = {}  # dtype -> gemm's routine and scratch (numba calls hold the GIL: one scratch serves all)


def _blas_arguments(dtype):
    """gemm's routine and scratch (numpy_loops.gemm) for a dtype."""
    arguments = _BLAS.get(dtype)
    if arguments is None:
        import numpy as np

        from .numpy_loops import DGEMM, SGEMM

        arguments = _BLAS[dtype] = (DGEMM if dtype == np.float64 else SGEMM, np.empty(8, dtype=np.int32),
                                    np.zeros(1, dtype=dtype), np.ones(1, dtype=dtype))
    return arguments


def _compiled_applies(name, rule, params, z, t, order):
    """Whether the compiled pass serves this call: CPU float32/float64 tensors, an activation it
    knows, no torch.func transform around it (an autograd.Function without vmap rules)."""
    if name not in ("tanh", "sigmoid") or rule[0] != "quadratic" or order < 1 or z.device.type != "cpu":
        return False
    if z.dtype not in (torch.float32, torch.float64) or torch._C._are_functorch_transforms_active():
        return False
    if t is not None and t.device.type != "cpu":
        return False
    from .numpy_loops import DGEMM, SGEMM

    return DGEMM is not None and SGEMM is not None


_ARRAYS: dict = {}  # the parameters' NumPy views, by identity and storage, a few sets at a time
_FRACTIONS: dict = {}  # (order, dtype) -> frac[k, j] = j / k


def _prepared(flat, timed):
    """(weights, biases, transposes without the time column) as NumPy arrays: the views kept while
    the parameters keep their storage (a solver calls with the same ones many times), the
    transposes made each call (values may change in place, even through .data, unversioned)."""
    import numpy as np

    key = tuple((id(p), p.data_ptr()) for p in flat)
    entry = _ARRAYS.get(key)
    if entry is None:
        if len(_ARRAYS) >= 8:
            _ARRAYS.pop(next(iter(_ARRAYS)))
        entry = _ARRAYS[key] = (flat, tuple(p.detach().contiguous().numpy() for p in flat))  # flat held: ids stay theirs
    weights, biases = entry[1][0::2], entry[1][1::2]
    transposed = tuple(np.ascontiguousarray(W[:, : W.shape[1] - (timed and l == 0)].T) for l, W in enumerate(weights))
    return weights, biases, transposed


def _fractions(order, dtype):
    key = (order, dtype)
    frac = _FRACTIONS.get(key)
    if frac is None:
        import numpy as np

        frac = _FRACTIONS[key] = np.array([[j / k if k else 0.0 for j in range(order + 2)] for k in range(order + 2)],
                                          dtype=dtype)
    return frac


def _unread_time(dtype):
    """An unread time array (autonomous dynamics)."""
    return _blas_arguments(dtype)[2]


class _CompiledSeries(torch.autograd.Function):
    """ode_series as two numba calls (runtime.jet_ode_loops): the forward pass, and its adjoint by
    hand. Autograd records one node instead of hundreds of small ones."""

    @staticmethod
    def forward(ctx, kind, activation, rule, order, regularizer, z, t, *flat):
        import numpy as np

        from . import jet_ode_loops as loops

        timed = t is not None
        zn = z.detach().contiguous().numpy()
        dtype = zn.dtype
        tn = t.detach().contiguous().numpy() if timed else _unread_time(dtype)
        weights, biases, transposed = _prepared(flat, timed)
        B, D = zn.shape
        K = order
        frac = _fractions(K, dtype)
        series = np.empty((K + 1, B, D), dtype=dtype)
        widths = [W.shape[0] for W in weights[:-1]]
        store = np.empty(3 * K * B * sum(widths), dtype=dtype)
        c = np.asarray(rule[1], dtype=dtype)
        blas, ints, zero, one = _blas_arguments(dtype)
        series[0] = zn
        x, start = zn, 0
        with threads.blas_threads(torch.get_num_threads()):  # BLAS follows torch.set_num_threads
            for l, n in enumerate(widths):  # coefficient 0 through the network
                P0 = store[start: start + B * n].reshape(B, n)
                A0 = store[start + K * B * n: start + (K + 1) * B * n].reshape(B, n)
                w_t = weights[0][:, -1] if timed and l == 0 else biases[l]
                loops.affine(x, transposed[l], biases[l], tn, w_t, timed and l == 0, P0, blas, ints, zero, one)
                _SIGMA[kind](P0, out=A0)
                x, start = A0, start + 3 * K * B * n
            loops.forward(c, frac, tn, timed, weights, transposed, biases, K, series, store, blas, ints, zero, one)
        out = torch.from_numpy(series)
        top = None
        if regularizer:  # the regularizer here too: no autograd nodes of its own
            scaled = series[K] * float(math.factorial(K))
            top = torch.from_numpy(np.square(scaled, out=scaled).sum(axis=1) / D)
        ctx.numpy = (c, frac, tn, weights, store, blas)
        ctx.setup = (activation, rule, order, timed, regularizer)
        ctx.save_for_backward(z, t, out, *flat)
        ctx.set_materialize_grads(False)
        return out, top

    @staticmethod
    def backward(ctx, G, G_top):
        import numpy as np

        from . import jet_ode_loops as loops

        activation, rule, order, timed, regularizer = ctx.setup
        z, t, series, *flat = ctx.saved_tensors
        if torch.is_grad_enabled():  # a gradient of the gradient: the same pass as torch operations
            return (None,) * 5 + _recorded_backward(z, t if timed else None, flat, order, activation, rule, G, G_top)
        c, frac, tn, weights, store, blas = ctx.numpy
        dtype = c.dtype
        K = order
        B, D = z.shape
        Gn = np.zeros((K + 1, B, D), dtype=dtype) if G is None else G.detach().to(z.dtype).numpy().copy()
        if G_top is not None:  # d/dz_K of mean((K! z_K)^2) over the states
            Gn[K] += (G_top.detach().to(z.dtype).numpy() * (2.0 * math.factorial(K) ** 2 / D))[:, None] * series[K].numpy()
        sizes = [W.size for W in weights] + [W.shape[0] for W in weights]
        buffer = np.zeros(sum(sizes) + B, dtype=dtype)  # every gradient a view of one zeroed buffer
        ends = np.cumsum(sizes)
        dweights = tuple(buffer[e - W.size: e].reshape(W.shape) for W, e in zip(weights, ends))
        dbiases = tuple(buffer[e - W.shape[0]: e] for W, e in zip(weights, ends[len(weights):]))
        dz = np.empty((B, D), dtype=dtype)
        dt = buffer[ends[-1]:]
        with threads.blas_threads(torch.get_num_threads()):  # BLAS follows torch.set_num_threads
            loops.reverse(c, frac, tn, timed, weights, K, series.detach().numpy(), store, Gn, np.zeros_like(store),
                          np.empty((K, B, D), dtype=dtype), dweights, dbiases, dz, dt, *_blas_arguments(dtype))
        grads = [torch.from_numpy(a) for pair in zip(dweights, dbiases) for a in pair]
        return (None,) * 5 + (torch.from_numpy(dz), torch.from_numpy(dt) if timed else None, *grads)


def _recorded_backward(z, t, flat, order, activation, rule, G, G_top):
    """The gradient as recorded torch operations (create_graph): the torch pass again, differentiated."""
    inputs = [z, t, *flat]
    wanted = [x is not None and x.requires_grad for x in inputs]
    with torch.enable_grad():
        series = _torch_series(list(flat), z, t, order, activation, rule)
        outputs, grads = [series.permute(2, 0, 1)], [G]
        if G_top is not None:
            outputs.append(_regularizer(series, order))
            grads.append(G_top)
        pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None]
        grads = torch.autograd.grad([o for o, _ in pairs], [x for x, w in zip(inputs, wanted) if w], [g for _, g in pairs],
                                    create_graph=True, allow_unused=True)
    grads = iter(grads)
    return tuple(next(grads) if w else None for w in wanted)


def _torch_series(params, z, t, order, activation, rule):
    """ode_series as torch operations (any device, dtype and activation; twice differentiable)."""
    biases = params[1::2]
    transposed = [W.T for W in params[0::2]]  # once per call, not once per coefficient
    D = z.shape[1]
    if t is not None:
        transposed[0], w_t = transposed[0][:D], transposed[0][D]
    hidden = len(transposed) - 1
    inputs = [[] for _ in range(hidden)]  # each hidden layer's pre-activation series
    states = [None] * hidden
    zs = [z]
    for k in range(order):
        h = zs[k]
        for layer in range(hidden + 1):
            if k == 0:
                pre = torch.addmm(biases[layer], h, transposed[layer])
            else:
                pre = torch.mm(h, transposed[layer])
            if layer == 0 and t is not None and k <= 1:
                # time's own series is t0 + 1 t: its column adds t0 w_t at k = 0 and w_t at k = 1
                pre = torch.addr(pre, t, w_t) if k == 0 else pre + w_t
            if layer == hidden:
                zs.append(pre / (k + 1) if k else pre)
                break
            inputs[layer].append(pre)
            if k == 0:
                states[layer], h = jet_series.start(rule, activation, pre, torch.addcmul)
            else:
                h = states[layer].push(inputs[layer])
    return torch.stack(zs, dim=2)
