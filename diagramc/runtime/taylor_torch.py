"""The PyTorch backend of the Taylor kernel: tensors stay on x's device and dtype, and
everything is differentiable (autograd, torch.func). On a GPU, products and sums are few
large kernels (scatter-adds); on a CPU, the blocks of the shared algorithm."""
import numpy as np
import torch

from .arguments import torch_arguments
from .taylor_kernel import TaylorKernel


class TorchArrays:
    """The tensor primitives a torch kernel's shared algorithm calls (the Taylor kernel's and the
    kernel by directions'); the class sets _CONSTANTS_ON = {} in its __init__."""

    def _zeros(self, like, shape):
        return like.new_zeros(shape)

    def _empty(self, like, shape):
        return like.new_empty(shape)

    def _cat(self, tensors, dim):
        return torch.cat(tensors, dim)

    def _constant(self, name, values, like):
        """values in like's dtype on like's device, kept under name (a call copies nothing from the host)."""
        key = (name, like.device, like.dtype)
        if key not in self._CONSTANTS_ON:
            with torch.inference_mode(False):  # kept for later calls, which may need autograd
                self._CONSTANTS_ON[key] = torch.as_tensor(values, dtype=like.dtype, device=like.device)
        return self._CONSTANTS_ON[key]


class TorchTaylorKernel(TorchArrays, TaylorKernel):
    """torch tensors on any device and dtype, differentiable, no Python loop over the batch."""

    FUSED_LOOPS = False
    TANGENT_FACTOR = 12  # each of the tangent's products and sums is a kernel call
    EQUATION_THRESHOLD = 0.65  # its gathers and index_adds per degree cost more calls than the powers' products
    DIRECTIONS_FACTOR = 1.08  # the plan by directions where this x its multiply-adds are fewer (runtime.taylor_directions)
    PRODUCTS_BY_CLASSES = True

    def __init__(self, plan, activation, vertex_polynomials=None, module_file=None):
        """plan: see TaylorTables, with by_points (order 2 by batched Jacobians); activation: see
        TaylorKernel; vertex_polynomials: (u(z), coefficients of each non-zero weight in u^0.., per
        weight its row or None), where the activation's weights are polynomials in u = sigma(z);
        module_file: see TaylorKernel."""
        super().__init__(plan, activation, module_file)
        self._PLAN_BY_POINTS = bool(plan.get("by_points"))
        self._VERTEX_POLYNOMIALS = vertex_polynomials
        # ---------------------------------------------------------------------------------------
        # PyTorch primitives: tensors stay on x's device and dtype, and everything is differentiable.

        self._DEVICE_TABLES = {}

        self._CHUNK = self._chunk_size(2**17)  # as NumPy's

        self._ACCELERATOR_CHUNK = self._chunk_size(2**22)  # a GPU wants large chunks (each launches the same kernels); 32 MB series bound memory

        self._CONSTANTS_ON = {}  # (name, device, dtype) -> a constant as a tensor there: made once, not copied over each call

        # Order 2 where its one Gram block spans all columns: per point, each layer's Jacobian and Gram
        # matrix as batched matrix products over the batch (_series_by_points).
        self._BY_POINTS = self._PLAN_BY_POINTS and len(self._TOP_BLOCKS) == 1 and self._TOP_BLOCKS[0]["rows"] == self._TOP_BLOCKS[0]["cols"] == range(self._LOW)

        # Numbers in one chunk's Jacobians: on a CPU 1 MB in float64 (larger chunks' temporaries glibc
        # returns to the system and faults back in at every call); on a GPU 32 MB (each chunk
        # launches the same kernels).
        self._BY_POINTS_NUMBERS = 2**17

        self._ACCELERATOR_BY_POINTS_NUMBERS = 2**22

        # the k = 2 term's weight on Z's rows in R (_line_rows): 2 below half the order, 1 at it, 0 above
        _orders = np.repeat(np.arange(self.ORDER + 1), np.diff(self._START))[:self._LOW]  # each low column's order
        self._LINE_WEIGHTS = np.where(2 * _orders < self.ORDER, 2.0, np.where(2 * _orders == self.ORDER, 1.0, 0.0))[:, None, None]

        self._LINE_ROWS = self._line_rows_pay()

    def _by_points(self, x):
        """Whether this call takes _series_by_points (every device and dtype)."""
        return self._BY_POINTS

    def _series_by_points(self, params, x, tables, K, out, derivatives):
        """Order 2, written into out in the series' order (the Taylor coefficients: returns False,
        alpha! is the caller's to apply): per point the first-order series,
        transposed as J (width x columns), goes on layer by layer as J <- W (sigma' J), and at
        each layer from 2 on (from 1 where K is None) its Gram matrix (g sigma''/2 J)^T J adds to
        the point's, whose entries on and above the diagonal are the top order; layer 1's part,
        where K folds it, is (g sigma''/2 at layer 1) K^T. A few batched matrix products per
        layer over a chunk of points (autograd goes through them all), where the general path
        takes truncated products and gathers for what is here a matrix's upper triangle."""
        weights, biases = params[0::2], params[1::2]
        first = weights[0][:, tables["first_order_variables"]]  # layer 1's J, W1's columns: the same for every point
        KT = None if K is None else K.index_select(0, tables["top_position"]).T  # top order in the series' order
        entries, entry_weights, targets = tables["gram_sums"]
        entry_weights = entry_weights.to(x.dtype)
        numbers = self._BY_POINTS_NUMBERS if x.device.type == "cpu" else self._ACCELERATOR_BY_POINTS_NUMBERS
        chunk = max(1, numbers // (max(W.shape[0] for W in weights) * first.shape[1] * self.OUTPUTS))
        for i in range(0, x.shape[0], chunk):
            z = self._affine(x[i : i + chunk], weights[0], biases[0])
            slopes, curvatures = [], []
            for W, b in zip(weights[1:], biases[1:]):
                h, factors = self._vertex_weights(z)
                slopes.append(factors[0])
                curvatures.append(factors[1])
                z = self._affine(h, W, b)
            out[i : i + chunk, :, 0] = z
            g, lines = weights[-1][None], [None] * len(slopes)  # df/dh^(H): (1, OUTPUTS, n_H)
            for layer in reversed(range(len(slopes))):
                lines[layer] = g * curvatures[layer][:, None, :]  # g sigma''/2: (points, OUTPUTS, width)
                if layer > 0:
                    g = self._line_back(g, slopes[layer], weights[layer])
            J, gram = first[None], None  # (points or 1, width, columns)
            for layer, W in enumerate(weights[1:]):
                if layer > 0 or K is None:
                    L = lines[layer][..., None] * J[:, None]  # (points, OUTPUTS, width, columns)
                    G = L.transpose(-1, -2) @ J[:, None]
                    gram = G if gram is None else gram + G
                J = W @ (slopes[layer][:, :, None] * J)  # (points, next width, columns)
            out[i : i + chunk, :, 1 : 1 + self._LOW] = J  # the output's: (points, OUTPUTS, columns)
            top = self._zeros(z, z.shape + (self._SERIES_SIZE - self._LOW,)) if KT is None else lines[0] @ KT
            if gram is not None:  # none with one hidden layer, folded
                sums = gram.flatten(-2).index_select(-1, entries) * entry_weights
                top = top + sums if targets is None else top.index_add(-1, targets, sums)
            out[i : i + chunk, :, 1 + self._LOW :] = top
        return False

    def _affine(self, h, W, b):
        """h @ W.T + b, one kernel (addmm)."""
        return torch.addmm(b, h, W.T)

    def _add_product(self, out, a, b):
        """out + a * b, in place where out is given (one kernel: addcmul_; autograd saves a and b, not out)."""
        return a * b if out is None else out.addcmul_(a, b)

    def _through_layer(self, H, W):
        """The next layer's series Z = H W^T: its first _PUSHED rows; the next-to-top order's are
        zeros by the tangent (made at the vertices, _top_order)."""
        if self._PUSHED == self._LOW:
            return self._rows_times(H, W.T)
        return torch.cat([self._rows_times(H[:self._PUSHED], W.T), H.new_zeros((self._LOW - self._PUSHED,) + H.shape[1:-1] + W.shape[:1])], 0)

    def _add_row_dots(self, out, a, rows):
        """out += sum_j a[b, r, j] rows[n, b, j], out (batch, R, n), for a (batch or 1, R, width)
        and rows (n, batch, width): one batched matrix product (in place: autograd records it)."""
        out += a @ rows.permute(1, 2, 0)

    def _stacked_products(self, pairs):
        """The products a * b (broadcast) of the pairs, stacked along dim 0 (out of place: vmap and autograd take it)."""
        return torch.cat([a * b for a, b in pairs], 0)

    def _chunk(self, x):
        """Points per chunk: cache-sized on a CPU; on a GPU as many as memory allows, since each
        chunk launches the same few hundred kernels."""
        return self._CHUNK if x.device.type == "cpu" else self._ACCELERATOR_CHUNK


    def _times_factorials(self, coefficients):
        """coefficients * alpha! (a new tensor: autograd may hold the coefficients)."""
        return coefficients * self._constant("factorials", self._FACTORIALS, coefficients)

    def _gather(self, a, index):
        return a.index_select(0, index)

    def _take_last(self, a, index):
        return torch.gather(a, -1, index.expand(a.shape[:-1] + index.shape))  # faster than index_select on the last axis

    def _copy_to_keep(self, a):
        """None: K is made anew each call. A tensor can carry W1's gradient in ways no cheap
        check sees (autograd, forward-mode dual numbers, torch.func transforms)."""
        return None

    def _unchanged(self, kept, a):
        return False

    def _prepare(self, params, x):
        params, x = torch_arguments(params, x, self.LAYER_SIZES)
        if x.device not in self._DEVICE_TABLES:
            with torch.inference_mode(False):  # kept for later calls, which may need autograd
                self._DEVICE_TABLES[x.device] = self._tables_on(x.device)
        return params, x, self._DEVICE_TABLES[x.device]

    def _warm_tables(self):
        """The CPU's tables, made as at a first call on the CPU for their large arrays to be
        stored (the tensors are dropped: a call on a GPU never needs them)."""
        self._tables_on(torch.device("cpu"))

    def _tables_on(self, device):
        """The index tables as tensors on device, with the GPU's: each top-order block's rows, and
        the top order's and K's sums as one scatter-add each (_scatters)."""
        index = lambda seq: torch.tensor(np.asarray(seq, dtype=np.int64), device=device)  # noqa: E731
        tables = self._build_tables(index)
        tables["top_rows"] = [slice(block["rows"].start, block["rows"].stop) for block in self._TOP_BLOCKS]
        tables["top_scatter"] = self._top_scatter(index)
        if self._BY_TANGENT:  # the tangent's Gram entries onto the top order as one scatter-add (_add_tangent_part)
            tables["tangent_scatter"] = tuple(index(a) for a in self._tangent_entries())
        if self._FIRST_LAYER_BLOCK is not None:  # K's entries and their rows (_first_layer_matrix)
            entries, targets = self._first_layer_entries()
            tables["first_layer_scatter"] = (index(entries), index(self._TOP_POSITION[targets]))
        if self._BY_EQUATION:
            tables["equation"] = [self._equation_degree(m, index) for m in range(1, self.ORDER)]
            # per top-order block: the weight of Q's rows of order a, and those rows
            tables["equation_top"] = list(zip(self._EQUATION_TOP_WEIGHTS, tables["top_rows"]))
        if self._BY_POINTS:
            entries, weights, targets = self._gram_sums()
            tables["gram_sums"] = (index(entries), torch.tensor(weights, dtype=torch.float64, device=device),
                                   None if np.array_equal(targets, np.arange(self._SERIES_SIZE - self._LOW)) else index(targets))
            tables["top_position"] = index(self._TOP_POSITION)
        return tables

    def _line_rows_pay(self):
        """Whether _line_rows costs less than the blocks' terms one by one, counting passes over
        one row of the series and a kernel launch as 16 of them (about so for 256 x 64 numbers
        on an H100): R takes fewer launches but passes over every row for every k. It pays
        where the terms are many and the rows few."""
        launch = 16
        by_terms = sum((2 if scale == 1.0 else 3) * launch + len(block["rows"])
                       for block in self._TOP_BLOCKS for _, scale in block["terms"])
        orders = [k for k in range(3, self.ORDER + 1) if k in self._VERTEX_ORDERS]
        by_series = (3 + len(orders)) * launch + 3 * self._LOW + sum(self._LOW - self._START[k - 1] for k in orders)
        return by_series < by_terms

    def _line_rows(self, factors, powers, g):
        """Every top-order block's left factor at once, on a GPU (_scatters): g R with
        R = sum_k c sigma^(k)/k! P_(k-1) over the series' low rows, block a reading R's rows of
        order a (its terms, _top_blocks: c = 1, and for k = 2 c = 2, 1 or 0 by the order,
        _LINE_WEIGHTS). A few kernels per layer instead of a few per block and term, where
        that pays (_LINE_ROWS).
        Returns (_LOW, batch, OUTPUTS, width)."""
        Z = powers[0]
        R = self._zeros(Z, Z.shape) if factors[1] is None else (Z * self._constant("line weights", self._LINE_WEIGHTS, Z)).mul_(factors[1])
        for k in range(3, self.ORDER + 1):
            if factors[k - 1] is not None:
                self._add_scaled(R, self._START[k - 1], factors[k - 1], powers[k - 2])
        return g[None] * R[:, :, None, :]

    def _top_scatter(self, index):
        """The top order's sums as one scatter-add, on a GPU: every Gram entry that adds to a
        coefficient (target-major, an entry counted twice listed twice), and that coefficient's
        position in _TOP_ORDER; _TOP_GROUPS's tables, flattened."""
        lefts, targets = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        for end, (count, group, left, _) in zip(self._TOP_GROUP_ENDS, self._TOP_GROUPS):
            lefts.append(np.asarray(left, dtype=np.int64))
            targets.append(np.repeat(np.arange(end - len(group), end), count))
        return index(np.concatenate(lefts)), index(np.concatenate(targets))

    def _power_classes(self, k, one_point=False):
        """P_k = P_(k-1) * Z for scatter-adds (_product): per order m of Z's columns (or, for
        `one_point`, all orders in one), (rows of P_(k-1), columns of Z, target of each product
        of one row with one column, row-major). The rows are every order of P_(k-1) whose product
        with order m is still below ORDER, a run of rows as the columns are: the products form an
        outer product of two slices, no gathers. A product that is no column of the series (not
        requested, or, with `one_point`, of order ORDER or more) goes to row _LOW - _START[k],
        which is dropped: at one point (layer 1) the waste costs less than a kernel launch."""
        dropped = self._LOW - self._START[k]

        def targets(a, m):  # of the rows of order a times the columns of order m
            if a + m >= self.ORDER:
                return np.full((self._START[a + 1] - self._START[a], self._START[m + 1] - self._START[m]), dropped)
            position = self._product_columns(self._monomial_array(a), self._monomial_array(m))
            return np.where(position < 0, dropped, self._START[a + m] + position - self._START[k])

        orders = range(1, self.ORDER - k + 1)
        classes = []
        for group in [orders] if one_point else [[m] for m in orders]:
            row_orders = range(k - 1, self.ORDER - group[0])
            rows = slice(0, self._START[row_orders.stop] - self._START[k - 1])
            columns = slice(self._START[group[0]], self._START[group[-1] + 1])
            if rows.stop > rows.start and columns.stop > columns.start:
                grid = np.block([[targets(a, m) for m in group] for a in row_orders])
                classes.append((rows, columns, grid.ravel()))
        return classes

    def _equation_degree(self, m, index):
        """Degree m of _EQUATION_ROWS: its columns, and per product (S's, Q's) the rows onto them as
        (left, right, target from the degree's first column, weights), or None where there are none."""
        columns = slice(self._START[m], self._START[m + 1])
        products = []
        for target, left, right, weight in self._EQUATION_ROWS:
            rows = (columns.start <= target) & (target < columns.stop)
            products.append((index(left[rows]), index(right[rows]), index(target[rows] - columns.start), weight[rows]) if rows.any() else None)
        return {"degree": m, "columns": columns, "s": products[0], "q": products[1]}

    def _by_equation(self, Z, h, factors):
        """Whether a layer from 2 on follows the activation's equation: where that is cheaper, on
        a CPU (on a GPU the powers' one-kernel products are faster)."""
        return self._BY_EQUATION and not self._scatters(Z)

    def _weighted_rows(self, A, C, rows, name, base):
        """base + the rows' weight * A[left] * C[right], summed onto their targets (one index_add)."""
        left, right, target, weight = rows
        terms = (self._gather(A, left) * self._gather(C, right)).mul_(self._constant(name, weight, A)[:, None, None])
        return base.index_add(0, target, terms)

    def _equation_series(self, Z, h, factors, tables):
        """(S, Q): the low-order series of sigma(z + Z) (as _through_activation's) and of
        sigma'(z + Z), by the activation's equation, degree after degree: each degree's S from Z
        and Q's lower degrees, then its Q from S (writes into S and Q are recorded by autograd;
        the gathers that read them keep no values)."""
        slope = self._EQUATION[1] + 2.0 * self._EQUATION[2] * h  # p'(sigma)
        S, Q = torch.empty_like(Z), torch.empty_like(Z)
        for degree in tables["equation"]:
            columns, m = degree["columns"], degree["degree"]
            s = factors[0] * Z[columns]
            if degree["s"] is not None:
                s = self._weighted_rows(Z, Q, degree["s"], ("equation S", m), s)
            S[columns] = s
            q = slope * s
            if degree["q"] is not None:
                q = self._weighted_rows(S, S, degree["q"], ("equation Q", m), q)
            Q[columns] = q
        return S, Q

    def _fuses(self, *tensors):
        """Whether numba's fused loops take these: never for tensors."""
        return False

    def _scatters(self, Z):
        """Whether a truncated product is one scatter-add (index_add): on a GPU, where each of
        the blocks' few kernels costs a launch; on a CPU the blocks are faster."""
        return Z.device.type != "cpu"

    def _product(self, A, Z, table):
        """Low-order part of the truncated product of two series, A * Z: per order of Z's columns
        an outer product of two slices of rows, scattered onto its targets (_power_classes). No
        gathers and few kernels: on a GPU a few launches instead of a few per block, on a CPU
        faster than gathers per block of pairs."""
        shape = (table["size"], max(A.shape[1], Z.shape[1]), Z.shape[2])
        out = self._zeros(Z, (shape[0] + 1,) + shape[1:])  # the last row takes the products that are dropped
        for rows, columns, target in table["classes" if shape[1] > 1 else "one point"]:
            out.index_add_(0, target, (A[rows, None] * Z[columns][None]).reshape((-1,) + shape[1:]))
        return out[:-1]

    def _vertex_weights(self, z):
        """sigma(z) and the vertex weights sigma^(k)/k!: on a GPU as polynomials in u = sigma(z),
        all at once (the powers of u in one kernel, their combinations in one matrix product,
        where _activation takes a few kernels per weight); elsewhere as _activation."""
        if self._VERTEX_POLYNOMIALS is None or not self._scatters(z):
            return self._activation(z)
        auxiliary, coefficients, slots = self._VERTEX_POLYNOMIALS
        u = auxiliary(z)
        U = u[None] ** self._constant("vertex exponents", tuple((j,) for j in range(1, len(coefficients[0]))), u)[..., None]
        C = self._constant("vertex coefficients", coefficients, u)
        F = torch.addmm(C[:, :1], C[:, 1:], U.reshape(U.shape[0], -1)).reshape((-1,) + u.shape)
        return u, tuple(None if slot is None else F[slot] for slot in slots)
