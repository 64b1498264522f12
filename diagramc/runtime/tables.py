"""The index tables of a Taylor kernel: which products of series a kernel computes, and where
each term goes, built from the request's compact description (sizes, order, multi-indices).

Inside, a multi-index is a monomial: its sorted tuple of variable indices, (2, 0, 1) -> (0, 0, 2).
The compiler reads the same tables for its plan (strategy choices, work counts); a generated
module builds them at import from the plan it was written with.
"""
import itertools
import math

import numpy as np


_TABLE_KEYS = ("inputs", "outputs", "layer_sizes", "activation", "order", "vertex_orders", "requested", "equation",
               "by_tangent", "by_equation")
# The tables built last, by their description: the plan made at compile time and the module
# imported right after it in the same process share them (large tables take seconds).
_RECENT = {}


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
        self._REQUESTED = None if plan.get("requested") is None else tuple(map(tuple, plan["requested"]))
        self._EQUATION = None if plan.get("equation") is None else tuple(plan["equation"])  # (c0, c1, c2)
        by_tangent, by_equation = plan.get("by_tangent"), plan.get("by_equation")
        # The series carried through the layers: every non-constant monomial up to ORDER, or
        # the requested ones and their sub-monomials (the top order is then exactly the requested
        # monomials of order ORDER: other top-order products are not wanted).
        if self._REQUESTED is None:
            self._SERIES = self._monomials_up_to(self.ORDER)
            self._REQUESTED = ((),) + self._SERIES
        else:
            self._SERIES = self._closure(self._REQUESTED)
        self.MULTI_INDICES = tuple(self._exponents(m) for m in self._REQUESTED)

        self._COLUMN = {m: j for j, m in enumerate(self._SERIES)}

        # _START[k]: first column of order >= k (columns come sorted by order).
        self._START = tuple(
            next((j for j, m in enumerate(self._SERIES) if len(m) >= k), len(self._SERIES)) for k in range(self.ORDER + 2)
        )

        # Columns below _LOW are pushed through the layers; the top order (columns from _LOW on)
        # is produced at the vertices against the output line instead (see _top_order).
        self._LOW = self._START[self.ORDER] if self.ORDER >= 2 else len(self._SERIES)

        self._FIRST_ORDER_COLUMNS = tuple(j for j, m in enumerate(self._SERIES) if len(m) == 1)

        self._FIRST_ORDER_VARIABLES = tuple(m[0] for m in self._SERIES if len(m) == 1)

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
        self._FACTORIALS = np.array([float(math.prod(map(math.factorial, filter(None, alpha)))) for alpha in self.MULTI_INDICES])

        # The keys of the top-order monomials, increasing like their columns (from _LOW).
        self._TOP_KEYS = self._keys(self._monomial_array(self.ORDER)) if self.ORDER >= 2 else np.zeros(0, dtype=np.int64)

        # Powers P_k carry low-order columns only up to k = ORDER - 1 (the top order is made at the vertices).
        self._POWER_TABLES = {k: self._power_table(k) for k in range(2, min(max(self._VERTEX_ORDERS, default=1), self.ORDER - 1) + 1)}

        self._TOP_BLOCKS = self._top_blocks()

        # The block non-zero at layer 1, (k, a) = (ORDER, ORDER - 1), folded into one matrix from a batch of 8.
        self._FIRST_LAYER_BLOCK = next((i for i, block in enumerate(self._TOP_BLOCKS) if block["first_layer"]), None)

        self._FOLD_FROM_BATCH = 8

        self._TOP_GROUPS, self._TOP_ORDER = self._top_sums()

        self._TOP_GROUP_ENDS = np.cumsum([len(group) for _, group, _, _ in self._TOP_GROUPS]).tolist()

        self._TOP_POSITION = np.argsort(self._TOP_ORDER)  # _TOP_ORDER[_TOP_POSITION[t]] = t

        # Where each requested multi-index lies in [value, low series..., top series (in _TOP_ORDER)...].
        self._OUTPUT_COLUMNS = np.concatenate([[0], 1 + np.arange(self._LOW), 1 + self._LOW + self._TOP_POSITION])[
            [1 + self._COLUMN[m] if m else 0 for m in self._REQUESTED]
        ]

        # The same columns in [value, series...] as the order-2 path (_series_by_points) writes it, the
        # top order in the series' own order; None where they are all, in order (the output is then
        # that array itself, not a gathered copy).
        self._SERIES_OUTPUTS = np.array([1 + self._COLUMN[m] if m else 0 for m in self._REQUESTED], dtype=np.int64)

        self._SERIES_OUTPUTS = None if np.array_equal(self._SERIES_OUTPUTS, np.arange(1 + len(self._SERIES))) else self._SERIES_OUTPUTS

        if self._EQUATION is not None:
            self._EQUATION_ROWS = self._equation_rows()
            # Per top-order block (rows of order a): the weight (ORDER - a)/ORDER of Q's rows in its left factor.
            self._EQUATION_TOP_WEIGHTS = [(self.ORDER - len(self._SERIES[block["rows"].start])) / self.ORDER
                                          for block in self._TOP_BLOCKS]

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

    # ---------------------------------------------------------------------------------------
    # Index tables, built once at import from the compact description above. Inside, a
    # multi-index is a monomial: its sorted tuple of variable indices, (2, 0, 1) -> (0, 0, 2).

    def _exponents(self, monomial):
        alpha = [0] * self.INPUTS
        for i in monomial:
            alpha[i] += 1
        return tuple(alpha)

    def _monomials_up_to(self, order):
        """Every monomial of orders 1..order, in the canonical order."""
        return tuple(
            m for k in range(1, order + 1) for m in itertools.combinations_with_replacement(range(self.INPUTS), k)
        )

    @staticmethod
    def _splits(beta):
        """Every way to write beta = alpha * gamma with alpha, gamma non-constant, as (alpha, gamma)."""
        for r in range(1, len(beta)):
            for gamma in sorted(set(itertools.combinations(beta, r))):
                rest = list(beta)
                for i in gamma:
                    rest.remove(i)
                yield tuple(rest), gamma

    def _closure(self, monomials):
        """Every non-constant sub-monomial of a requested one: what the recursion needs."""
        found = set()
        for m in monomials:
            for r in range(1, len(m) + 1):
                found.update(itertools.combinations(m, r))
        return tuple(sorted(found, key=lambda m: (len(m), m)))

    def _power_table(self, k):
        """Low-order part of one truncated product of series, P_k = P_(k-1) * Z.

        P_k is stored from column _START[k] on, up to _LOW. Row r: P_k[target[r]] +=
        P_(k-1)[left[r]] * Z[right[r]]; for k = 2 a pair and its mirror are one row counted
        twice, and squares come apart: P_2[target] += Z[column]**2.
        """
        left, right, target, squares = [], [], [], []
        for j in range(self._START[k], self._LOW):
            for alpha, gamma in self._splits(self._SERIES[j]):
                if len(alpha) < k - 1:  # P_(k-1) has no terms below order k - 1
                    continue
                if k == 2 and alpha == gamma:
                    squares.append((self._COLUMN[alpha], j - self._START[k]))
                elif k != 2 or self._COLUMN[alpha] < self._COLUMN[gamma]:
                    left.append(self._COLUMN[alpha] - self._START[k - 1])
                    right.append(self._COLUMN[gamma])
                    target.append(j - self._START[k])
        return left, right, target, squares

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
        return np.array(self._SERIES[self._START[order] : self._START[order + 1]], dtype=np.int64).reshape(-1, order)

    def _keys(self, monomials):
        """Rows of variable indices (c_1, ..., c_n) as integers sum c_i INPUTS^(n - i): sorted rows
        of one order keep their order, so the series' columns can be found by bisection. Python
        integers where INPUTS^ORDER could pass 2^63 (a few requested multi-indices of many inputs)."""
        dtype = np.int64 if self.INPUTS**self.ORDER < 2**63 else object
        key = np.zeros(len(monomials), dtype=dtype)
        for column in monomials.T:
            key = key * self.INPUTS + column.astype(dtype)
        return key

    def _product_columns(self, alpha, gamma, order_keys=None):
        """Column, counted from the first of its order, of the product of each row of alpha with
        each row of gamma, (len(alpha), len(gamma)); -1 where the product is no column (not
        requested). order_keys: _keys of the product's order (the top order by default)."""
        products = np.concatenate([np.repeat(alpha, len(gamma), axis=0), np.tile(gamma, (len(alpha), 1))], axis=1)
        keys = self._keys(np.sort(products, axis=1))
        order_keys = self._TOP_KEYS if order_keys is None else order_keys
        position = np.searchsorted(order_keys, keys)
        columns = np.where(np.append(order_keys, -1)[position] == keys, position, -1)
        return columns.reshape(len(alpha), len(gamma))

    def _top_block(self, a, symmetric, grid, first_layer):
        """The top-order terms whose left factor has order a: the Gram matrix
        G[alpha, gamma] = sum_j g_j L[alpha, j] Z[gamma, j], |alpha| = a, |gamma| = ORDER - a,
        entry (alpha, gamma) adding to alpha * gamma. A symmetric block (L = sigma''/2 Z at
        2a = ORDER) is computed on and above its diagonal only, an entry above counting twice.

        Returns the rows (order a) and columns (order ORDER - a) as ranges of series columns,
        the pieces computed and each one's first entry, and for the wanted entries of the pieces (numbered piece after
        piece) the coefficient each adds to (from _LOW); for layer 1's block `full_entries`
        number the whole rows x cols grid instead, as K needs them. `grid` is
        _product_columns of the rows and columns."""
        rows = range(self._START[a], self._START[a + 1])
        cols = range(self._START[self.ORDER - a], self._START[self.ORDER - a + 1])
        pieces = self._gram_pieces(len(rows), symmetric)
        r, c = np.indices(grid.shape, sparse=True)
        entries, targets, starts, offset = [], [], [], 0
        for r0, r1, c0 in pieces:
            piece = grid[r0:r1, c0:]
            wanted = piece >= 0
            times = np.ones(piece.shape, dtype=np.int64)
            if symmetric:  # nothing below the diagonal, twice above it
                wanted &= c[:, c0:] >= r[r0:r1]
                times += c[:, c0:] > r[r0:r1]
            entries.append(np.repeat(offset + np.flatnonzero(wanted), times[wanted]))
            targets.append(np.repeat(piece[wanted], times[wanted]))
            starts.append(offset)
            offset += piece.size
        full_entries = np.flatnonzero(grid >= 0) if first_layer else np.zeros(0, dtype=np.int64)
        return {"rows": rows, "cols": cols, "pieces": pieces, "piece_starts": tuple(starts), "size": offset,
                "entries": np.concatenate(entries),
                "targets": np.concatenate(targets), "full_entries": full_entries,
                "full_targets": grid.ravel()[full_entries], "symmetric": symmetric, "first_layer": first_layer}

    def _top_blocks(self):
        """One block per order a = 1..ORDER-1 of the left factor. sigma^(k)/k! Z^k = sigma^(k)/k! P_(k-1) Z
        adds its term to block a through P_(k-1)'s order-a part (k - 1 <= a), so each block is one
        Gram matrix however many k share it. For k = 2 (P_1 = Z) block (a, ORDER - a) stands for
        its mirror too: the term is in blocks a <= ORDER / 2 only, twice below the middle."""
        blocks = []
        for a in range(1 + self._BY_TANGENT, self.ORDER):  # by the tangent, block 1's columns (Z's next-to-top rows) are zeros
            terms = tuple(
                (k, 2.0 if k == 2 and 2 * a < self.ORDER else 1.0)
                for k in self._VERTEX_ORDERS if k - 1 <= a and (k != 2 or 2 * a <= self.ORDER)
            )
            if not terms:
                continue
            grid = self._product_columns(self._monomial_array(a), self._monomial_array(self.ORDER - a))
            block = self._top_block(a, terms == ((2, 1.0),), grid, first_layer=terms[-1][0] == self.ORDER)
            if len(block["entries"]):
                blocks.append(dict(block, terms=terms))
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
        grid = self._product_columns(self._monomial_array(1), self._monomial_array(self.ORDER - 1)).ravel()
        entries = np.flatnonzero(grid >= 0)
        return entries, self._TOP_POSITION[grid[entries]]

    def _tangent_sums(self):
        """_tangent_entries in groups (_group_by_count)."""
        entries, positions = self._tangent_entries()
        return self._group_by_count(entries, None, positions)

    def _top_sums(self):
        """All blocks' Gram entries, laid end to end, summed onto the top-order coefficients
        in groups (_group_by_count). The top order is kept in the order the groups make it
        (coefficients no block reaches come last, as zeros): _TOP_POSITION maps it back."""
        none = np.zeros(0, dtype=np.int64)
        offsets = np.cumsum([0] + [block["size"] for block in self._TOP_BLOCKS])
        entries = np.concatenate([none] + [start + block["entries"] for start, block in zip(offsets, self._TOP_BLOCKS)])
        targets = np.concatenate([none] + [block["targets"] for block in self._TOP_BLOCKS])
        groups = self._group_by_count(entries, None, targets)
        reached = np.concatenate([none] + [group for _, group, _, _ in groups])
        unreached = np.setdiff1d(np.arange(len(self._SERIES) - self._LOW), reached, assume_unique=True)
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
        """The two products' rows (target, left, right, weight), for every low-order target t:
        S[t] gets weight Z[left] Q[right] over t's splits alpha * gamma (weight |alpha| / |t|);
        Q[t] gets weight S[left] S[right] over its unordered splits (c2, twice off the diagonal)."""
        s_rows, q_rows = [], []
        for t, beta in enumerate(self._SERIES[:self._LOW]):
            for alpha, gamma in self._splits(beta):
                s_rows.append((t, self._COLUMN[alpha], self._COLUMN[gamma], len(alpha) / len(beta)))
                if self._COLUMN[alpha] <= self._COLUMN[gamma]:
                    q_rows.append((t, self._COLUMN[alpha], self._COLUMN[gamma], self._EQUATION[2] * (1.0 if alpha == gamma else 2.0)))
        return s_rows, q_rows

    def _layer_work(self, by_equation):
        """Elementwise multiply-adds per unit of width at a hidden layer from 2 on, for the
        activation's series and the top-order blocks' left factors (the rest is the same either way)."""
        if by_equation:
            return 2 * self._LOW + sum(map(len, self._EQUATION_ROWS)) + sum(len(block["rows"]) for block in self._TOP_BLOCKS)
        return sum(self._powers_work())

    def points_per_thread(self):
        """The fewest points a thread takes when a call splits its batch (PARALLEL_WORK
        multiply-adds at least); None where the backend does not split (its operations use
        the cores themselves)."""
        if self.PARALLEL_WORK is None:
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
                gemm += self.OUTPUTS * (len(self._SERIES) - self._LOW) * w if self._FIRST_LAYER_BLOCK is not None else 0
                continue
            elementwise += (top_terms + self.OUTPUTS * top_rows) * w
            for block in self._TOP_BLOCKS:
                gemm += self.OUTPUTS * block["size"] * w
            if self._TOP_BLOCKS:
                gemm += self.OUTPUTS * w * w_prev
        return {"gemm": gemm, "elementwise": elementwise, "total": gemm + elementwise}



    def _buckets(self, index, left, right, target, position=None):
        """_group_by_count's groups as the backend's index arrays (targets through `position`)."""
        return [
            {
                "terms": count,
                "targets": index(group if position is None else position[group]),
                "left": index(lefts),
                **({"right": index(rights)} if right is not None else {}),
            }
            for count, group, lefts, rights in self._group_by_count(left, right, target)
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
                        "square_columns": index([c for c, _ in squares]),
                        "square_targets": index([t for _, t in squares]),
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
                index, self._TOP_BLOCKS[self._FIRST_LAYER_BLOCK]["full_entries"], None,
                self._TOP_BLOCKS[self._FIRST_LAYER_BLOCK]["full_targets"], self._TOP_POSITION),
            "first_order_columns": self._run_or_index(index, self._FIRST_ORDER_COLUMNS),
            "first_order_variables": self._run_or_index(index, self._FIRST_ORDER_VARIABLES),
            "outputs": index(self._OUTPUT_COLUMNS),
            "series_outputs": None if self._SERIES_OUTPUTS is None else index(self._SERIES_OUTPUTS),
        }
