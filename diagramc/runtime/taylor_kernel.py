"""The Taylor kernel's algorithm, the same for every backend: the series of each layer's
pre-activation around x, truncated at the kernel's order, pushed through the layers, and the
top order made at the vertices against the output line. A backend's class supplies the
primitives (products, gathers, fused loops); a generated module supplies the activation.
"""

from .tables import TaylorTables


class TaylorKernel(TaylorTables):
    """The shared algorithm. Subclasses set FUSED_LOOPS and define the primitives."""

    FUSED_LOOPS = False
    _LINE_ROWS = False

    def __init__(self, plan, activation, module_file=None):
        """plan: see TaylorTables; activation(z) -> (sigma(z), (sigma^(k)(z)/k! for k = 1..ORDER,
        None where identically zero)); module_file: the generated module's path (its stored tables)."""
        super().__init__(plan)
        self._index_tables(module_file)
        self._activation = activation
        # The low series' orders that have columns: 1 to ORDER - 1 (order 1 alone at ORDER 1, none at 0).
        self._FIRST_LAYER_ORDERS = tuple(k for k in range(1, self.ORDER if self.ORDER >= 2 else self.ORDER + 1) if self._START[k] < self._START[k + 1])

        self._KEPT_FIRST_LAYER = [None]  # [(copy of W1, layer 1's powers, K or None)] from the last call that could keep them

        self._FOLD_MAX_NUMBERS = 2**24

    # ---------------------------------------------------------------------------------------
    # The kernel, the same for every backend. A series is stored coefficient-major, (columns,
    # batch, width): gathers move whole rows, and a Linear layer is one matrix product.

    def _summed(self, terms, bucket):
        """A bucket's terms, `bucket["terms"]` consecutive rows per target, summed per target."""
        count = bucket["terms"]
        return terms if count == 1 else terms.reshape((-1, count) + terms.shape[1:]).sum(1)

    def _powers(self, Z, tables):
        """The truncated powers [Z, P_2, P_3, ...] of a series (P_k from column _START[k] on)."""
        powers = [Z]
        for table in tables["powers"].values():
            powers.append(self._product(powers[-1], Z, table))
        return powers

    def _add_scaled(self, H, start, f, P):
        """H[start:] += f * P, in place (autograd records it: nothing saved H)."""
        if self._fuses(H, f, P):
            self._fused_add_scaled(H, start, f, P)
            return
        self._add_product(H[start:], f[None], P)

    def _add_scaled_rows(self, left, g, scale, f, P):
        """left + scale f g P[r] for every row r: (rows, batch, OUTPUTS, width), with f (batch, width)
        or None for 1 and g (batch or 1, OUTPUTS, width); in place where left is given (autograd
        records it: nothing saved left)."""
        if f is not None and self._fuses(g, f, P) and (left is None or self._fuses(left)):
            out = self._empty(f, (P.shape[0], f.shape[0]) + g.shape[1:]) if left is None else left
            self._fused_scaled_rows(out, g, scale, f, P, left is not None)
            return out
        line = scale * g if f is None else g * (f if scale == 1.0 else scale * f)[:, None, :]  # (batch, OUTPUTS, width): small
        return self._add_product(left, line[None], P[:, :, None, :])

    def _through_activation(self, factors, powers, tables):
        """Low-order series of sigma(z(x)), sum_k sigma^(k)(z)/k! * Z^k, from the powers of Z = powers[0]."""
        H = factors[0][None] * powers[0]
        for k, P in zip(tables["powers"], powers[1:]):
            if factors[k - 1] is not None:
                self._add_scaled(H, self._START[k], factors[k - 1], P)
        return H

    def _first_layer_series(self, factors, powers, batch):
        """Layer 1's low-order series of sigma(z + Z). Z is linear there (layer 1 is affine), so
        its order-k coefficients are sigma^(k)/k! times the order-k rows of Z^k alone: one product
        per order, each row written once, where _through_activation adds every power over all its
        rows above order k too (zeros at layer 1)."""
        like, pairs = powers[0], []
        for k in self._FIRST_LAYER_ORDERS:
            rows = self._START[k + 1] - self._START[k]
            if factors[k - 1] is None:  # sigma^(k) = 0 (and Z^k may not have been made)
                pairs.append((self._zeros(like, (rows, 1, like.shape[-1])), self._zeros(like, (1, batch, like.shape[-1]))))
            else:
                pairs.append((factors[k - 1][None], powers[k - 1][:rows]))
        return self._stacked_products(pairs) if pairs else self._zeros(like, (self._LOW, batch, like.shape[-1]))

    def _top_order(self, vertices, weights, tables, batch, fold, series):
        """Writes the coefficients of order ORDER into series[:, :, _LOW:], (batch, OUTPUTS, n_top)
        in _TOP_ORDER, made at the vertices, but for layer 1's part when `fold`; by the tangent
        (_BY_TANGENT) adds the next-to-top order's onto series[:, :, _PUSHED:_LOW]. Returns u = t
        at layer 1, whose u @ K.T is layer 1's part when `fold`, and the tangent's Gram entries,
        still to be summed onto the top order (_add_tangent_part), or None.

        Every diagram's root vertex contracts its lower-order subtrees against the output
        line g = df/dh^(l) (one reverse sweep, as in forward-over-reverse). Per block (the order
        a of the left factor), a Gram matrix G[alpha, gamma] = sum_j g_j L[alpha, j] Z[gamma, j]
        with L = sum_k sigma^(k)/k! P_(k-1) at order a (or (ORDER - a)/ORDER Q at order a, by the
        activation's equation), summed over the layers; its entries are
        then summed onto alpha * gamma. A symmetric block is made in pieces on and above its
        diagonal. At layer 1 only _FIRST_LAYER_BLOCK's k = ORDER term is non-zero: t @ K.T.

        By the tangent, each layer's next-to-top rows N of S (made with Z's zeros there) add
        g N to their coefficients and, below the last hidden layer, the Gram entries t_c N_a of
        the tangent t to x_c a: what Z's rows would have carried up (see _BY_TANGENT).
        """
        top = series[:, :, self._LOW:]
        grams = [[None] * len(pieces) for _, _, pieces in tables["top"]]
        g = weights[-1][None]  # df/dh^(H): (1, OUTPUTS, n_H)
        u = tangent = tangent_grams = next_order = None
        fused = False  # whether a layer's Gram entries went onto top in _fused_equation_top
        for layer in reversed(range(len(vertices))):
            factors, powers, Q, next_rows = vertices[layer]
            if next_rows is not None:  # by the tangent: S's next-to-top rows
                if next_order is None:  # (batch, OUTPUTS, next-to-top columns)
                    next_order = self._zeros(next_rows, (batch, self.OUTPUTS, self._LOW - self._PUSHED))
                self._add_row_dots(next_order, g, next_rows)
                if tangent is not None:  # (batch, OUTPUTS x first-order columns, next-to-top columns)
                    if tangent_grams is None:
                        tangent_grams = self._zeros(tangent, (batch, tangent.shape[1], self._LOW - self._PUSHED))
                    self._add_row_dots(tangent_grams, tangent, next_rows)
            blocks = tables["top"]
            if Q is not None and self.FUSED_LOOPS:  # by the equation, in one loop from Q and Z to top
                self._fused_equation_top(g, Q, powers[0], *tables["equation_grams"], top, fused)
                fused, blocks = True, ()
            lines = self._line_rows(factors, powers, g) if self._LINE_ROWS and layer > 0 and Q is None and self._scatters(powers[0]) else None
            for i, (terms, cols, pieces) in enumerate(blocks):
                if layer == 0:  # Z is first order there: only P_(ORDER-1) reaches order ORDER - 1
                    if i != self._FIRST_LAYER_BLOCK or fold:
                        continue
                    terms = terms[-1:]
                left = None  # (rows, batch, OUTPUTS, width): a Gram matrix's rows are strided, not copied
                if Q is not None and not self.FUSED_LOOPS:  # by the equation: L = (ORDER - a)/ORDER Q at order a, times g
                    scale, rows = tables["equation_top"][i]
                    left = self._add_scaled_rows(None, g, scale, None, Q[rows])
                    terms = ()
                if lines is not None:  # on a GPU, all blocks' L at once
                    left, terms = lines[tables["top_rows"][i]], ()
                for k, scale, rows in terms:  # P_(k-1) at order a, times scale sigma^(k)/k! g
                    left = self._add_scaled_rows(left, g, scale, factors[k - 1], powers[k - 2][rows])
                left = left.swapaxes(0, 1).swapaxes(1, 2)  # (batch, OUTPUTS, rows, width), a view
                right = powers[0][cols].swapaxes(0, 1).swapaxes(1, 2)[:, None]  # Z: (batch or 1, 1, width, cols)
                for p, (r0, r1, c0) in enumerate(pieces):
                    gram = left[:, :, r0:r1] @ right[..., c0:]
                    grams[i][p] = gram if grams[i][p] is None else grams[i][p] + gram
            if layer > 0:
                if next_rows is not None:
                    tangent = self._tangent_back(g, tangent, factors, powers[0], weights[layer])
                g = self._line_back(g, factors[0], weights[layer])
            elif fold:
                u = g * factors[self.ORDER - 1][:, None, :]
        if next_order is not None:  # (contiguous while summed: one compiled version of NumPy's fused loop)
            series[:, :, self._PUSHED:self._LOW] += next_order
        if fused and all(gram is None for block in grams for gram in block):  # all made in the fused loop
            top[:, :, tables["top_unreached"]] = 0.0
            return u, tangent_grams
        entries = [  # zeros for a block no layer reaches (one hidden layer, folded)
            self._zeros(weights[0], (batch, self.OUTPUTS, (r1 - r0) * (cols.stop - cols.start - c0))) if gram is None
            else gram.reshape(batch, self.OUTPUTS, -1)
            for (_, cols, pieces), block in zip(tables["top"], grams) for gram, (r0, r1, c0) in zip(block, pieces)
        ]
        entries = entries[0] if len(entries) == 1 else self._cat(entries, -1) if entries else None
        if entries is not None and self._scatters(entries):  # on a GPU, one gather and one scatter-add for all
            lefts, targets = tables["top_scatter"]
            top.zero_().index_add_(-1, targets, entries.index_select(-1, lefts))
            return u, tangent_grams
        for group in tables["top_sums"]:  # term-major: term i of every target, then term i + 1
            terms = self._group_sums(entries, group)
            if fused:  # onto the fused loop's part
                top[:, :, group["targets"]] += terms
                continue
            top[:, :, group["targets"]] = terms
        top[:, :, tables["top_unreached"]] = 0.0  # coefficients no diagram reaches
        return u, tangent_grams

    def _group_sums(self, entries, group):
        """Each target's terms of a group summed: entries (batch, OUTPUTS, n) taken term-major
        (term i of every target, then term i + 1), group["terms"] terms per target."""
        terms = self._take_last(entries, group["left"])
        return terms if group["terms"] == 1 else terms.reshape(terms.shape[:2] + (group["terms"], -1)).sum(-2)

    def _add_tangent_part(self, top, tangent_grams, tables):
        """Adds the tangent's Gram entries (summed over the layers; (batch, OUTPUTS x first-order
        columns, next-to-top columns)) onto the top order they reach."""
        if self._fuses(top, tangent_grams):
            self._fused_add_tangent_part(top, tangent_grams, tables["tangent_positions"])
            return
        entries = tangent_grams.reshape(tangent_grams.shape[0], self.OUTPUTS, -1)  # (batch, OUTPUTS, first-order x next-to-top)
        if self._scatters(entries):  # on a GPU, one gather and one scatter-add
            lefts, targets = tables["tangent_scatter"]
            top.index_add_(-1, targets, entries.index_select(-1, lefts))
            return
        for group in tables["tangent_sums"]:
            top[:, :, group["targets"]] += self._group_sums(entries, group)

    def _tangent_back(self, g, tangent, factors, Z, W):
        """The tangent one layer down: t_c = d g / d x_c, the output line's first-order series, of
        g' = (sigma' g) W is (sigma'' Z_c g + sigma' t_c) W (t = 0 at the last hidden layer: the
        output layer is linear), with Z_c Z's first-order rows. tangent and the result: (batch,
        OUTPUTS x first-order columns, width), output-major."""
        first = self._START[2]
        if self._fuses(g, factors[0], Z) and (tangent is None or self._fuses(tangent)):
            t = self._empty(Z, (factors[0].shape[0], self.OUTPUTS * first, factors[0].shape[1]))
            self._fused_tangent_lines(g, t if tangent is None else tangent, factors[0], factors[1], Z, tangent is not None, t)
            return self._rows_times(t, W)
        t = (g * (2.0 * factors[1])[:, None, :])[:, :, None, :] * Z[:first].swapaxes(0, 1)[:, None]  # factors[1] = sigma''/2
        t = t.reshape(t.shape[0], -1, t.shape[-1])
        if tangent is not None:
            t = t + tangent * factors[0][:, None, :]
        return self._rows_times(t, W)

    def _rows_times(self, a, matrix):
        """a @ matrix over a's last axis, as one matrix product."""
        return (a.reshape(-1, a.shape[-1]) @ matrix).reshape(a.shape[:-1] + (matrix.shape[-1],))

    def _line_back(self, g, slope, W):
        """The output line one layer down, df/dh^(l) = (sigma' df/dh^(l+1)) W^(l+1): g (batch or 1,
        OUTPUTS, width), slope sigma'(z) (batch, width)."""
        return self._rows_times(g * slope[:, None, :], W)

    def _first_layer(self, params, tables):
        """Layer 1's powers: first-order terms only, the same for every x (batch axis 1)."""
        Z = self._zeros(params[0], (self._LOW, 1, params[0].shape[0]))
        Z[tables["first_order_columns"], 0, :] = params[0].T[tables["first_order_variables"]]
        return self._powers(Z, tables)

    def _first_layer_term(self, tables):
        """(k, scale, rows of P_(k-1), columns of Z) of the one term non-zero at layer 1:
        k = ORDER, the last term of _FIRST_LAYER_BLOCK."""
        terms, cols, _ = tables["top"][self._FIRST_LAYER_BLOCK]
        return terms[-1] + (cols,)

    def _first_layer_matrix(self, powers, tables):
        """K[target, j]: layer 1's Gram entries of _FIRST_LAYER_BLOCK without t, summed (rows in _TOP_ORDER)."""
        k, scale, rows, cols = self._first_layer_term(tables)
        left = powers[k - 2][rows][:, 0]  # (rows, width)
        entries = (scale * left[:, None] * powers[0][cols][None, :, 0]).reshape(-1, left.shape[1])
        K = self._zeros(entries, (self._SERIES_SIZE - self._LOW, entries.shape[1]))
        if self._scatters(entries):  # on a GPU, one gather and one scatter-add
            lefts, targets = tables["first_layer_scatter"]
            return K.index_add_(0, targets, entries.index_select(0, lefts))
        for bucket in tables["first_layer_sums"]:
            K[bucket["targets"]] = self._summed(self._gather(entries, bucket["left"]), bucket)
        return K

    def _first_layer_for(self, params, tables, fold):
        """Layer 1's powers and, with `fold`, K (else None) for this W1: kept from the last call
        while W1 is unchanged (a copy of W1 is far smaller than they are, and comparing it cheaper
        than making them); made anew when W1 has changed, as in every training step, or when they
        must carry a gradient (_copy_to_keep gives None)."""
        if not fold and not self._POWER_TABLES:  # the powers are Z alone, W1's columns: made faster than compared
            return self._first_layer(params, tables), None
        kept = self._KEPT_FIRST_LAYER[0]
        if kept is not None and self._unchanged(kept[0], params[0]):
            _, powers, K = kept
            if K is not None or not fold:
                return powers, K
        else:
            powers, K = self._first_layer(params, tables), None
        if fold:
            K = self._first_layer_matrix(powers, tables)
        copy = self._copy_to_keep(params[0])
        if copy is not None:
            self._KEPT_FIRST_LAYER[0] = (copy, powers, K)  # one assignment: never half-updated
        return powers, K

    def _series(self, params, x, tables, first_powers, fold, out):
        """Writes the series of f around x into out, (batch, OUTPUTS, 1 + len(_SERIES)): the value,
        the low orders and the top order (in _TOP_ORDER); with `fold` returns the vector u whose
        u @ K.T is layer 1's top-order part, still to be added."""
        weights, biases = params[0::2], params[1::2]
        batch = x.shape[0]
        z = self._affine(x, weights[0], biases[0])
        Z, powers = first_powers[0], first_powers
        vertices = []
        for W, b in zip(weights[1:], biases[1:]):
            h, factors = self._vertex_weights(z)
            Q = None  # sigma'(z + Z)'s series, where the activation's equation gives the layer's
            if vertices and self._by_equation(Z, h, factors):  # (see _EQUATION)
                H, Q = self._equation_series(Z, h, factors, tables)
                powers = [Z]
            if Q is None and vertices:
                powers = self._powers(Z, tables)
                H = self._through_activation(factors, powers, tables)
            elif Q is None:
                H = self._first_layer_series(factors, powers, batch)
            vertices.append((factors, powers, Q, H[self._PUSHED:] if self._BY_TANGENT else None))
            Z = self._through_layer(H, W)
            z = self._affine(h, W, b)
        out[:, :, 0] = z
        out[:, :, 1 : 1 + self._LOW] = Z.swapaxes(0, 1).swapaxes(1, 2)  # (batch or 1, OUTPUTS, columns): assigning broadcasts
        u, tangent_grams = self._top_order(vertices, weights, tables, batch, fold, out[:, :, 1:])
        if tangent_grams is not None:
            self._add_tangent_part(out[:, :, 1 + self._LOW :], tangent_grams, tables)
        return u

    def _folds(self, params, tables, batch):
        """Whether to fold layer 1's top-order block into K: from a batch of 8, unless making K
        (its rows x cols x width grid at once) would take more than _FOLD_MAX_NUMBERS numbers."""
        if self._FIRST_LAYER_BLOCK is None or batch < self._FOLD_FROM_BATCH:
            return False
        _, _, rows, cols = self._first_layer_term(tables)
        return (rows.stop - rows.start) * (cols.stop - cols.start) * params[0].shape[0] <= self._FOLD_MAX_NUMBERS

    def _chunked_series(self, params, x, tables, first_powers, fold, out, parts):
        """_series for the whole batch, each part's rows chunk by chunk (a part per thread);
        with `fold` returns u for all rows (see _series)."""
        chunk = self._chunk(x)

        def series(rows):  # a thread's rows, chunk by chunk
            start, stop = (0, x.shape[0]) if rows is None else (rows.start, rows.stop)
            return [self._series(params, x[i : min(i + chunk, stop)], tables, first_powers, fold, out[i : min(i + chunk, stop)])
                    for i in range(start, stop, chunk)]

        u = [piece for pieces in self._run_parts(series, parts) for piece in pieces]
        return None if not fold else u[0] if len(u) == 1 else self._cat(u, 0)

    def _parts(self, batch):
        """The batch's rows as one slice per thread a call uses: here one (a backend may split)."""
        return [None]  # None: the whole batch, no slicing (the arrays as given)

    def _run_parts(self, function, parts):
        """[function(rows) for rows in parts], in order (a backend may run them on threads)."""
        return [function(rows) for rows in parts]

    def taylor_coefficients(self, params, x):
        """Taylor coefficients D^alpha f(x) / alpha!: (batch, OUTPUTS, len(MULTI_INDICES)), in x's dtype."""
        return self._coefficients(params, x, False)

    def derivatives(self, params, x):
        """Partial derivatives D^alpha f(x): (batch, OUTPUTS, len(MULTI_INDICES)), in x's dtype."""
        return self._coefficients(params, x, True)

    def _coefficients(self, params, x, derivatives):
        """The Taylor coefficients, times alpha! where `derivatives`."""
        params, x, tables = self._prepare(params, x)
        if x.shape[0] == 0:
            return self._zeros(x, (0, self.OUTPUTS, len(self.MULTI_INDICES)))
        fold = self._folds(params, tables, x.shape[0])
        out = self._empty(x, (x.shape[0], self.OUTPUTS, 1 + self._SERIES_SIZE))  # every chunk writes its rows
        parts = self._parts(x.shape[0])  # the batch's rows, one slice per thread
        if self._by_points(x):  # order 2 in one fused call, layer 1's fold included; out in the series' order
            K = self._first_layer_for(params, tables, True)[1] if fold else None
            if parts == [None]:  # the whole batch here (a one-point call: no closure, no slicing)
                scaled = self._series_by_points(params, x, tables, K, out, derivatives)
            else:
                scaled = self._run_parts(lambda rows: self._series_by_points(params, _rows(x, rows), tables, K,
                                                                             _rows(out, rows), derivatives), parts)[0]
            out = out if tables["series_outputs"] is None else self._take_last(out, tables["series_outputs"])
            return self._times_factorials(out) if derivatives and not scaled else out
        first_powers, K = self._first_layer_for(params, tables, fold)  # layer 1 is affine: the same for every x
        u = self._chunked_series(params, x, tables, first_powers, fold, out, parts)
        if fold:  # layer 1's top-order block for the whole batch: one matrix product
            out[:, :, 1 + self._LOW :] += self._rows_times(u, K.T)
        out = self._take_last(out, tables["outputs"])
        return self._times_factorials(out) if derivatives else out


def _rows(a, rows):
    """a's rows (a slice), or a itself where rows is None."""
    return a if rows is None else a[rows]
