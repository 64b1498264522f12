"""Taylor mode through an MLP in torch: jets along curves, and the series of a neural ODE's solution.

Differentiable (autograd, double backward too) with no Python loop over the batch; the loops
run over the order. Layout inside: coefficients first, ``(K + 1, batch, width)``, so that one
affine layer over all coefficients is one matrix product and each coefficient is contiguous.
"""
from __future__ import annotations

import math
import threading

import torch

from . import jet_series, threads
from .arguments import numpy_views


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
        series, top = _apply_compiled(_KINDS[name], activation, rule, order, regularizer, z, t, *params)
        return (series, top) if regularizer else series
    series = _torch_series(params, z, t, order, activation, rule)
    return (series, _regularizer(series, order)) if regularizer else series


def _regularizer(series, order):
    top = series[..., order] * float(math.factorial(order))
    return (top * top).mean(dim=1)


_KINDS = {"tanh": 0, "sigmoid": 1}  # the activations the compiled passes know, by their number there


def _sigmoid(x, out):
    from scipy.special import expit

    return expit(x, out=out)


def _tanh(x, out):
    import numpy as np

    return np.tanh(x, out=out)


_SIGMA = (_tanh, _sigmoid)  # NumPy's vectorized functions, by kind


_EMPTY: dict = {}  # empty arrays, made once: (dtype, axes) -> one, ("stand-ins", dtype, count) -> a tuple


def _compiled_applies(name, rule, params, z, t, order):
    """Whether the compiled pass serves this call: CPU float32/float64 tensors, an activation it
    knows, no torch.func transform around it (an autograd.Function without vmap rules)."""
    if name not in ("tanh", "sigmoid") or rule[0] != "quadratic" or order < 1 or z.device.type != "cpu":
        return False
    if z.dtype not in (torch.float32, torch.float64) or torch._C._are_functorch_transforms_active():
        return False
    if t is not None and t.device.type != "cpu":
        return False
    numpy_loops = _loops()[1]
    return numpy_loops.DGEMM is not None and numpy_loops.SGEMM is not None


_LOOPS: list = []  # jet_ode_loops and numpy_loops, imported at the first compiled call (numba: not at import)


def _loops():
    """(jet_ode_loops, numpy_loops), imported once: an import statement per call costs microseconds."""
    if not _LOOPS:
        from . import jet_ode_loops, numpy_loops

        _LOOPS.extend((jet_ode_loops, numpy_loops))
    return _LOOPS


_LAYOUTS: dict = {}  # per shapes, batch, order, dtype and activation: what a call needs that only they decide

# A compiled call goes through its batch in tiles of rows whose share of the store takes at most
# TILE_BYTES (kept in a core's cache: a store of megabytes runs several times slower), and
# spreads the tiles over threads from ROWS_PER_THREAD rows a thread and, where numba's prange
# hands work over in microseconds (numpy_loops.fast_parallel_loops), PART_WORK multiply-adds a
# thread; else, on Python's threads, from SPLIT_WORK: handing work to one of those and back
# costs tens of microseconds
TILE_BYTES = 2**20
ROWS_PER_THREAD = 32
PART_WORK = 2**22
SPLIT_WORK = 2**25
# Multiply-adds of a layer's product from which an unsplit call lets BLAS use torch's threads
BLAS_THREADS_WORK = 2**24


class _Layout:
    """What a compiled call needs that depends only on the shapes, the order, the dtype, the
    activation and the threads (made once, kept): the tiles' rows and their shares of the store,
    each thread's tiles, step fractions, the activation's equation, and the gradient buffer's layout."""

    def __init__(self, arrays, B, D, K, dtype, kind, c, timed, threads, fast):
        import numpy as np

        weights = arrays[0::2]
        self.kind, self.timed, self.K, self.D = kind, timed, K, D
        self.widths = [W.shape[0] for W in weights[:-1]]
        self.c = np.asarray(c, dtype=dtype)
        self.frac = np.array([[j / k if k else 0.0 for j in range(K + 2)] for k in range(K + 2)], dtype=dtype)
        per_row = 3 * K * sum(self.widths)  # P, A and U of every hidden layer, K coefficients each
        tiles = max(1, min(B, -(-per_row * B * np.dtype(dtype).itemsize // TILE_BYTES)))
        # a call's multiply-adds, forward and back: K coefficients through every layer, three times
        work = 3 * K * B * sum(W.size for W in weights)
        count = max(1, min(threads, B // ROWS_PER_THREAD, work // (PART_WORK if fast else SPLIT_WORK)))
        if not fast:
            count = min(count, tiles)
        tiles = min(B, -(-tiles // count) * count)  # whole tiles per thread
        cuts = [B * i // tiles for i in range(tiles + 1)]
        self.tiles = list(zip(cuts[:-1], cuts[1:]))  # the tiles' rows
        self.per_row = per_row  # a tile's share of the store: rows lo..hi take per_row * lo up to per_row * hi
        self.store_size = per_row * B
        self.groups = [range(tiles * i // count, tiles * (i + 1) // count) for i in range(count)]  # each thread's tiles
        # numba's prange over the threads' parts (forward_parts, reverse_parts): their bounds as arrays
        self.parallel = fast and count > 1
        self.cuts, self.store_cuts = np.array(cuts, dtype=np.int64), np.array(cuts, dtype=np.int64) * per_row
        self.parts = np.array([g.start for g in self.groups] + [tiles], dtype=np.int64)
        # BLAS's own threads only for products large enough to pay for waking them
        self.blas_threads = threads if count == 1 and max(hi - lo for lo, hi in self.tiles) * max(
            W.size for W in weights) >= BLAS_THREADS_WORK else 1
        sizes = [W.size for W in weights] + [W.shape[0] for W in weights]
        ends = np.cumsum(sizes).tolist()
        self.gradient_size = ends[-1]
        self.starts = np.array([0] + ends, dtype=np.int64)  # the weights' gradients, then the biases' (jet_ode_loops._gradient_views)
        self.weight_shapes = [W.shape for W in weights]
        # the weights' transposes without time's column, end to end (jet_ode_loops.transposed_layer)
        self.transposed_size = sum(W.size - (W.shape[0] if timed and l == 0 else 0) for l, W in enumerate(weights))
        self.top_scale = float(math.factorial(K)) ** 2 / D  # mean over the states of (K! z_K)^2
        # float32 tanh's coefficient 0 made inside the passes, by jet_ode_loops.tanh32_equation, on each thread's rows
        self.inside = kind == _KINDS["tanh"] and dtype == np.float32
        # the weights' transposes made by the pass itself where one call, or one prange call, makes the first tile
        self.fill = self.inside and (self.parallel or len(self.groups) == 1)
        self.stand_ins = _stand_ins(dtype, len(self.widths))  # first_p and first_a where the passes make them
        self.blas = _loops()[1].blas_arguments(dtype)

    def gradients(self, buffer):
        """[dW1, db1, ..., dWL, dbL] as tensors viewing one NumPy buffer."""
        L, ends = len(self.weight_shapes), self.starts
        return [torch.from_numpy(g) for l, shape in enumerate(self.weight_shapes)
                for g in (buffer[ends[l]: ends[l + 1]].reshape(shape), buffer[ends[L + l]: ends[L + l + 1]])]


def _layout(arrays, B, D, K, dtype, kind, c, timed, threads, fast):
    key = (tuple(a.shape for a in arrays[0::2]), B, K, dtype, kind, c, timed, threads, fast)
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) >= 64:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
        layout = _LAYOUTS[key] = _Layout(arrays, B, D, K, dtype, kind, c, timed, threads, fast)
    return layout


def _stand_ins(dtype, count):
    """`count` empty 2-D arrays: first_p and first_a where the passes make coefficient 0 themselves."""
    key = ("stand-ins", dtype, count)
    arrays = _EMPTY.get(key)
    if arrays is None:
        import numpy as np

        arrays = _EMPTY[key] = tuple(np.zeros((0, 0), dtype=dtype) for _ in range(count))
    return arrays


_SCRATCH = threading.local()
SCRATCH_KEPT = 2**24  # items up to which a thread keeps its scratch buffer between calls


def _scratch(size, dtype, use="adjoints"):
    """`size` items of a buffer this thread keeps between calls for one use (read within one pass,
    never after it): made anew each call, a buffer of megabytes came from memory malloc had
    handed back to the system, a page fault every 4 kB (1000 a call and 1.8 ms of system time
    at the timed dynamics' K = 3)."""
    import numpy as np

    kept = getattr(_SCRATCH, "arrays", None)
    if kept is None:
        kept = _SCRATCH.arrays = {}
    array = kept.get((use, dtype))
    if array is None or array.size < size:
        array = np.empty(size, dtype=dtype)
        if size <= SCRATCH_KEPT:
            kept[use, dtype] = array
    return array[:size]


def _array(x, contiguous=True):
    """A CPU tensor's NumPy view (made contiguous, or as it is): no detached tensor made where none is needed."""
    if x.requires_grad:
        x = x.detach()
    return (x if not contiguous or x.is_contiguous() else x.contiguous()).numpy()


def _unread(dtype, ndim=1):
    """An empty array of `ndim` axes: an unread time (autonomous dynamics), no gradient given."""
    key = (dtype, ndim)
    empty = _EMPTY.get(key)
    if empty is None:
        import numpy as np

        empty = _EMPTY[key] = np.zeros((0,) * ndim, dtype=dtype)
    return empty


def _coefficient_zero(loops, lay, z, t, weights, biases, transposed, timed):
    """Each hidden layer's pre-activation and activation at coefficient 0 for the whole batch,
    sigma by NumPy's vectorized functions: two tuples of (batch, width) arrays (transposed: made)."""
    import numpy as np

    blas, zero, one = lay.blas
    first_p, first_a, x = [], [], z
    for l, n in enumerate(lay.widths):
        P0, A0 = np.empty((z.shape[0], n), dtype=z.dtype), np.empty((z.shape[0], n), dtype=z.dtype)
        w_t = weights[0][:, -1] if timed and l == 0 else biases[l]
        loops.affine(x, loops.transposed_layer(transposed, weights, timed, l), biases[l], t, w_t, timed and l == 0, P0, blas,
                     np.empty(8, np.int32), zero, one)
        _SIGMA[lay.kind](P0, out=A0)
        first_p.append(P0)
        first_a.append(A0)
        x = A0
    return tuple(first_p), tuple(first_a)


class _CompiledSeries(torch.autograd.Function):
    """ode_series as compiled passes (runtime.jet_ode_loops): coefficient 0 through the network
    (inside the passes for float32 tanh, else beforehand for the whole batch), then the forward
    pass and its adjoint written by hand, one numba call per tile of the batch's rows, or one per
    pass with the tiles spread over numba's prange threads where a call is large enough.
    Autograd records one node instead of hundreds of small ones."""

    @staticmethod
    def forward(ctx, kind, activation, rule, order, regularizer, z, t, *flat):
        import numpy as np

        loops, numpy_loops = _loops()

        timed = t is not None
        zn = _array(z)
        B, D = zn.shape
        dtype = zn.dtype
        tn = _array(t) if timed else _unread(dtype)
        arrays = numpy_views(flat)
        weights, biases = arrays[0::2], arrays[1::2]
        fast = numpy_loops.fast_parallel_loops()
        count = min(torch.get_num_threads(), numpy_loops.numba_threads()) if fast else torch.get_num_threads()
        lay = _layout(arrays, B, D, order, dtype, kind, rule[1], timed, count, fast)
        blas, zero, one = lay.blas
        # remade each call (values may have changed in place), by the first numba call that reads them
        transposed = _scratch(lay.transposed_size, dtype, "transposed")
        series = np.empty((order + 1, B, D), dtype=dtype)  # series[0] = z copied by the passes
        store = np.empty(lay.store_size, dtype=dtype)
        top = np.empty(B if regularizer else 0, dtype=dtype)
        inside, fill = lay.inside, lay.fill
        with threads.blas_threads(lay.blas_threads):
            if not fill:
                loops.transpose_weights(weights, timed, transposed)
            if inside:  # the passes make coefficient 0: arrays of the right type, never read
                first_p = first_a = lay.stand_ins
            else:
                first_p, first_a = _coefficient_zero(loops, lay, zn, tn, weights, biases, transposed, timed)
            if lay.parallel:
                numpy_loops.workers_off_this_core()
                loops.forward_parts(lay.c, lay.frac, tn, timed, weights, transposed, fill, biases, order, inside, first_p,
                                    first_a, lay.cuts, lay.store_cuts, lay.parts, zn, series, store, top, lay.top_scale,
                                    blas, zero, one)
            elif len(lay.tiles) == 1:  # the common case, called directly: a closure costs microseconds
                loops.forward(lay.c, lay.frac, tn, timed, weights, transposed, fill, biases, order, inside, first_p,
                              first_a, 0, B, zn, series, store, top, lay.top_scale, blas, np.empty(8, np.int32), zero,
                              one)
            else:
                def forward(group):
                    ints = np.empty(8, np.int32)
                    for i in group:
                        lo, hi = lay.tiles[i]
                        part = store[lay.per_row * lo: lay.per_row * hi]
                        loops.forward(lay.c, lay.frac, tn, timed, weights, transposed, fill and i == 0, biases, order,
                                      inside, first_p, first_a, lo, hi, zn, series, part, top, lay.top_scale, blas, ints,
                                      zero, one)

                threads.run_parts(forward, lay.groups, len(lay.groups))
        ctx.numpy = (lay, tn, weights, series, store)
        ctx.setup = (activation, rule, order, timed)
        ctx.save_for_backward(z, t, *flat)
        ctx.set_materialize_grads(False)
        # (batch, D, order + 1) as a view of the passes' coefficient-first array: no permute node to record
        return torch.from_numpy(series.transpose(1, 2, 0)), torch.from_numpy(top) if regularizer else None

    @staticmethod
    def backward(ctx, G, G_top):
        import numpy as np

        loops, numpy_loops = _loops()

        activation, rule, order, timed = ctx.setup
        z, t, *flat = ctx.saved_tensors
        if torch.is_grad_enabled():  # a gradient of the gradient: the same pass as torch operations
            return (None,) * 5 + _recorded_backward(z, t if timed else None, flat, order, activation, rule, G, G_top)
        lay, tn, weights, series, store = ctx.numpy
        ctx.numpy = None
        dtype = series.dtype
        B, D = series.shape[1], series.shape[2]
        Gn = _unread(dtype, 3) if G is None else np.ascontiguousarray(_array(G.to(z.dtype), False).transpose(2, 0, 1))
        # G_top is often mean's gradient, expanded: made contiguous by NumPy, cheaper than torch
        gn = _unread(dtype) if G_top is None else np.ascontiguousarray(_array(G_top, contiguous=False), dtype=dtype)
        want_dz = ctx.needs_input_grad[5]
        dz, dt = np.empty((B if want_dz else 0, D), dtype=dtype), np.zeros(B, dtype=dtype)
        blas, zero, one = lay.blas
        scale = 2.0 * lay.top_scale

        with threads.blas_threads(lay.blas_threads):
            if lay.parallel:
                numpy_loops.workers_off_this_core()
                buffers = np.empty((len(lay.groups), lay.gradient_size), dtype=dtype)
                adjoints = _scratch(lay.store_size, dtype)  # kept: see jet_ode_loops.reverse
                loops.reverse_parts(lay.c, lay.frac, tn, timed, weights, order, series, lay.cuts, lay.store_cuts,
                                    lay.parts, store, adjoints, Gn, gn, scale, buffers, lay.starts, dz, dt, blas, zero,
                                    one)
                buffer = buffers[0]  # the parts' sum
            elif len(lay.tiles) == 1:  # the common case, called directly: a closure costs microseconds
                buffer = np.zeros(lay.gradient_size, dtype=dtype)
                loops.reverse(lay.c, lay.frac, tn, timed, weights, order, series, 0, B, store, _unread(dtype), Gn, gn,
                              scale, buffer, lay.starts, dz, dt, blas, np.empty(8, np.int32), zero, one)
            else:
                def reverse(group):  # the group's tiles accumulate into one buffer
                    buffer, ints = np.zeros(lay.gradient_size, dtype=dtype), np.empty(8, np.int32)
                    for i in group:
                        lo, hi = lay.tiles[i]
                        part = store[lay.per_row * lo: lay.per_row * hi]
                        loops.reverse(lay.c, lay.frac, tn, timed, weights, order, series, lo, hi, part, _unread(dtype),
                                      Gn, gn, scale, buffer, lay.starts, dz, dt, blas, ints, zero, one)
                    return buffer

                buffers = threads.run_parts(reverse, lay.groups, len(lay.groups))
                buffer = buffers[0] if len(buffers) == 1 else np.sum(buffers, axis=0)
        return (None,) * 5 + (torch.from_numpy(dz) if want_dz else None, torch.from_numpy(dt) if timed else None,
                              *lay.gradients(buffer))


def _direct_apply(function):
    """`function.apply` without torch's Python wrapper, whose work (default arguments for
    setup_context, functorch's dead wrappers) none of these calls needs: _compiled_applies has
    ruled out functorch's transforms. The wrapper where torch's C entry point has moved."""
    entry = getattr(torch._C, "_FunctionBase", None)
    entry = getattr(entry, "__dict__", {}).get("apply")
    return entry.__get__(None, function) if hasattr(entry, "__get__") else function.apply


_apply_compiled = _direct_apply(_CompiledSeries)


def _recorded_backward(z, t, flat, order, activation, rule, G, G_top):
    """The gradient as recorded torch operations (create_graph): the torch pass again, differentiated."""
    inputs = [z, t, *flat]
    wanted = [x is not None and x.requires_grad for x in inputs]
    with torch.enable_grad():
        series = _torch_series(list(flat), z, t, order, activation, rule)
        outputs, grads = [series], [G]
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
