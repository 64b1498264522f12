"""The index tables of a Taylor kernel: which products of series a kernel computes, and where
each term goes, built from the request's compact description (sizes, order, multi-indices).

Inside, a multi-index is a monomial: its sorted tuple of variable indices, (2, 0, 1) -> (0, 0, 2),
kept per order as the rows of an integer array in the canonical (lexicographic) order. Every
table is built from those arrays by array operations: at 64 inputs, order 4, there are 814,384
monomials, and Python objects per monomial would take tens of seconds and gigabytes.
The compiler reads the same tables for its plan (strategy choices, work counts); a generated
module builds them at import from the plan it was written with (the plan needs only their
sizes: the index arrays that only a kernel reads are built by _index_tables).
"""
import functools
import hashlib
import io
import itertools
import json
import math
import os
import sys

import numpy as np


_TABLE_KEYS = ("inputs", "outputs", "layer_sizes", "activation", "order", "vertex_orders", "requested", "equation",
               "by_tangent", "by_equation")
# The tables built last, by their description: the plan made at compile time and the module
# imported right after it in the same process share them (large tables take seconds).
_RECENT = {}


def _all_monomials(inputs, order):
    """Every monomial of one order as rows of variable indices, (count, order), in the order of
    itertools.combinations_with_replacement: each row of order - 1 followed by every index from
    its last one on."""
    rows = np.zeros((1, 0), dtype=np.int64)
    for _ in range(order):
        last = rows[:, -1] if rows.shape[1] else np.zeros(1, dtype=np.int64)
        counts = inputs - last
        parent = np.repeat(np.arange(len(rows)), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)  # each parent's first new row
        rows = np.concatenate([rows[parent], (np.arange(len(parent)) - first + last[parent])[:, None]], axis=1)
    return rows


def _sorted_rows(columns):
    """Each row of a set of columns (equal-length integer arrays, broadcastable) sorted, by an
    odd-even transposition network of elementwise min/max: no per-row Python or sort call."""
    columns = list(np.broadcast_arrays(*columns))
    for step in range(len(columns)):
        for i in range(step % 2, len(columns) - 1, 2):
            columns[i], columns[i + 1] = np.minimum(columns[i], columns[i + 1]), np.maximum(columns[i], columns[i + 1])
    return columns


# Kernels whose index arrays hold at least this many numbers keep them in a file beside their
# module (stored_tables), which a later import loads instead of building them again.
STORE_FROM_NUMBERS = 2**20


def _encode(value, arrays):
    """A table (nested tuples, lists, dicts, slices, ranges, numbers, arrays) as JSON, its arrays
    appended to `arrays`: integers in 32 bits where they fit, floats with few distinct values as
    codes into those values (each an exact copy; _decode restores the dtype)."""
    if isinstance(value, np.ndarray):
        node = {"a": len(arrays), "dtype": value.dtype.str, "shape": list(value.shape)}
        if value.dtype.kind == "i" and value.size and -2**31 <= value.min() and value.max() < 2**31:
            arrays.append(value.astype(np.int32))
        elif value.dtype.kind == "f" and value.size > 256:
            values, codes = np.unique(value, return_inverse=True)
            if len(values) > 255:
                arrays.append(value)
            else:
                arrays.append(codes.astype(np.uint8).reshape(value.shape))
                node["values"] = _encode(values, arrays)
        else:
            arrays.append(value)
        return node
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"v": value}
    if isinstance(value, (slice, range)):
        return {"slice" if isinstance(value, slice) else "range": [value.start, value.stop, value.step]}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, arrays), _encode(v, arrays)] for k, v in value.items()]}
    if isinstance(value, (tuple, list)):
        return {"tuple" if isinstance(value, tuple) else "list": [_encode(v, arrays) for v in value]}
    raise TypeError(f"cannot store a table of type {type(value).__name__}")


def _decode(node, arrays):
    """The table _encode wrote."""
    if "a" in node:
        array = arrays[f"a{node['a']}"]
        if "values" in node:
            array = _decode(node["values"], arrays)[array]
        return array.astype(np.dtype(node["dtype"])).reshape(node["shape"])
    if "v" in node:
        return node["v"]
    if "slice" in node:
        return slice(*node["slice"])
    if "range" in node:
        return range(*node["range"])
    if "dict" in node:
        return {_freeze(_decode(k, arrays)): _decode(v, arrays) for k, v in node["dict"]}
    items = [_decode(v, arrays) for v in node.get("tuple", node.get("list", ()))]
    return tuple(items) if "tuple" in node else items


def _freeze(key):
    """A dict key as it was (a tuple, not the list JSON would give)."""
    return tuple(map(_freeze, key)) if isinstance(key, (list, tuple)) else key


def _numbers(table):
    """How many numbers a table's arrays hold."""
    if isinstance(table, np.ndarray):
        return table.size
    if isinstance(table, dict):
        return sum(map(_numbers, table.values()))
    return sum(map(_numbers, table)) if isinstance(table, (tuple, list)) else 0


def stored_tables_path(module_file):
    """Where a module's stored index tables lie: beside it, <module>.tables.npz."""
    return os.path.splitext(module_file)[0] + ".tables.npz"


def _key(plan):
    """A plan's description as a hashable key, or None while a choice is undecided."""
    if plan.get("by_tangent") is None or plan.get("by_equation") is None:
        return None
    return tuple(repr(plan.get(name)) for name in _TABLE_KEYS)


class TaylorTables:
    """A kernel's index tables and the choices that follow from them (the backend's class
    sets TANGENT_FACTOR, EQUATION_THRESHOLD and PRODUCTS_BY_CLASSES)."""

    TANGENT_FACTOR = 1
    EQUATION_THRESHOLD = 1.0
    PRODUCTS_BY_CLASSES = False
    PARALLEL_WORK = None

    def __init__(self, plan):
        """plan: inputs, outputs, layer_sizes, activation, order, vertex_orders, requested
        (monomials, the constant () included; None for all up to order), equation ((c0, c1, c2)
        of sigma' = p(sigma), or None) and the choices by_tangent, by_equation (None: decide here)."""
        shared = _RECENT.get(_key(plan))
        if shared is not None:
            self.__dict__.update(shared)
            return
        self.INPUTS, self.OUTPUTS = plan["inputs"], plan["outputs"]
        self.LAYER_SIZES = tuple(plan["layer_sizes"])
        self.HIDDEN_LAYERS = len(self.LAYER_SIZES) - 2
        self.ACTIVATION, self.ORDER = plan["activation"], plan["order"]
        # Vertex orders k whose weight sigma^(k)/k! is not identically zero, up to ORDER.
        self._VERTEX_ORDERS = tuple(plan["vertex_orders"])
        requested = None if plan.get("requested") is None else tuple(map(tuple, plan["requested"]))
        self._EQUATION = None if plan.get("equation") is None else tuple(plan["equation"])  # (c0, c1, c2)
        by_tangent, by_equation = plan.get("by_tangent"), plan.get("by_equation")
        # The series carried through the layers: every non-constant monomial up to ORDER, or
        # the requested ones and their sub-monomials (the top order is then exactly the requested
        # monomials of order ORDER: other top-order products are not wanted).
        # _MONOMIALS[k]: the series' monomials of order k, (count, k), k = 0..ORDER (none of order 0).
        self._FULL = requested is None
        self._RANKS = {}  # _rank_tables per order, made once
        if self._FULL:
            self._MONOMIALS = [np.zeros((0, 0), dtype=np.int64)] + [_all_monomials(self.INPUTS, k) for k in range(1, self.ORDER + 1)]
        else:
            self._MONOMIALS = self._closure(requested)

        # _START[k]: first column of order >= k (columns come sorted by order).
        self._START = tuple(np.cumsum([0, 0] + [len(m) for m in self._MONOMIALS[1:]]).tolist())
        self._SERIES_SIZE = self._START[-1]

        # The keys of each order's monomials, increasing like their columns (_positions bisects them;
        # with every monomial a row's rank is computed instead).
        self._ORDER_KEYS = None if self._FULL else [self._keys(m) for m in self._MONOMIALS]

        # Per requested multi-index its column in [value, series...] (0 for the constant).
        self._REQUESTED_COLUMNS = (np.arange(1 + self._SERIES_SIZE) if requested is None
                                   else self._requested_columns(requested))

        # Columns below _LOW are pushed through the layers; the top order (columns from _LOW on)
        # is produced at the vertices against the output line instead (see _top_order).
        self._LOW = self._START[self.ORDER] if self.ORDER >= 2 else self._SERIES_SIZE

        self._FIRST_ORDER_COLUMNS = tuple(range(self._START[1], self._START[min(2, self.ORDER + 1)]))  # none at order 0

        self._FIRST_ORDER_VARIABLES = tuple(self._MONOMIALS[1][:, 0].tolist()) if self.ORDER >= 1 else ()

        # From order 3 the next-to-top order (ORDER - 1, columns _PUSHED to _LOW) is not pushed
        # through the layers either, where that saves rows: it reaches the top order only times a
        # first-order term (at a vertex, sigma'' Z_(ORDER-1) Z_c), so all it needs is made at the
        # vertices, its own coefficients against the output line g and its part of the top order
        # against the line's first-order series, the tangent d g / d x_c (_tangent_back): OUTPUTS x
        # first-order rows through every layer instead of its rows (forward-over-reverse, one order
        # deeper). Z keeps its rows, as zeros. Taken where TANGENT_FACTOR x the tangent's rows are
        # fewer than the next-to-top order's (the backend's factor).
        self._BY_TANGENT = by_tangent if by_tangent is not None else (self.ORDER >= 3 and 2 in self._VERTEX_ORDERS
                       and self.TANGENT_FACTOR * self.OUTPUTS * len(self._FIRST_ORDER_COLUMNS) < self._START[self.ORDER] - self._START[self.ORDER - 1])

        self._PUSHED = self._START[self.ORDER - 1] if self._BY_TANGENT else self._LOW

        # alpha! of each multi-index: derivatives are Taylor coefficients times alpha!.
        self._FACTORIALS = np.concatenate([[1.0], self._series_factorials()])[self._REQUESTED_COLUMNS]

        # Every split of a low-order column into two non-constant factors (_split_rows): the
        # rows of the powers' and the equation's products.
        self._SPLITS = self._split_rows()

        # Powers P_k carry low-order columns only up to k = ORDER - 1 (the top order is made at the vertices).
        self._POWER_TABLES = {k: self._power_table(k) for k in range(2, min(max(self._VERTEX_ORDERS, default=1), self.ORDER - 1) + 1)}

        self._TOP_BLOCKS = self._top_blocks()

        # The block non-zero at layer 1, (k, a) = (ORDER, ORDER - 1), folded into one matrix from a batch of 8.
        self._FIRST_LAYER_BLOCK = next((i for i, block in enumerate(self._TOP_BLOCKS) if block["first_layer"]), None)

        self._FOLD_FROM_BATCH = 8

        # The same columns in [value, series...] as the order-2 path (_series_by_points) writes it, the
        # top order in the series' own order; None where they are all, in order (the output is then
        # that array itself, not a gathered copy).
        self._SERIES_OUTPUTS = None if np.array_equal(self._REQUESTED_COLUMNS, np.arange(1 + self._SERIES_SIZE)) else self._REQUESTED_COLUMNS

        if self._EQUATION is not None:
            self._EQUATION_ROWS = self._equation_rows()
            # Per top-order block (rows of order a): the weight (ORDER - a)/ORDER of Q's rows in its left factor.
            self._EQUATION_TOP_WEIGHTS = [(self.ORDER - block["order"]) / self.ORDER for block in self._TOP_BLOCKS]

        # A compile-time choice, made from the tables. The equation does less work from order 5 on
        # (0.85 of the powers' at order 5, about 0.5 at order 8, whatever the inputs), about as much
        # at order 4 (1.00-1.09, toward 12/11 for many inputs), more at order 3 (1.3-1.5). It is
        # taken below this backend's threshold of that ratio (EQUATION_THRESHOLD).
        self._BY_EQUATION = by_equation if by_equation is not None else (self._EQUATION is not None and self._VERTEX_ORDERS == tuple(range(2, self.ORDER + 1))
                        and self._layer_work(True) < self.EQUATION_THRESHOLD * self._layer_work(False))

        self.MULTIPLY_ADDS = self._multiply_adds()

        # MULTIPLY_ADDS counts the path a CPU takes: from layer 2 on the activation's equation where
        # _BY_EQUATION (EQUATION_PATH). _MULTIPLY_ADDS_BY_POWERS counts the powers of Z, which run
        # instead elsewhere.
        self._MULTIPLY_ADDS_BY_POWERS = self.MULTIPLY_ADDS

        if self._BY_EQUATION:
            _elementwise = self.MULTIPLY_ADDS["elementwise"] - sum(self.LAYER_SIZES[2:-1]) * (self._layer_work(False) - self._layer_work(True))
            self.MULTIPLY_ADDS = {"gemm": self.MULTIPLY_ADDS["gemm"], "elementwise": _elementwise, "total": self.MULTIPLY_ADDS["gemm"] + _elementwise}

        _RECENT.clear()  # one kept: memory bounded by the largest kernel in use
        _RECENT[_key({**plan, "by_tangent": self._BY_TANGENT, "by_equation": self._BY_EQUATION})] = dict(vars(self))

    def _index_tables(self, module_file=None):
        """The index arrays only a kernel reads (the plan needs none of them): the top-order
        blocks' Gram entries summed by groups onto their coefficients, and where each requested
        multi-index lies in the kernel's output. module_file: the generated module's path, whose
        stored tables (stored_tables) are loaded where they were written for it."""
        self._BUILT, self._NESTED, self._BUILDING = {}, {}, 0
        self._STORE = self._load_store(module_file)

        self._TOP_GROUPS, self._TOP_ORDER = self._stored("top sums", self._top_sums)

        self._TOP_GROUP_ENDS = np.cumsum([len(group) for _, group, _, _ in self._TOP_GROUPS]).tolist()

        self._TOP_POSITION = self._stored("top position", lambda: np.argsort(self._TOP_ORDER))  # _TOP_ORDER[_TOP_POSITION[t]] = t

        # Where each requested multi-index lies in [value, low series..., top series (in _TOP_ORDER)...].
        self._OUTPUT_COLUMNS = np.concatenate([[0], 1 + np.arange(self._LOW), 1 + self._LOW + self._TOP_POSITION])[self._REQUESTED_COLUMNS]

    # ---------------------------------------------------------------------------------------
    # Stored tables: the large index arrays, built once at compile time and kept beside the
    # module, for a later import to load (written by the compiler, diagramc.compiler.cache).

    def _stored(self, name, build):
        """The table `name`: from the module's stored tables where they hold it, else built once
        (and kept for stored_tables where no other stored table is being built: a part of
        another is kept in _NESTED only while the kernel's tables are being made)."""
        for tables in (self._STORE or {}, self._BUILT):
            if name in tables:
                return tables[name]
        if name in self._NESTED:  # made as a part of another; wanted on its own, it is kept as well
            return self._NESTED[name] if self._BUILDING else self._BUILT.setdefault(name, self._NESTED.pop(name))
        self._BUILDING += 1
        try:
            value = build()
        finally:
            self._BUILDING -= 1
        (self._NESTED if self._BUILDING else self._BUILT)[name] = value
        return value

    def _identity(self, module_file):
        """What stored tables must have been written for: the module's text (its seal, the last
        line) and the code that builds the tables (every source file of this class's runtime bases)."""
        with open(module_file, "rb") as fh:
            digest = hashlib.sha256(fh.read().rstrip(b"\n").rsplit(b"\n", 1)[-1])
        for path in sorted({getattr(sys.modules[c.__module__], "__file__", None) or "" for c in type(self).__mro__[:-1]}):
            if path:
                with open(path, "rb") as fh:
                    digest.update(fh.read())
        return np.frombuffer(digest.digest(), dtype=np.uint8)

    def _load_store(self, module_file):
        """The module's stored tables as {name: table}, or None where there are none for it
        (missing, unreadable, or written for another text or runtime)."""
        self._STORE_IDENTITY = None
        if module_file is None:
            return None
        try:
            self._STORE_IDENTITY = self._identity(module_file)
            with np.load(stored_tables_path(module_file), allow_pickle=False) as arrays:
                if not np.array_equal(arrays["identity"], self._STORE_IDENTITY):
                    return None
                return {name: _decode(node, arrays) for name, node in json.loads(bytes(arrays["skeleton"]).decode()).items()}
        except (OSError, KeyError, ValueError):
            return None

    def _warm_tables(self):
        """Builds the tables a first call would (a backend's tables made at the call)."""

    def stored_tables(self):
        """The large index arrays this kernel built, with those it loaded, as the bytes of a .npz
        file for stored_tables_path(module file), or None where it built none worth storing
        (loaded them all, or they are small) or has no module file."""
        if self._STORE_IDENTITY is None or not self._BUILT:
            return None
        if self._STORE is not None or _numbers(self._BUILT) >= STORE_FROM_NUMBERS:  # a small kernel's are made fast enough
            self._warm_tables()
        self._NESTED.clear()  # the tables are made: their parts are no longer needed
        arrays = []
        skeleton = {name: _encode(value, arrays) for name, value in {**(self._STORE or {}), **self._BUILT}.items()}
        if self._STORE_IDENTITY is None or not self._BUILT or sum(a.size for a in arrays) < STORE_FROM_NUMBERS:
            return None
        buffer = io.BytesIO()
        np.savez(buffer, identity=self._STORE_IDENTITY, skeleton=np.frombuffer(json.dumps(skeleton).encode(), dtype=np.uint8),
                 **{f"a{i}": a for i, a in enumerate(arrays)})
        return buffer.getvalue()

    @functools.cached_property
    def _SERIES(self):
        """The series' monomials as tuples, column by column (for people and tests; the tables use _MONOMIALS)."""
        return tuple(m for rows in self._MONOMIALS for m in map(tuple, rows.tolist()))

    @functools.cached_property
    def MULTI_INDICES(self):
        """The requested multi-indices as exponent tuples, in the order of the kernel's output
        (made on first use: at 64 inputs, order 4, they are 814,385 tuples of 64 numbers)."""
        exponents = np.zeros((len(self._REQUESTED_COLUMNS), self.INPUTS), dtype=np.int64)
        for k, rows in enumerate(self._MONOMIALS):
            wanted = np.flatnonzero((self._REQUESTED_COLUMNS > self._START[k]) & (self._REQUESTED_COLUMNS <= self._START[k + 1]))
            for column in rows[self._REQUESTED_COLUMNS[wanted] - 1 - self._START[k]].T:
                np.add.at(exponents, (wanted, column), 1)
        return tuple(map(tuple, exponents.tolist()))

    # ---------------------------------------------------------------------------------------
    # Index tables, built once at import from the compact description above. Inside, a
    # multi-index is a monomial: its sorted tuple of variable indices, (2, 0, 1) -> (0, 0, 2).

    @staticmethod
    def _splits(beta):
        """Every way to write beta = alpha * gamma with alpha, gamma non-constant, as (alpha, gamma):
        by the order of gamma, then gamma (the order _split_rows lists them in)."""
        for r in range(1, len(beta)):
            for gamma in sorted(set(itertools.combinations(beta, r))):
                rest = list(beta)
                for i in gamma:
                    rest.remove(i)
                yield tuple(rest), gamma

    def _closure(self, monomials):
        """Every non-constant sub-monomial of a requested one, what the recursion needs: per order
        k = 0..ORDER its rows, (count, k), sorted."""
        closure = [np.zeros((0, 0), dtype=np.int64)]
        for k in range(1, self.ORDER + 1):
            rows = [np.array([m for m in monomials if len(m) == n], dtype=np.int64).reshape(-1, n)[:, list(positions)]
                    for n in range(k, self.ORDER + 1) for positions in itertools.combinations(range(n), k)]
            closure.append(np.unique(np.concatenate(rows).reshape(-1, k), axis=0))
        return closure

    def _column_of(self, rows, order):
        """The series' column of each row of one order (sorted variable indices), -1 where it is none."""
        position = self._positions(list(rows.T), len(rows), order)
        return np.where(position >= 0, self._START[order] + position, -1)

    def _positions(self, columns, size, order):
        """The position among the series' monomials of their order of each row given by its
        sorted columns (arrays of one shape; size: that shape for order 0), -1 where it is none.
        With every monomial in the series, a row's rank in the lexicographic order is a sum of
        table lookups (_RANKS, no search); else the rows' keys are bisected in _ORDER_KEYS."""
        if self._FULL:
            if order not in self._RANKS:
                self._RANKS[order] = self._rank_tables(order)
            ranks = self._RANKS[order]
            position = np.zeros(size, dtype=np.int64)
            previous = 0
            for table, column in zip(ranks, columns):
                position += table[column] - table[previous]
                previous = column
            return position
        keys, order_keys = self._column_keys(columns, size), self._ORDER_KEYS[order]
        position = np.searchsorted(order_keys, keys)
        return np.where(np.append(order_keys, -1)[position] == keys, position, -1)

    def _rank_tables(self, order):
        """Per position i of a sorted row of `order` indices, F_i[x]: how many monomials of that
        order come before the first whose index i is x, given the indices before i, summed from
        index 0 (F_i[x] = sum_(v < x) of the rows that continue from v: C(INPUTS - v + rest - 1, rest),
        rest = order - i - 1). A row's rank is sum_i F_i[c_i] - F_i[c_(i-1)], c_(-1) = 0."""
        return [np.concatenate([[0], np.cumsum([math.comb(self.INPUTS - x + order - i - 2, order - i - 1)
                                                for x in range(self.INPUTS)])]).astype(np.int64) for i in range(order)]

    def _requested_columns(self, requested):
        """Per requested monomial its column in [value, series...], 0 for the constant."""
        columns = np.zeros(len(requested), dtype=np.int64)
        for k in range(1, self.ORDER + 1):
            wanted = [i for i, m in enumerate(requested) if len(m) == k]
            columns[wanted] = 1 + self._column_of(np.array([requested[i] for i in wanted], dtype=np.int64).reshape(-1, k), k)
        return columns

    def _series_factorials(self):
        """alpha! of each column, as floats: per row the product, over its positions, of how many
        equal indices end there (a run of n equal indices multiplies 1, 2, ..., n)."""
        factorials = []
        for rows in self._MONOMIALS[1:]:
            run, product = np.zeros(len(rows), dtype=np.int64), np.ones(len(rows), dtype=np.int64)
            for i in range(rows.shape[1]):
                run = np.where(rows[:, i] == rows[:, i - 1], run + 1, 1) if i else run + 1
                product *= run
            factorials.append(product.astype(np.float64))
        return np.concatenate([np.zeros(0)] + factorials)

    def _split_rows(self):
        """Every split beta = alpha * gamma (alpha, gamma non-constant) of every low-order column
        beta, as arrays (target: beta's column, left: alpha's, right: gamma's, alpha's order), in
        the order _splits gives them column after column. A sub-monomial gamma of order r is a
        choice of r positions of beta's sorted row, counted once: where it takes an index it
        takes that index's first positions."""
        none = np.zeros(0, dtype=np.int64)
        found = [(none, none, none, none, none)]
        for m in range(2, self.ORDER):  # the low orders (none above order 1 at ORDER 1 or 2: _LOW is then the series)
            rows = self._MONOMIALS[m]
            for r in range(1, m):
                for positions in itertools.combinations(range(m), r):
                    rest = [p for p in range(m) if p not in positions]
                    first = np.ones(len(rows), dtype=bool)
                    for p in positions:
                        if p > 0 and p - 1 not in positions:
                            first &= rows[:, p] != rows[:, p - 1]
                    i = np.flatnonzero(first)
                    found.append((self._START[m] + i, np.full(len(i), r), self._column_of(rows[i][:, rest], m - r),
                                  self._column_of(rows[i][:, list(positions)], r), np.full(len(i), m - r)))
        target, r, left, right, alpha_order = map(np.concatenate, zip(*found))
        rows = np.lexsort((right, r, target))  # by beta, then gamma's order, then gamma
        return target[rows], left[rows], right[rows], alpha_order[rows]

    def _power_table(self, k):
        """Low-order part of one truncated product of series, P_k = P_(k-1) * Z.

        P_k is stored from column _START[k] on, up to _LOW. Row r: P_k[target[r]] +=
        P_(k-1)[left[r]] * Z[right[r]]; for k = 2 a pair and its mirror are one row counted
        twice, and squares come apart: P_2[target] += Z[column]**2. Returns (left, right, target,
        squares), squares as rows (column, target).
        """
        target, left, right, alpha_order = self._SPLITS
        rows = (target >= self._START[k]) & (alpha_order >= k - 1)  # P_(k-1) has no terms below order k - 1
        if k == 2:
            square = rows & (left == right)
            squares = np.stack([left[square], target[square] - self._START[k]], axis=1)
            rows &= left < right
        else:
            squares = np.zeros((0, 2), dtype=np.int64)
        return left[rows] - self._START[k - 1], right[rows], target[rows] - self._START[k], squares

    @staticmethod
    def _gram_pieces(n_rows, symmetric):
        """Row strips (r0, r1, c0) of a Gram block, each times the columns from c0 on. A
        symmetric block needs only the entries on and above its diagonal: strip s starts its
        columns at its own first row (2 strips do 3/4 of the work, 4 strips 5/8)."""
        strips = 1 if not symmetric or n_rows < 16 else 2 if n_rows < 256 else 4
        bounds = [n_rows * s // strips for s in range(strips + 1)]
        return tuple((r0, r1, r0 if symmetric else 0) for r0, r1 in zip(bounds, bounds[1:]))

    def _monomial_array(self, order):
        """The series' monomials of one order as rows of variable indices, (count, order)."""
        return self._MONOMIALS[order]

    def _keys(self, monomials):
        """Rows of variable indices (c_1, ..., c_n) as integers sum c_i INPUTS^(n - i): sorted rows
        of one order keep their order, so the series' columns can be found by bisection. Python
        integers where INPUTS^ORDER could pass 2^63 (a few requested multi-indices of many inputs)."""
        return self._column_keys(list(monomials.T), len(monomials))

    def _column_keys(self, columns, size):
        """_keys of rows given as their columns (arrays of one shape; size: that of a row-less key)."""
        dtype = np.int64 if self.INPUTS**self.ORDER < 2**63 else object
        key = np.zeros(size, dtype=dtype)
        for column in columns:
            key = key * self.INPUTS + column.astype(dtype)
        return key

    def _product_columns(self, alpha, gamma):
        """Column, counted from the first of its order, of the product of each row of alpha with
        each row of gamma, (len(alpha), len(gamma)); -1 where the product is no column (not
        requested)."""
        small = np.int16 if self.INPUTS < 2**15 else np.int64  # indices in few bytes: the sorting network moves less
        columns = [a[:, None].astype(small) for a in alpha.T] + [g[None, :].astype(small) for g in gamma.T]
        return self._positions(_sorted_rows(columns), (len(alpha), len(gamma)), alpha.shape[1] + gamma.shape[1])

    def _top_block(self, a, symmetric, first_layer, terms):
        """The top-order terms whose left factor has order a: the Gram matrix
        G[alpha, gamma] = sum_j g_j L[alpha, j] Z[gamma, j], |alpha| = a, |gamma| = ORDER - a,
        entry (alpha, gamma) adding to alpha * gamma. A symmetric block (L = sigma''/2 Z at
        2a = ORDER) is computed on and above its diagonal only, an entry above counting twice.

        Returns the rows (order a) and columns (order ORDER - a) as ranges of series columns,
        the pieces computed and each one's first entry (pieces numbered one after another)
        and their entries' count; _block_entries adds which entries add to which coefficient."""
        rows = range(self._START[a], self._START[a + 1])
        cols = range(self._START[self.ORDER - a], self._START[self.ORDER - a + 1])
        pieces = self._gram_pieces(len(rows), symmetric)
        sizes = [(r1 - r0) * (len(cols) - c0) for r0, r1, c0 in pieces]
        return {"order": a, "rows": rows, "cols": cols, "pieces": pieces,
                "piece_starts": tuple(np.cumsum([0] + sizes[:-1]).tolist()), "size": sum(sizes),
                "symmetric": symmetric, "first_layer": first_layer, "terms": terms}

    def _block_grid(self, a):
        """_product_columns of block a's rows (order a) and columns (order ORDER - a)."""
        return self._product_columns(self._monomial_array(a), self._monomial_array(self.ORDER - a))

    def _block_entries(self, block):
        """For the wanted entries of a block's pieces (numbered piece after piece) the coefficient
        each adds to (from _LOW): `entries`, `targets`; for layer 1's block `full_entries` number
        the whole rows x cols grid instead, as K needs them, and `full_targets`."""
        grid = self._block_grid(block["order"])
        r, c = np.indices(grid.shape, sparse=True)
        entries, targets = [], []
        for (r0, r1, c0), offset in zip(block["pieces"], block["piece_starts"]):
            piece = grid[r0:r1, c0:]
            wanted = piece >= 0
            if block["symmetric"]:  # nothing below the diagonal, twice above it
                wanted &= c[:, c0:] >= r[r0:r1]
                times = 1 + (c[:, c0:] > r[r0:r1]).astype(np.int64)[wanted]
                entries.append(np.repeat(offset + np.flatnonzero(wanted), times))
                targets.append(np.repeat(piece[wanted], times))
            else:
                entries.append(offset + np.flatnonzero(wanted))
                targets.append(piece[wanted])
        full_entries = np.flatnonzero(grid >= 0) if block["first_layer"] else np.zeros(0, dtype=np.int64)
        return {"entries": np.concatenate(entries), "targets": np.concatenate(targets),
                "full_entries": full_entries, "full_targets": grid.ravel()[full_entries]}

    def _entries_of(self, i):
        """_block_entries of block i of _TOP_BLOCKS."""
        return self._stored(f"block {i}", lambda: self._block_entries(self._TOP_BLOCKS[i]))

    def _first_layer_entries(self):
        """(full_entries, full_targets) of _FIRST_LAYER_BLOCK: layer 1's Gram entries and their coefficients."""
        return self._stored("first layer entries", lambda: tuple(self._entries_of(self._FIRST_LAYER_BLOCK)[name]
                                                                 for name in ("full_entries", "full_targets")))

    def _top_blocks(self):
        """One block per order a = 1..ORDER-1 of the left factor. sigma^(k)/k! Z^k = sigma^(k)/k! P_(k-1) Z
        adds its term to block a through P_(k-1)'s order-a part (k - 1 <= a), so each block is one
        Gram matrix however many k share it. For k = 2 (P_1 = Z) block (a, ORDER - a) stands for
        its mirror too: the term is in blocks a <= ORDER / 2 only, twice below the middle. A block
        none of whose products is a column (of requested multi-indices only) is left out."""
        blocks = []
        for a in range(1 + self._BY_TANGENT, self.ORDER):  # by the tangent, block 1's columns (Z's next-to-top rows) are zeros
            terms = tuple(
                (k, 2.0 if k == 2 and 2 * a < self.ORDER else 1.0)
                for k in self._VERTEX_ORDERS if k - 1 <= a and (k != 2 or 2 * a <= self.ORDER)
            )
            if not terms:
                continue
            if self._FULL or (self._block_grid(a) >= 0).any():  # with all monomials every product is one
                blocks.append(self._top_block(a, terms == ((2, 1.0),), terms[-1][0] == self.ORDER, terms))
        return blocks

    @staticmethod
    def _group_by_count(left, right, target):
        """A sum table as dense groups: targets grouped by their number of terms, so that each
        group is one gather and one sum. Row r adds left[r] (times right[r]) to target[r] >= 0.
        Returns (count, targets, lefts, rights) per group, by count: the targets in the order
        they first appear, each with its rows in order (rights None without right)."""
        target = np.asarray(target, dtype=np.int64)
        counts = np.bincount(target)
        first = np.full(len(counts), len(target))
        np.minimum.at(first, target, np.arange(len(target)))  # each target's first row
        rows = np.argsort(counts[target] * len(target) + first[target], kind="stable")  # by count, then target
        count = counts[target[rows]]
        left = np.asarray(left, dtype=np.int64)[rows]
        right = None if right is None else np.asarray(right, dtype=np.int64)[rows]
        groups = []
        for n in np.unique(counts[counts > 0]).tolist():
            group = slice(np.searchsorted(count, n), np.searchsorted(count, n, side="right"))
            groups.append((n, target[rows[group][::n]], left[group], None if right is None else right[group]))
        return groups

    def _gram_sums(self):
        """(entries, weights, targets): the Gram matrix's entries on and above its diagonal that
        add to the top order, flat in the _LOW x _LOW matrix, weighted twice above the diagonal
        (the entry below stands for itself), and the top-order coefficient, in the series' order,
        each adds to (one entry per coefficient: x_r x_c is made by one pair r <= c)."""
        grid = self._product_columns(self._monomial_array(1), self._monomial_array(1))
        r, c = np.indices(grid.shape)
        wanted = (grid >= 0) & (c >= r)
        return (r * self._LOW + c)[wanted], np.where(c > r, 2.0, 1.0)[wanted] * self._TOP_BLOCKS[0]["terms"][-1][1], grid[wanted]

    def _tangent_entries(self):
        """The tangent's Gram entries G[c, a] = sum_j t_c N_a (first-order column c, next-to-top
        column a) that reach the top order, flat in that grid, and the position in _TOP_ORDER of
        the coefficient x_c a each adds to."""
        def build():
            grid = self._product_columns(self._monomial_array(1), self._monomial_array(self.ORDER - 1)).ravel()
            entries = np.flatnonzero(grid >= 0)
            return entries, self._TOP_POSITION[grid[entries]]
        return self._stored("tangent entries", build)

    def _tangent_sums(self):
        """_tangent_entries in groups (_group_by_count)."""
        return self._stored("tangent sums", lambda: self._group_by_count(self._tangent_entries()[0], None, self._tangent_entries()[1]))

    def _top_sums(self):
        """All blocks' Gram entries, laid end to end, summed onto the top-order coefficients
        in groups (_group_by_count). The top order is kept in the order the groups make it
        (coefficients no block reaches come last, as zeros): _TOP_POSITION maps it back."""
        none = np.zeros(0, dtype=np.int64)
        offsets = np.cumsum([0] + [block["size"] for block in self._TOP_BLOCKS])
        blocks = [self._entries_of(i) for i in range(len(self._TOP_BLOCKS))]
        entries = np.concatenate([none] + [start + block["entries"] for start, block in zip(offsets, blocks)])
        targets = np.concatenate([none] + [block["targets"] for block in blocks])
        groups = self._group_by_count(entries, None, targets)
        reached = np.concatenate([none] + [group for _, group, _, _ in groups])
        unreached = np.setdiff1d(np.arange(self._SERIES_SIZE - self._LOW), reached, assume_unique=True)
        return groups, np.concatenate([reached, unreached])

    def _powers_work(self):
        """Elementwise multiply-adds per unit of width of a hidden layer by the powers of Z: (its
        series through the activation: products and weighted sums; the top-order blocks' weighted
        terms, per output)."""
        series = self._LOW + sum(len(left) + len(squares) + (max(self._LOW - self._START[k], 0) if k in self._VERTEX_ORDERS else 0)
                            for k, (left, _, _, squares) in self._POWER_TABLES.items())
        return series, sum(len(block["terms"]) * len(block["rows"]) for block in self._TOP_BLOCKS)


    # sigma' = p(sigma) with p(s) = c0 + c1 s + c2 s^2 (tanh, sigmoid). From layer 2 on, where it
    # is cheaper (_BY_EQUATION), the series S of sigma(z + Z) follows that equation degree by
    # degree, as Taylor mode (JAX's jet) does. With Q = p(S), the series of sigma'(z + Z):
    #     m S_m = sum_(j=1..m) j Z_j Q_(m-j)     Q_m = p'(sigma) S_m + c2 (S S)_m
    # (the Euler operator, E S = Q E Z, taken degree by degree): two truncated products in all,
    # where the vertex sum needs one per power Z^k. The top order's blocks then weight Q:
    # S_ORDER = sigma' Z_ORDER + sum_a (ORDER - a)/ORDER Q_a Z_(ORDER-a).

    def _equation_rows(self):
        """The two products' rows as arrays (target, left, right, weight), for every low-order
        target t: S[t] gets weight Z[left] Q[right] over t's splits alpha * gamma (weight
        |alpha| / |t|); Q[t] gets weight S[left] S[right] over its unordered splits (c2, twice
        off the diagonal)."""
        target, left, right, alpha_order = self._SPLITS
        target_order = np.searchsorted(self._START, target, side="right") - 1
        q = left <= right
        return ((target, left, right, alpha_order / target_order),
                (target[q], left[q], right[q], self._EQUATION[2] * np.where(left[q] == right[q], 1.0, 2.0)))

    def _layer_work(self, by_equation):
        """Elementwise multiply-adds per unit of width at a hidden layer from 2 on, for the
        activation's series and the top-order blocks' left factors (the rest is the same either way)."""
        if by_equation:
            return 2 * self._LOW + sum(len(rows[0]) for rows in self._EQUATION_ROWS) + sum(len(block["rows"]) for block in self._TOP_BLOCKS)
        return sum(self._powers_work())

    def points_per_thread(self, by_points):
        """The fewest points a thread takes when a call splits its batch (PARALLEL_WORK
        multiply-adds at least); None where a call does not split: a backend whose operations
        use the cores themselves, and below order 3 but point by point (by_points). A part is
        one compiled call (the point-by-point loop, or from order 3 the compiled chunks); a
        chunk driven from Python makes about fifty calls, and two threads would queue for the
        GIL between them."""
        if self.PARALLEL_WORK is None or not (by_points or self.ORDER >= 3):
            return None
        return max(1, -(-self.PARALLEL_WORK // max(self.MULTIPLY_ADDS["total"], 1)))

    def _chunk_size(self, elements):
        """Points per chunk of a call: about `elements` numbers in its series and Gram matrices,
        a cache-sized working set that bounds a call's memory whatever its batch (a power of 2,
        at least 1)."""
        return 2 ** max(0, round(math.log2(elements / max(self._numbers_per_point(), 1))))

    def _numbers_per_point(self):
        """Numbers a point holds at once: the widest layer's series and the Gram matrices."""
        return self._LOW * max(self.LAYER_SIZES[1:-1], default=1) + self.OUTPUTS * sum(block["size"] for block in self._TOP_BLOCKS)

    def _multiply_adds(self):
        """Multiply-adds per batch element of one call, as matrix products and elementwise work.

        Per hidden layer of width w: the series (S = _LOW columns) through the activation and
        its _PUSHED columns through the next Linear layer; for the top order each block's
        weighting and Gram matrix plus the reverse sweep, at layer 1 only t @ K.T (K is made
        once per call); by the tangent, the next-to-top order against the line, its Gram matrix
        with the tangent (below the last hidden layer) and the tangent's sweep.
        """
        gemm, elementwise = self.LAYER_SIZES[0] * self.LAYER_SIZES[1], 0
        series, top_terms = self._powers_work()
        top_rows = sum(len(block["rows"]) for block in self._TOP_BLOCKS)
        tangent_rows, next_columns = self.OUTPUTS * len(self._FIRST_ORDER_COLUMNS), self._LOW - self._PUSHED
        for layer, (w_prev, w, w_next) in enumerate(zip(self.LAYER_SIZES[:-2], self.LAYER_SIZES[1:-1], self.LAYER_SIZES[2:])):
            elementwise += series * w
            gemm += self._PUSHED * w * w_next + w * w_next
            if self._BY_TANGENT:
                gemm += self.OUTPUTS * next_columns * w + (tangent_rows * next_columns * w if layer < self.HIDDEN_LAYERS - 1 else 0)
                if layer > 0:  # the tangent one layer down: (g sigma'' Z_c (+ t sigma')) W
                    elementwise += (2 if layer == self.HIDDEN_LAYERS - 1 else 3) * tangent_rows * w
                    gemm += tangent_rows * w * w_prev
            if layer == 0:
                gemm += self.OUTPUTS * (self._SERIES_SIZE - self._LOW) * w if self._FIRST_LAYER_BLOCK is not None else 0
                continue
            elementwise += (top_terms + self.OUTPUTS * top_rows) * w
            for block in self._TOP_BLOCKS:
                gemm += self.OUTPUTS * block["size"] * w
            if self._TOP_BLOCKS:
                gemm += self.OUTPUTS * w * w_prev
        return {"gemm": gemm, "elementwise": elementwise, "total": gemm + elementwise}



    def _buckets(self, index, left, right, target, position=None, groups=None):
        """_group_by_count's groups (or `groups`, made so) as the backend's index arrays (targets through `position`)."""
        return [
            {
                "terms": count,
                "targets": index(group if position is None else position[group]),
                "left": index(lefts),
                **({"right": index(rights)} if right is not None else {}),
            }
            for count, group, lefts, rights in (self._group_by_count(left, right, target) if groups is None else groups)
        ]

    @staticmethod
    def _run_or_index(index, seq):
        """A slice where seq is a run of consecutive integers (a view, not a gather), else index(seq)."""
        if len(seq) and tuple(seq) == tuple(range(seq[0], seq[0] + len(seq))):
            return slice(seq[0], seq[0] + len(seq))
        return index(seq)

    def _build_tables(self, index):
        """Every index table as the backend's integer arrays (index: list -> array)."""
        return {
            "powers": {
                k: {
                    "size": max(self._LOW - self._START[k], 0),
                    **({name: [(rows, columns, index(target)) for rows, columns, target in self._power_classes(k, one_point)]
                        for name, one_point in (("classes", False), ("one point", True))} if self.PRODUCTS_BY_CLASSES else {
                        "scale": 2.0 if k == 2 else 1.0,
                        "buckets": self._buckets(index, left, right, target),
                        "square_columns": index(np.ascontiguousarray(squares[:, 0])),  # gathers read contiguous indices faster
                        "square_targets": index(np.ascontiguousarray(squares[:, 1])),
                    }),
                }
                for k, (left, right, target, squares) in self._POWER_TABLES.items()
            },
            "top": [  # per block: its terms (k, scale, rows of P_(k-1)), columns of Z, pieces
                (tuple((k, scale, slice(block["rows"].start - self._START[k - 1], block["rows"].stop - self._START[k - 1]))
                       for k, scale in block["terms"]),
                 slice(block["cols"].start, block["cols"].stop), block["pieces"])
                for block in self._TOP_BLOCKS
            ],
            # term-major (term i of every target, then term i + 1): the sum runs over long rows
            "top_sums": [{"terms": count, "left": index(lefts.reshape(-1, count).T.ravel()),
                          "targets": slice(start - len(group), start)}  # _TOP_ORDER lists the groups' targets in turn
                         for start, (count, group, lefts, _) in zip(self._TOP_GROUP_ENDS, self._TOP_GROUPS)],
            "tangent_sums": [{"terms": count, "left": index(lefts.reshape(-1, count).T.ravel()), "targets": index(group)}
                             for count, group, lefts, _ in (self._tangent_sums() if self._BY_TANGENT else ())],
            "top_unreached": slice(self._TOP_GROUP_ENDS[-1] if self._TOP_GROUPS else 0, len(self._TOP_ORDER)),
            "first_layer_sums": None if self._FIRST_LAYER_BLOCK is None else self._buckets(
                index, None, None, None, self._TOP_POSITION,
                self._stored("first layer sums", lambda: self._group_by_count(self._first_layer_entries()[0], None, self._first_layer_entries()[1]))),
            "first_order_columns": self._run_or_index(index, self._FIRST_ORDER_COLUMNS),
            "first_order_variables": self._run_or_index(index, self._FIRST_ORDER_VARIABLES),
            "outputs": index(self._OUTPUT_COLUMNS),
            "series_outputs": None if self._SERIES_OUTPUTS is None else index(self._SERIES_OUTPUTS),
        }
