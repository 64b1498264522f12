"""The NumPy backend of the Taylor kernel: NumPy operations, and numba's fused loops
(numpy_loops) where numba takes the dtypes (float64 and float32)."""
import warnings

import numpy as np

from . import threads
from .arguments import numpy_arguments
from .arrays import NumpyArrays
from .taylor_kernel import TaylorKernel

try:
    from . import numpy_loops as loops
    from . import taylor_loops
except Exception as error:  # numba missing or not built for this NumPy: NumPy operations serve, slower
    loops = taylor_loops = None
    warnings.warn(f"diagramc: numba's loops are unavailable ({error}); NumPy kernels run on NumPy operations, "
                  "several times slower from order 3. Fix: pip install --upgrade numba scipy", stacklevel=2)
FUSED = loops is not None


def keep_freed_memory_in_the_heap():
    """glibc's malloc hands freed memory at the top of its heap back to the system once more
    than twice the largest block freed so far lies free there, and takes it back page by
    page at the next use. A call's temporaries are a few MB, so without this a call can spend
    half its time in page faults. Allocating and freeing one 16 MB block (never touched)
    raises that bound to 32 MB by glibc's own rule, as any large temporary would; other
    allocators are unaffected, and the process keeps at most 32 MB it could have returned."""
    np.empty(2**21)


keep_freed_memory_in_the_heap()


def _loop(name):
    """A numba loop as a class attribute (not bound as a method), or None without numba."""
    return None if loops is None else staticmethod(getattr(loops, name))


_NO_MATRIX = {"d": np.empty((0, 0), dtype=np.float64), "f": np.empty((0, 0), dtype=np.float32)}  # K^T where unfolded


class NumpyTaylorKernel(NumpyArrays, TaylorKernel):
    """NumPy arrays in x's dtype; the fused loops where numba takes it."""

    FUSED_LOOPS = True
    TANGENT_FACTOR = 1  # fewer rows through the layers pays at once
    EQUATION_THRESHOLD = 1.1  # its one numba loop per layer replaces several calls
    DIRECTIONS_FACTOR = 1.7  # the plan by directions where this x its multiply-adds are fewer: the fused products' are cheaper
    PRODUCTS_BY_CLASSES = False
    PARALLEL_WORK = 10**6  # multiply-adds a thread's part takes at least: the hand-over (tens of us) is paid over
    PARTS_PER_THREAD = 4  # parts a split call makes per thread, taken as threads come free (threads.run_shared)
    POINTS_PER_PART = 8  # fewer would take the few-rows loops (FEW_ROWS), rounded otherwise than one thread's BLAS
    BLAS_THREADS_WORK = 2**25  # multiply-adds of a chunk's largest product from which BLAS uses the call's threads
    _fused_product = _loop("fused_product")
    _fused_add_scaled = _loop("fused_add_scaled")
    _fused_scaled_rows = _loop("fused_scaled_rows")
    _fused_add_row_dots = _loop("fused_add_row_dots")
    _fused_tangent_lines = _loop("fused_tangent_lines")
    _fused_add_tangent_part = _loop("fused_add_tangent_part")

    def __init__(self, plan, activation, fused_activation=None, fused=True, module_file=None):
        """plan: see TaylorTables, with weight_slots (per vertex weight its slot in the fused
        activation's stack, None where it vanishes) and by_points (order 2 point by point);
        fused_activation(zs, value, weights): the module's numba loop; fused=False: NumPy
        operations alone (as without numba); module_file: see TaylorKernel."""
        super().__init__(plan, activation, module_file)
        self._FUSED = FUSED and fused and fused_activation is not None
        self._fused_activation = fused_activation
        self._ACTIVATION_POINTERS = {}  # dtype -> the activation loop as a function pointer (fused_vertices')
        self._WEIGHT_SLOTS = tuple(plan.get("weight_slots", ()))
        self._POINTS_PER_THREAD = (plan["points_per_thread"] if "points_per_thread" in plan
                                   else self.points_per_thread(bool(plan.get("by_points"))))
        self._WEIGHT_COUNT = sum(slot is not None for slot in self._WEIGHT_SLOTS)
        self._PLAN_BY_POINTS = bool(plan.get("by_points")) and self._FUSED
        self._TABLES = self._build_tables(lambda seq: np.asarray(seq, dtype=np.intp))

        self._TABLES["order_two"] = self._order_two_table() if self._PLAN_BY_POINTS and len(self._TOP_BLOCKS) == 1 else None

        if self._BY_EQUATION and self._FUSED:
            self._TABLES["equation"] = self._by_target(*self._EQUATION_ROWS[0], self._LOW) + self._by_target(*self._EQUATION_ROWS[1], self._LOW)
            self._TABLES["equation_grams"] = self._gram_top_table(self._EQUATION_TOP_WEIGHTS)

        if self._BY_TANGENT and self._FUSED:  # per tangent Gram entry (first-order column c, next-to-top column a) its top position, or -1
            self._TABLES["tangent_positions"] = np.full((self._START[2] - self._START[1]) * (self._LOW - self._PUSHED), -1, dtype=np.int64)
            _entries, _positions = self._tangent_entries()
            self._TABLES["tangent_positions"][_entries] = _positions

        for _k, _table in self._TABLES["powers"].items():
            if self._FUSED:
                _table["fused"] = self._fused_table(_k, _table["scale"])

        self._TABLES["compiled_chunks"] = self._compiled_chunk_tables() if self._compiles_chunks() else None

        # Chunks of 2^16 numbers (512 kB in float64, a core's L2 here) in the compiled path; 2^17
        # where each chunk's calls are made from Python, paid over more points
        self._CHUNK = self._chunk_size(2**16 if self._TABLES["compiled_chunks"] is not None else 2**17)

        self._SCALED_COLUMNS = np.flatnonzero(self._FACTORIALS != 1.0)  # the multi-indices whose alpha! is not 1

        # Order 2 goes point by point where numba can call BLAS (SciPy's) and its one Gram block spans
        # all columns.
        self._BY_POINTS = (self._FUSED and None not in (loops.DGEMM, loops.SGEMM, loops.DSYRK, loops.SSYRK) and self._TABLES["order_two"] is not None
                      and self._TOP_BLOCKS[0]["rows"] == self._TOP_BLOCKS[0]["cols"] == range(self._LOW))

        self._MULTIPLY_ADDS_BY_STRIPS = self.MULTIPLY_ADDS  # the chunked path's (and torch's): the Gram matrix in strips

        if self._BY_POINTS:  # the Gram matrix by _syrk: its triangle, _LOW (_LOW + 1) / 2 entries, not the strips'
            self._SYRK_SAVES = self.OUTPUTS * (self._TOP_BLOCKS[0]["size"] - self._LOW * (self._LOW + 1) // 2) * sum(self.LAYER_SIZES[2:-1])
            self.MULTIPLY_ADDS = {**self.MULTIPLY_ADDS, "gemm": self.MULTIPLY_ADDS["gemm"] - self._SYRK_SAVES, "total": self.MULTIPLY_ADDS["total"] - self._SYRK_SAVES}

        self._TOP_SCALES = None

        if self._BY_POINTS:
            _SERIES_FACTORIALS = np.ones(1 + self._SERIES_SIZE)
            _SERIES_FACTORIALS[np.arange(len(self._FACTORIALS)) if self._SERIES_OUTPUTS is None else self._SERIES_OUTPUTS] = self._FACTORIALS
            self._TOP_SCALES = {False: np.ones(len(self._TOP_ORDER)), True: _SERIES_FACTORIALS[1 + self._LOW :].copy()}

        self._KEPT_FOLD_MATRIX = [None]  # [(K, K^T in the series' order)] for the K _first_layer_for keeps
        self._KEPT_FIRST_ROWS = [None]  # [(layer 1's powers, _first_rows of them)]
        self._KEPT_PARAMS = [None]  # [(x's dtype, the last call's checked parameters, their shapes)]
        self._KEPT_ORDERED = [None]  # [(that list, its weights and biases as the fused loops take them, layer 1's J)]


    @staticmethod
    def _by_target(target, left, right, weight, size):
        """A product's rows sorted by target, for the fused loops: each of the `size` targets' first
        row (and one past the last), and per row its two columns and its weight."""
        target = np.asarray(target, dtype=np.int64)
        rows = np.argsort(target, kind="stable")
        starts = np.concatenate([[0], np.cumsum(np.bincount(target, minlength=size))])
        return (starts, np.asarray(left, dtype=np.int64)[rows], np.asarray(right, dtype=np.int64)[rows],
                np.asarray(weight, dtype=np.float64)[rows])

    def _fused_table(self, k, scale):
        """P_k's product table for _fused_product: rows of P_(k-1) and Z, weighted by the table's
        scale for a pair and 1 for a square."""
        left, right, target, squares = self._POWER_TABLES[k]
        weight = np.concatenate([np.full(len(left), scale), np.ones(len(squares))])
        return self._by_target(np.concatenate([target, squares[:, 1]]), np.concatenate([left, squares[:, 0]]),
                          np.concatenate([right, squares[:, 0]]), weight, max(self._LOW - self._START[k], 0))

    def _order_two_table(self):
        """_fused_order_two's tables, per top-order coefficient in the series' order: its Gram
        entry (_gram_sums' one (r, c), r <= c: on and above the diagonal, where _syrk writes)
        and the entry's weight."""
        entries, weights, targets = self._gram_sums()
        entry, weight = np.zeros(len(self._TOP_ORDER), dtype=np.int64), np.zeros(len(self._TOP_ORDER))
        entry[targets], weight[targets] = entries, weights
        return entry, weight

    def _gram_top_table(self, block_weights):
        """_fused_equation_top's tables: per piece of a top-order block its rows of Q (or of the
        block's left factor), columns of Z and first entry (pieces laid end to end, as in
        _top_sums); the entries' count; per top-order coefficient (in _TOP_ORDER) its entries,
        weighted by their block's weight ((ORDER - a)/ORDER by the equation), twice above a
        symmetric block's diagonal (an entry listed twice). _TOP_GROUPS already lists each
        coefficient's entries in turn, in _TOP_ORDER (the unreached last, with none)."""
        pieces, offsets, offset = [], [], 0
        for block in self._TOP_BLOCKS:
            rows, cols = block["rows"], block["cols"]
            for (r0, r1, c0), start in zip(block["pieces"], block["piece_starts"]):
                pieces.append((rows.start + r0, rows.start + r1, cols.start + c0, cols.stop, offset + start))
            offsets.append(offset)
            offset += block["size"]
        none = np.zeros(0, dtype=np.int64)
        entries = np.concatenate([none] + [lefts for _, _, lefts, _ in self._TOP_GROUPS])
        counts = np.concatenate([none] + [np.full(len(group), count) for count, group, _, _ in self._TOP_GROUPS]
                                + [np.zeros(len(self._TOP_ORDER) - self._TOP_GROUP_ENDS[-1] if self._TOP_GROUPS else len(self._TOP_ORDER), dtype=np.int64)])
        block = np.zeros(len(entries), dtype=np.int64)  # each entry's block: how many blocks start at or before it, less 1
        for start in offsets[1:]:
            block += entries >= start
        weights = np.asarray(block_weights, dtype=np.float64)[block]
        starts = np.concatenate([[0], np.cumsum(counts)])
        return np.asarray(pieces, dtype=np.int64).reshape(-1, 5), offset, starts, entries, weights

    def _compiles_chunks(self):
        """Whether a chunked call runs as one compiled call per part (taylor_loops): the fused
        path from order 3, with SciPy's BLAS for numba, sigma' non-zero and, by the tangent, sigma''."""
        slots = dict(enumerate(self._WEIGHT_SLOTS, 1))
        return (self._FUSED and taylor_loops is not None and None not in (loops.DGEMM, loops.SGEMM) and self.ORDER >= 3
                and self.HIDDEN_LAYERS >= 1 and slots.get(1) is not None and (not self._BY_TANGENT or slots.get(2) is not None))

    def _compiled_chunk_tables(self):
        """taylor_loops.series_part's tables, in its arguments' order from first_orders to
        tangent_positions: the same arrays (types) whichever the path, empty where unused, so
        that one compiled version serves every kernel of a dtype."""
        ints = lambda a: np.ascontiguousarray(a, dtype=np.int64)
        none_ints, none_floats = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        first_orders = ints(np.concatenate([np.full(self._START[k + 1] - self._START[k], k) for k in range(1, self.ORDER)]))
        if self._BY_EQUATION:
            equation, equation_tables = np.asarray(self._EQUATION, dtype=np.float64), tuple(self._TABLES["equation"])
            block_weights = self._EQUATION_TOP_WEIGHTS
        else:
            equation, equation_tables = np.zeros(3), (none_ints, none_ints, none_ints, none_floats) * 2
            block_weights = [1.0] * len(self._TOP_BLOCKS)
        ks = sorted(self._TABLES["powers"])
        fused = [self._TABLES["powers"][k]["fused"] for k in ks]  # (starts, left, right, weight) per k
        shifts = np.cumsum([0] + [len(left) for _, left, _, _ in fused])  # each k's rows after the k before it
        power_starts = ints(np.concatenate([none_ints] + [starts + shift for (starts, _, _, _), shift in zip(fused, shifts)]))
        power_at = ints(np.cumsum([0] + [len(starts) for starts, _, _, _ in fused]))
        power_tables = (ints(ks), power_starts, power_at) + tuple(
            np.ascontiguousarray(np.concatenate([empty] + [table[i] for table in fused]))
            for i, empty in ((1, none_ints), (2, none_ints), (3, none_floats)))
        terms = [(block["rows"].start, block["rows"].stop, k, scale) for block in self._TOP_BLOCKS for k, scale in block["terms"]]
        term_tables = (ints(np.asarray([t[:3] for t in terms]).reshape(-1, 3)), np.asarray([t[3] for t in terms], dtype=np.float64))
        slots = ints([-1] + [-1 if slot is None else slot for slot in self._WEIGHT_SLOTS])
        tangent = self._TABLES["tangent_positions"] if self._BY_TANGENT else none_ints
        gram = self._gram_top_table(block_weights)
        block = None if self._FIRST_LAYER_BLOCK is None else self._TOP_BLOCKS[self._FIRST_LAYER_BLOCK]
        first_term = (ints([0, 0, self.ORDER]), 0.0) if block is None else (ints([block["rows"].start, block["rows"].stop, self.ORDER]), float(block["terms"][-1][1]))
        shapes = ints([(n_out, n_in) for n_in, n_out in zip(self.LAYER_SIZES[:-1], self.LAYER_SIZES[1:])])
        return {"slots": slots, "shapes": shapes, "tables": (first_orders, ints(self._START), self.ORDER, equation, bool(self._BY_EQUATION))
                + equation_tables + power_tables + term_tables + tuple(gram) + first_term + (np.ones_like(gram[-1]),)
                + (bool(self._BY_TANGENT), tangent)}

    def _first_rows(self, first_powers):
        """Layer 1's series rows before their vertex weights, (_LOW, width): order k's rows of
        Z^k, from layer 1's powers (zeros where a power is not made: its weight is zero); kept
        with the powers while they are kept (_first_layer_for: W1 unchanged), a copy of
        megabytes at many inputs."""
        kept = self._KEPT_FIRST_ROWS[0]
        if kept is not None and kept[0] is first_powers:
            return kept[1]
        Z = first_powers[0]
        rows = np.concatenate([first_powers[k - 1][: self._START[k + 1] - self._START[k], 0] if k - 1 < len(first_powers)
                               else self._zeros(Z, (self._START[k + 1] - self._START[k], Z.shape[-1])) for k in range(1, self.ORDER)])
        self._KEPT_FIRST_ROWS[0] = (first_powers, rows)  # one assignment: never half-updated
        return rows

    def _chunked_series(self, params, x, tables, first_powers, fold, out, parts):
        """The chunked path in one compiled call per part (taylor_loops) where it applies, the
        parts under numba's prange where its threading layer hands them over fast, else on
        Python's threads; elsewhere TaylorKernel's."""
        compiled = tables["compiled_chunks"]
        if compiled is None or not self._fuses(x, out, params[0]):
            return super()._chunked_series(params, x, tables, first_powers, fold, out, parts)
        x = np.ascontiguousarray(x)
        weights, biases = (np.concatenate([np.ravel(a) for a in params[i::2]], dtype=x.dtype) for i in (0, 1))
        u = self._empty(x, (x.shape[0], self.OUTPUTS, params[0].shape[0]) if fold else (0, 0, 0))
        head = (self._activation_pointer(x.dtype).address, self._WEIGHT_COUNT, compiled["slots"],
                loops.blas_arguments(x.dtype)[0])
        body = ((weights, biases, compiled["shapes"], self._first_rows(first_powers)) + compiled["tables"]
                + (fold, self._LOW, self._PUSHED, self._CHUNK))
        if parts == [None]:
            taylor_loops.series_part(*head, x, *body, out, u)
        elif loops.fast_parallel_loops():
            cuts = np.asarray([0] + [rows.stop for rows in parts], dtype=np.int64)
            loops.workers_off_this_core()
            with threads.one_blas_thread():  # the parts are the parallelism
                taylor_loops.series_parts(*head, x, *body, out, u, cuts)
        else:
            self._run_parts(lambda rows: taylor_loops.series_part(*head, x[rows], *body, out[rows], u[rows] if fold else u), parts)
        return u if fold else None

    def _fused_equation_top(self, g, Q, Z, *tables_top_accumulate):
        """numpy_loops.fused_equation_top with BLAS for its large Gram pieces (address 0
        without SciPy: the loop for all)."""
        blas, zero, one = loops.blas_arguments(Z.dtype)
        loops.fused_equation_top(g, Q, Z, *tables_top_accumulate, blas or 0, np.empty(8, dtype=np.int32), zero, one)

    def _scatters(self, a):
        """Whether products are scatter-adds (a GPU's way): never for NumPy."""
        return False

    def _fuses(self, *arrays):
        """Whether the fused loops take these arrays' dtypes (float64 and float32 in this machine's
        byte order; others get NumPy operations)."""
        return self._FUSED and all(a.dtype.char in "df" and a.dtype.isnative for a in arrays)

    def _vertex_weights(self, z):
        """sigma(z) and the vertex weights sigma^(k)/k! (see _activation) of z, (batch, width): in
        one fused loop where numba takes z's dtype, else as NumPy operations."""
        if self._fuses(z):
            value = np.empty_like(z)
            weights = np.empty((self._WEIGHT_COUNT,) + z.shape, dtype=z.dtype)
            self._fused_activation(z, value, weights)
            return value, tuple(None if slot is None else weights[slot] for slot in self._WEIGHT_SLOTS)
        return self._activation(z)

    def _by_equation(self, Z, h, factors):
        """Whether a layer from 2 on follows the activation's equation: where that is cheaper
        and numba's loops take the dtype."""
        return self._BY_EQUATION and self._fuses(Z, h, factors[0])

    def _equation_series(self, Z, h, factors, tables):
        """(S, Q): the low-order series of sigma(z + Z) (as _through_activation's) and of
        sigma'(z + Z), by the activation's equation in one fused loop (over rows of batch x width)."""
        S, Q = np.empty(Z.shape, dtype=Z.dtype), np.empty(Z.shape, dtype=Z.dtype)  # C order: their rows are views
        slope = self._EQUATION[1] + 2.0 * self._EQUATION[2] * h  # p'(sigma)
        loops.fused_equation_series(np.ascontiguousarray(Z).reshape(len(Z), -1), slope.ravel(),
                               np.ascontiguousarray(factors[0]).ravel(), *tables["equation"],
                               S.reshape(len(S), -1), Q.reshape(len(Q), -1))
        return S, Q

    def _by_points(self, x):
        """Whether this call goes point by point (_fused_order_two): numba takes x's dtype."""
        return self._BY_POINTS and self._fuses(x)

    def _activation_pointer(self, dtype):
        """The activation loop as a cfunc for dtype, made at its first use (one compile a dtype)."""
        pointer = self._ACTIVATION_POINTERS.get(dtype)
        if pointer is None:
            pointer = loops.activation_pointer(getattr(self._fused_activation, "py_func", self._fused_activation), dtype)
            self._ACTIVATION_POINTERS[dtype] = pointer
        return pointer

    def _fold_matrix(self, K):
        """K^T (width x top order) with its columns in the series' order, contiguous, as
        _fused_order_two multiplies by it: made once per K (kept while W1 is unchanged)."""
        kept = self._KEPT_FOLD_MATRIX[0]
        if kept is None or kept[0] is not K:
            kept = (K, np.ascontiguousarray(K[self._TOP_POSITION].T))
            self._KEPT_FOLD_MATRIX[0] = kept  # one assignment: never half-updated
        return kept[1]

    def _series_by_points(self, params, x, tables, K, out, derivatives):
        """Order 2 for the whole batch in two fused calls (fused_vertices: the layers' values,
        sigma', sigma''/2 and output lines; _fused_order_two: point by point the rest), layer 1's
        block folded into K unless K is None; out in the series' order, the top order included, times alpha!
        where `derivatives` (returned: whether out holds the derivatives). Layer 1's first-order
        series is W1's columns of the first-order variables (W1 itself where all are)."""
        C = np.ascontiguousarray  # numba takes C-ordered arrays (one compiled loop); mostly they are already
        kept = self._KEPT_ORDERED[0]
        if kept is not None and kept[0] is params:  # the kept parameter list again (_prepare): its arrays as they were
            weights, biases, J = kept[1:]
        else:
            weights, biases = tuple(map(C, params[0::2])), tuple(map(C, params[1::2]))
            J = C(weights[0][:, tables["first_order_variables"]])
            if all(w is p for w, p in zip(weights + biases, params[0::2] + params[1::2])) and np.shares_memory(J, weights[0]):
                self._KEPT_ORDERED[0] = (params, weights, biases, J)  # views of the caller's arrays: never stale
        blas, syrk = (loops.DGEMM, loops.DSYRK) if x.dtype.itemsize == 8 else (loops.SGEMM, loops.SSYRK)
        KT = _NO_MATRIX[x.dtype.char] if K is None else self._fold_matrix(K)
        widest = max(self.LAYER_SIZES[1:])  # the widest layer's, the output layer's included
        slopes = self._empty(x, (len(weights) - 1, x.shape[0], widest))  # layer l's sigma' in slopes[l, :, :width]
        lines = self._empty(x, (len(weights) - 1, x.shape[0], self.OUTPUTS, widest))
        loops.fused_vertices(self._activation_pointer(x.dtype).address, self._WEIGHT_COUNT, self._WEIGHT_SLOTS[0],
                             self._WEIGHT_SLOTS[1], blas, C(x), weights, biases, out, slopes, lines)
        loops.fused_order_two(blas, syrk, J, K is None, KT, slopes, lines, weights, out, *tables["order_two"],
                         self._TOP_SCALES[derivatives])
        return derivatives

    def _affine(self, h, W, b):
        """h @ W.T + b."""
        return h @ W.T + b

    def _add_product(self, out, a, b):
        """out + a * b, in place where out is given (a * b where it is None)."""
        if out is None:
            return a * b
        out += a * b
        return out

    def _through_layer(self, H, W):
        """The next layer's series Z = H W^T: its first _PUSHED rows, one matrix product written in
        place; the next-to-top order's are zeros by the tangent (made at the vertices, _top_order)."""
        if self._PUSHED == self._LOW:
            return self._rows_times(H, W.T)
        Z = np.empty((self._LOW,) + H.shape[1:-1] + W.shape[:1], dtype=np.result_type(H, W))
        np.matmul(np.ascontiguousarray(H[:self._PUSHED]).reshape(-1, H.shape[-1]), W.T, out=Z[:self._PUSHED].reshape(-1, W.shape[0]))
        Z[self._PUSHED:] = 0.0
        return Z

    def _add_row_dots(self, out, a, rows):
        """out += sum_j a[b, r, j] rows[n, b, j], out (batch, R, n), for a (batch or 1, R, width)
        and rows (n, batch, width): dot products of each point's rows (in a fused loop where numba
        takes the dtypes; as NumPy's matmul they are a tiny product per point)."""
        if self._fuses(out, a, rows):
            self._fused_add_row_dots(out, a, rows)
        else:
            out += a @ rows.transpose(1, 2, 0)

    def _stacked_products(self, pairs):
        """The products a * b (broadcast) of the pairs, stacked along axis 0: each written in place
        into its rows of one new array (no concatenation's copy). a and b have as many axes, each
        of size 1 or the product's."""
        shapes = [tuple(map(max, a.shape, b.shape)) for a, b in pairs]  # (np.broadcast_shapes costs more than the product at one point)
        out = np.empty((sum(shape[0] for shape in shapes),) + shapes[0][1:], dtype=pairs[0][1].dtype)
        start = 0
        for (a, b), shape in zip(pairs, shapes):
            np.multiply(a, b, out=out[start : start + shape[0]])
            start += shape[0]
        return out

    def _chunk(self, x):
        return self._CHUNK

    def _parts(self, batch):
        """One slice of the batch per thread, each of at least _POINTS_PER_THREAD points (the
        whole batch, None, where it has too few for two, or where a part would not be one
        compiled call: no SciPy BLAS for numba, or sigma' zero)."""
        if (self._POINTS_PER_THREAD is None or batch < 2 * self._POINTS_PER_THREAD
                or not (self._BY_POINTS or self._TABLES["compiled_chunks"] is not None)):
            return [None]
        count = min(threads.get_num_threads(), batch // self._POINTS_PER_THREAD)
        if count <= 1:
            return [None]
        pieces = max(count, min(count * self.PARTS_PER_THREAD, batch // self._POINTS_PER_THREAD, batch // self.POINTS_PER_PART))
        bounds = [batch * i // pieces for i in range(pieces + 1)]
        return [slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]

    def _run_parts(self, function, parts):
        return threads.run_shared(function, parts, min(threads.get_num_threads(), len(parts)))

    def _coefficients(self, params, x, derivatives):
        if len(x) * self.MULTIPLY_ADDS["total"] < self.PARALLEL_WORK:  # products too small for BLAS's threads
            return super()._coefficients(params, x, derivatives)
        # BLAS on no more threads than the call may use (more than the cores it may run on, on a
        # pinned process or a busy machine, spin against each other, 10x slower), and on one
        # where a chunk's products are small: waking BLAS's threads for each costs more than they give
        largest = self._CHUNK * self._LOW * max(self.LAYER_SIZES[1:-1], default=1) ** 2
        with threads.blas_threads(threads.get_num_threads() if largest >= self.BLAS_THREADS_WORK else 1):
            return super()._coefficients(params, x, derivatives)

    def _times_factorials(self, coefficients):
        """coefficients * alpha!, in place (taylor_coefficients' array is always new): only the
        columns whose alpha! is not 1 (at order 2 the d squares of 2211 columns: 20x less work
        than multiplying all, which took 8% of a call at d = 64, batch 256)."""
        coefficients[..., self._SCALED_COLUMNS] *= self._FACTORIALS[self._SCALED_COLUMNS].astype(coefficients.dtype, copy=False)
        return coefficients

    def _gather(self, a, index):
        return a.take(index, axis=0)

    def _take_last(self, a, index):
        return a.take(index, axis=-1)

    def _copy_to_keep(self, a):
        return a.copy()

    def _unchanged(self, kept, a):
        return kept.dtype == a.dtype and np.array_equal(kept, a)

    def _prepare(self, params, x):
        # The same parameter arrays as the last call (a loop over points, a solver): the checked
        # list again, the arrays themselves (values changed in place are seen), unless a shape changed
        kept = self._KEPT_PARAMS[0]
        if (kept is not None and type(x) is np.ndarray and x.dtype == kept[0] and x.ndim == 2
                and x.shape[1] == self.INPUTS and len(params) == len(kept[1])
                and all(p is q and p.shape == shape for p, q, shape in zip(params, kept[1], kept[2]))):
            return kept[1], x, self._TABLES
        given = params
        params, x = numpy_arguments(params, x, self.LAYER_SIZES)
        if len(params) == len(given) and all(p is q for p, q in zip(params, given)):  # none converted
            self._KEPT_PARAMS[0] = (x.dtype, params, tuple(p.shape for p in params))  # one assignment
        return params, x, self._TABLES

    def _product(self, A, Z, table):
        """Low-order part of the truncated product of two series, A * Z, by dense blocks (or by
        one fused loop where numba is installed)."""
        shape = (table["size"], max(A.shape[1], Z.shape[1]), Z.shape[2])
        if self._fuses(A, Z) and shape[1] > 1:  # not for layer 1's one point, kept between calls (_first_layer_for)
            return self._fused_product(A, Z, *table["fused"], self._empty(Z, shape))
        out = self._zeros(Z, shape)
        for bucket in table["buckets"]:
            terms = self._summed(self._gather(A, bucket["left"]) * self._gather(Z, bucket["right"]), bucket)
            out[bucket["targets"]] = terms if table["scale"] == 1.0 else table["scale"] * terms
        if len(table["square_targets"]):
            out[table["square_targets"]] += self._gather(Z, table["square_columns"]) ** 2
        return out
