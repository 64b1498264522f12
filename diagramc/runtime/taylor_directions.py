"""The Taylor kernel by directions: univariate Taylor series of f along the C(d+n-1, n)
directions j (the order-n multi-indices as vectors), pushed through the layers as jets, then
every mixed partial up to order n by exact interpolation (runtime.interpolation).

Where the inputs are few and the order high, a univariate series costs O(n) multiply-adds per
coefficient and needs no index tables, where the multivariate products cost O(pairs); the plan
decides from the work counts below (``multiply_adds``) which way a kernel goes.

Inside, per hidden layer: coefficient 0 (the value) once per point, shared by all directions;
coefficients 1..n as (n, D, batch, width). Coefficient k along direction j is a homogeneous
polynomial of degree k in j, so where C(d+k-1, k) < D only that many directions' go through a
layer's weights and the rest are made from them by an exact linear map (interpolation.
pushed_directions): one matrix product per layer over Sum_k min(C(d+k-1, k), D) rows. Layer 1 is
affine in x, so along x + t j its series is z + t W1 j: sigma's coefficients there are
sigma^(k)(z)/k! (W1 j)^k. The top coefficient n never passes through a weight matrix: each
layer's coefficient n made with the incoming one left out (R) is contracted against the output
line g = df/dh (one reverse sweep), as the products plan does with its top order.
"""
import math

import numpy as np

from . import interpolation, jet_series
from .arrays import NumpyArrays


def series_work(rule, order):
    """Elementwise multiply-adds per number of a hidden layer for coefficients 1..order by a
    jet_series rule (as its loops do them; the top coefficient's own input is left out)."""
    name = rule[0]
    n = order
    if name == "quadratic":
        # a_k: k terms; u_k (k < n): c1 a_k, 2 c2 a_0 a_k and the cross terms of the square
        return sum(k for k in range(1, n + 1)) + sum(2 + k // 2 for k in range(1, n))
    if name == "integral":
        return sum(k for k in range(1, n + 1)) + sum((k - 1) + 2 + (k - 1) // 2 for k in range(2, n + 1))
    if name == "harmonic":
        return sum(k for k in range(1, n + 1)) + sum(k - 1 for k in range(2, n + 1))
    # vertex: per k and power m, k - m + 1 products and one weighted sum
    return sum(1 + sum(k - m + 2 for m in range(2, k + 1)) for k in range(1, n + 1))


def pushed_counts(d, order):
    """Per order k = 1..n-1, how many directions' coefficients go through a layer's weights
    (interpolation.pushed_directions, counted without building it)."""
    D = math.comb(d + order - 1, order)
    sizes = [math.comb(d + k - 1, k) for k in range(1, order)]
    return tuple(size if size <= interpolation.MAX_PUSHED and size < D else D for size in sizes)


def multiply_adds(layer_sizes, order, rule):
    """Multiply-adds per point of a call by directions: {"gemm", "elementwise", "total"}.
    Matrix products: the values, the pushed coefficients 1..n-1 through each layer, the output
    line's reverse sweep, the top coefficient's contractions and the interpolation."""
    d, m = layer_sizes[0], layer_sizes[-1]
    hidden = layer_sizes[1:-1]
    n = order
    D = math.comb(d + n - 1, n)
    pushed = pushed_counts(d, n)
    coefficients = sum(math.comb(d + k - 1, k) for k in range(1, n + 1))
    rows = 1 + sum(pushed)  # the value and the pushed coefficients
    expand = sum((D - p) * p for p in pushed)  # the rest made from the pushed, per number of a layer
    gemm = d * layer_sizes[1] + sum(rows * a * b for a, b in zip(layer_sizes[1:-1], layer_sizes[2:]))
    gemm += sum(m * a * b for a, b in zip(hidden[:-1], hidden[1:])) + D * m * sum(hidden) + coefficients * D * m
    elementwise = 2 * n * D * hidden[0] + sum(D * w * series_work(rule, n) for w in hidden[1:]) + 2 * m * sum(hidden)
    elementwise += expand * (sum(hidden[1:]) + m)
    return {"gemm": gemm, "elementwise": elementwise, "total": gemm + elementwise}


class DirectionsKernel:
    """The shared algorithm; a backend's class supplies the array operations."""

    def __init__(self, plan, activation):
        """plan: inputs, outputs, layer_sizes, activation, order, rule (jet_series' (name,
        constants)); activation(z) -> (sigma(z), (sigma^(k)(z)/k! for k = 1..ORDER, None where zero))."""
        self.INPUTS, self.OUTPUTS = plan["inputs"], plan["outputs"]
        self.LAYER_SIZES = tuple(plan["layer_sizes"])
        self.HIDDEN_LAYERS = len(self.LAYER_SIZES) - 2
        self.ACTIVATION, self.ORDER = plan["activation"], plan["order"]
        self._RULE = (plan["rule"][0], tuple(plan["rule"][1]))
        self._activation = activation
        d, n = self.INPUTS, self.ORDER
        # the directions in the order whose first ones are pushed (interpolation.pushed_directions)
        order, self._PUSHED, self._EXPAND = interpolation.pushed_directions(d, n)
        self._DIRECTIONS = np.array(interpolation.directions(d, n), dtype=np.float64).reshape(-1, d)[list(order)]
        orders = [interpolation.multi_indices(d, k) for k in range(n + 1)]
        self.MULTI_INDICES = tuple(alpha for block in orders for alpha in block)
        factorials = [np.array([_factorial(alpha) for alpha in block]) for block in orders]
        self._FACTORIALS = np.concatenate(factorials)  # alpha! of each multi-index
        # per order k: gamma (derivatives) and gamma / alpha! (Taylor coefficients), transposed: (D, C(d+k-1, k))
        self._GAMMA = {True: [None] + [interpolation.matrix(d, n, k)[:, list(order)].T.copy() for k in range(1, n + 1)]}
        self._GAMMA[False] = [None] + [g / f for g, f in zip(self._GAMMA[True][1:], factorials[1:])]
        self.MULTIPLY_ADDS = multiply_adds(self.LAYER_SIZES, n, self._RULE)
        # Points per chunk: about 2^17 numbers (1 MB in float64) in a layer's series, so that a
        # layer's product and the activation's loop find it in cache (a power of 2, at least 1)
        numbers = n * len(self._DIRECTIONS) * max(self.LAYER_SIZES[1:-1], default=1)
        self._CHUNK = 2 ** max(0, round(math.log2(2**17 / numbers)))

    def taylor_coefficients(self, params, x):
        """Taylor coefficients D^alpha f(x) / alpha!: (batch, OUTPUTS, len(MULTI_INDICES)), in x's dtype."""
        return self._coefficients(params, x, False)

    def derivatives(self, params, x):
        """Partial derivatives D^alpha f(x): (batch, OUTPUTS, len(MULTI_INDICES)), in x's dtype."""
        return self._coefficients(params, x, True)

    def _coefficients(self, params, x, derivatives):
        params, x = self._prepare(params, x)
        if x.shape[0] == 0:
            return self._zeros(x, (0, self.OUTPUTS, len(self.MULTI_INDICES)))
        chunks = [self._chunk_coefficients(params, x[i : i + self._CHUNK], derivatives)
                  for i in range(0, x.shape[0], self._CHUNK)]
        return chunks[0] if len(chunks) == 1 else self._cat(chunks, 0)

    def _chunk_coefficients(self, params, x, derivatives):
        """One chunk's coefficients: the series along the directions, then interpolation."""
        value, lower, top = self._along(params, x)
        gammas = self._GAMMA[derivatives]
        blocks = [value[:, :, None]]
        for k in range(1, self.ORDER + 1):  # (batch, OUTPUTS, D) @ (D, C(d+k-1, k))
            along = top if k == self.ORDER else self._permute(lower[k - 1], (1, 2, 0))
            blocks.append(along @ self._constant(("gamma", derivatives, k), gammas[k], x))
        return self._cat(blocks, -1)

    def _first_layer(self, z, W):
        """Layer 1 along x + t j: (sigma(z), sigma'(z), coefficients 1..n of sigma as (n, D,
        batch, width)): sigma^(k)(z)/k! (W1 j)^k, the series of sigma along a line."""
        value, factors = self._vertex_weights(z)
        v = self._constant("directions", self._DIRECTIONS, z) @ W.T  # (D, width): the same for every x
        power, series = v, self._empty(z, (self.ORDER, v.shape[0]) + tuple(z.shape))
        for k in range(1, self.ORDER + 1):
            if factors[k - 1] is None:
                series[k - 1] = 0.0
            else:
                self._multiply_into(series, k - 1, factors[k - 1][None], power[:, None, :])
            power = power * v
        return value, factors[0], series

    def _along(self, params, x):
        """f's series along every direction: the value (batch, OUTPUTS), coefficients 1..n-1
        (n - 1, D, batch, OUTPUTS) and the top coefficient (batch, OUTPUTS, D)."""
        weights, biases = params[0::2], params[1::2]
        n = self.ORDER
        z = self._affine(x, weights[0], biases[0])
        value, slope, series = self._first_layer(z, weights[0])
        slopes, tops = [slope], [series[n - 1]]
        for W, b in zip(weights[1:-1], biases[1:-1]):
            z = self._affine(value, W, b)
            value, slope, series = self._through_activation(z, self._push(series, W))
            slopes.append(slope)
            tops.append(series[n - 1])
        out = self._affine(value, weights[-1], biases[-1])
        lower = self._push(series, weights[-1])[: n - 1]  # (n - 1, D, batch, OUTPUTS)
        # the top coefficient: each layer's R against the output line g = df/dh (reverse sweep)
        g, top = weights[-1][None], None
        for layer in reversed(range(self.HIDDEN_LAYERS)):
            part = g @ self._permute(tops[layer], (1, 2, 0))  # (batch, OUTPUTS, D)
            top = part if top is None else top + part
            if layer > 0:
                g = (g * slopes[layer][:, None, :]) @ weights[layer]
        return out, lower, top

    def _rows_times(self, a, matrix):
        """a @ matrix over a's last axis, as one matrix product."""
        return (a.reshape(-1, a.shape[-1]) @ matrix).reshape(tuple(a.shape[:-1]) + (matrix.shape[-1],))

    def _push(self, series, W):
        """The next layer's coefficients 1..n along every direction, (n, D, batch, width), the
        n-th zeros (left out, see _along): per order k the first _PUSHED[k-1] directions' through
        W (one matrix product for all orders), the others' from theirs by _EXPAND[k-1]."""
        n, D = self.ORDER, series.shape[1]
        shape = tuple(series.shape[2:-1]) + (W.shape[0],)
        if n == 1:
            return self._zeros(series, (1, D) + shape)
        parts = [series[k, :p].reshape(-1, series.shape[-1]) for k, p in enumerate(self._PUSHED)]
        flat = self._cat(parts, 0) @ W.T
        out, start = [], 0
        for k, p in enumerate(self._PUSHED):
            block = flat[start : start + p * flat.shape[0] // sum(self._PUSHED)].reshape((p,) + shape)
            start += p * flat.shape[0] // sum(self._PUSHED)
            if p < D:
                rest = self._constant(("expand", k), self._EXPAND[k], series) @ block.reshape(p, -1)
                block = self._cat([block, rest.reshape((D - p,) + shape)], 0)
            out.append(block)
        out.append(self._zeros(series, (D,) + shape))
        return self._stack(out)

    def _through_activation(self, z, incoming):
        """(sigma(z), sigma'(z), coefficients 1..n of sigma along each direction), from z and the
        incoming coefficients 1..n (n, D, batch, width), the n-th zeros: sigma's n-th is made
        with it left out (it never passes a weight matrix). By the activation's rule (jet_series)."""
        value, factors = self._vertex_weights(z)
        state = jet_series.RULES[self._RULE[0]](self._RULE[1], value, factors, self._addcmul)
        h = [z] + list(incoming)
        series = [state.push(h[: k + 1]) for k in range(1, self.ORDER + 1)]
        return value, factors[0], self._stack(series)


def _factorial(alpha):
    """alpha! as a float."""
    out = 1.0
    for a in alpha:
        for i in range(2, a + 1):
            out *= i
    return out


class NumpyDirectionsKernel(NumpyArrays, DirectionsKernel):
    """NumPy arrays in x's dtype; tanh's and sigmoid's series in numba's equation loop."""

    def __init__(self, plan, activation, fused_activation=None):
        from . import taylor_numpy  # noqa: F401  (its import keeps a call's freed memory in the heap)

        super().__init__(plan, activation)
        self._fused_activation = fused_activation
        self._CONSTANTS = {}
        n = self.ORDER
        self._LOOPS = None
        if self._RULE[0] == "quadratic" and fused_activation is not None:
            try:
                from . import numpy_loops
            except Exception:  # numba missing: NumPy operations serve
                numpy_loops = None
            if numpy_loops is not None:
                self._LOOPS = numpy_loops
                self._EQUATION_TABLES = self._equation_tables(n, self._RULE[1][2])
        self._WEIGHT_SLOTS = tuple(plan.get("weight_slots", ()))

    @staticmethod
    def _equation_tables(n, c2):
        """fused_equation_series' tables for one univariate series of n coefficients (row k - 1:
        coefficient k): S_k = sigma' h_k + sum_(j<k) (j/k) h_j Q_(k-j), Q_k = p'(sigma) S_k +
        c2 sum_(i+j=k) S_i S_j."""
        def by_target(rows):
            rows = sorted(rows)
            starts = np.searchsorted([r[0] for r in rows], np.arange(n + 1)).astype(np.int64) if rows else np.zeros(n + 1, dtype=np.int64)
            return (starts, np.array([r[1] for r in rows], dtype=np.int64), np.array([r[2] for r in rows], dtype=np.int64),
                    np.array([r[3] for r in rows], dtype=np.float64))
        s_rows = [(k - 1, j - 1, k - j - 1, j / k) for k in range(1, n + 1) for j in range(1, k)]
        q_rows = [(k - 1, i - 1, k - i - 1, c2 * (1.0 if 2 * i == k else 2.0)) for k in range(1, n + 1) for i in range(1, k // 2 + 1)] if c2 else []
        return by_target(s_rows) + by_target(q_rows)

    def _prepare(self, params, x):
        from .arguments import numpy_arguments
        return numpy_arguments(params, x, self.LAYER_SIZES)

    def _constant(self, name, values, like):
        return values if values.dtype == like.dtype else values.astype(like.dtype)

    def _stack(self, arrays):
        return np.stack(arrays)

    def _permute(self, a, axes):
        return a.transpose(axes)

    def _affine(self, h, W, b):
        return h @ W.T + b

    def _multiply_into(self, out, row, a, b):
        np.multiply(a, b, out=out[row])

    @staticmethod
    def _addcmul(total, a, b, value=1.0):
        return jet_series.numpy_addcmul(total, a, b, value)

    def _fuses(self, *arrays):
        return self._LOOPS is not None and all(a.dtype.char in "df" and a.dtype.isnative for a in arrays)

    def _vertex_weights(self, z):
        """sigma(z) and the vertex weights sigma^(k)/k! (see TaylorKernel._vertex_weights)."""
        if self._fused_activation is not None and self._WEIGHT_SLOTS and z.dtype.char in "df":
            value = np.empty_like(z)
            weights = np.empty((sum(s is not None for s in self._WEIGHT_SLOTS),) + z.shape, dtype=z.dtype)
            self._fused_activation(np.ascontiguousarray(z), value, weights)
            return value, tuple(None if slot is None else weights[slot] for slot in self._WEIGHT_SLOTS)
        return self._activation(z)

    def _push(self, series, W):
        """As DirectionsKernel's, into one array: the pushed rows gathered for one matrix product,
        its result written into place, the rest expanded into theirs."""
        n, D = self.ORDER, series.shape[1]
        shape = series.shape[2:-1] + (W.shape[0],)
        Z = np.empty((n, D) + shape, dtype=series.dtype)
        Z[n - 1] = 0.0  # the top coefficient's own input is left out (see _along)
        if n == 1:
            return Z
        pushed = np.concatenate([series[k, :p] for k, p in enumerate(self._PUSHED)])
        flat = pushed.reshape(-1, series.shape[-1]) @ W.T
        start = 0
        for k, p in enumerate(self._PUSHED):
            block = flat[start : start + p * flat.shape[0] // len(pushed)].reshape((p,) + shape)
            start += p * flat.shape[0] // len(pushed)
            Z[k, :p] = block
            if p < D:
                np.matmul(self._constant(("expand", k), self._EXPAND[k], series), block.reshape(p, -1),
                          out=Z[k, p:].reshape(D - p, -1))
        return Z

    def _through_activation(self, z, Z):
        if not self._fuses(z, Z):
            return super()._through_activation(z, Z)
        value, factors = self._vertex_weights(z)
        c0, c1, c2 = self._RULE[1]
        n, rows = self.ORDER, int(np.prod(Z.shape[1:]))
        S, Q = np.empty_like(Z), np.empty_like(Z)
        D = Z.shape[1]
        slope = np.broadcast_to(c1 + 2.0 * c2 * value, (D,) + z.shape).reshape(-1)
        q0 = np.broadcast_to(factors[0], (D,) + z.shape).reshape(-1)
        self._LOOPS.fused_equation_series(Z.reshape(n, rows), slope, q0, *self._EQUATION_TABLES,
                                          S.reshape(n, rows), Q.reshape(n, rows))
        return value, factors[0], S
