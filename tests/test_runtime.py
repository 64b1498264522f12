"""diagramc.runtime as ordinary code: its tables, loops and kernel classes against simple references,
without the compiler (no sympy, no templates)."""
from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from diagramc import runtime
from diagramc.runtime import numpy_loops as loops
from diagramc.runtime.tables import TaylorTables
from diagramc.runtime.taylor_numpy import NumpyTaylorKernel
from diagramc.runtime.taylor_torch import TorchTaylorKernel

from .reference import random_params, reference_derivatives


def _tanh_weights(z, order, xp=np):
    """tanh(z) and tanh^(k)(z)/k!, k = 1..order, by the recurrence of its Taylor series: the series
    of u = tanh(z + t) solves u' = 1 - u^2 (an independent derivation from the kernel's)."""
    u = [xp.tanh(z)]
    for k in range(order):  # (k + 1) u_(k+1) = [1 - u^2]_k
        square = sum(u[i] * u[k - i] for i in range(k + 1))
        u.append(((1.0 if k == 0 else 0.0) - square) / (k + 1))
    return u[0], tuple(u[1:])


def _plan(layer_sizes, order, **choices):
    return {"inputs": layer_sizes[0], "outputs": layer_sizes[-1], "layer_sizes": layer_sizes, "activation": "tanh",
            "order": order, "vertex_orders": tuple(range(2, order + 1)), "requested": None, "equation": (1.0, 0.0, -1.0),
            "weight_slots": tuple(range(order)), **choices}


def test_check_version_names_the_regenerate_command():
    runtime.check_version(runtime.VERSION, "diagramc compile ...")
    with pytest.raises(ImportError, match="regenerate it: diagramc compile --order 3"):
        runtime.check_version(runtime.VERSION + 1, "diagramc compile --order 3")


def test_check_module_refuses_an_edited_file(tmp_path):
    import hashlib
    body = "x = 1\n"
    good = tmp_path / "good.py"
    good.write_text(body + runtime.SEAL + hashlib.sha256(body.encode()).hexdigest() + "\n")
    runtime.check_module(str(good), runtime.VERSION, "cmd")
    bad = tmp_path / "bad.py"
    bad.write_text(good.read_text().replace("x = 1", "x = 2"))
    with pytest.raises(ImportError, match="edited or truncated after diagramc wrote it; regenerate it: cmd"):
        runtime.check_module(str(bad), runtime.VERSION, "cmd")
    runtime.check_module(None, runtime.VERSION, "cmd")  # not loaded from a file: nothing to compare


def test_runtime_imports_neither_sympy_nor_jinja2():
    code = ("import sys; import diagramc.runtime.taylor_numpy, diagramc.runtime.taylor_torch; "
            "print(sorted(m for m in ('sympy', 'jinja2', 'networkx', 'diagramc.compiler') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("d,order", [(1, 4), (2, 3), (3, 4)])
def test_tables_series_are_the_canonical_monomials(d, order):
    tables = TaylorTables(_plan((d, 4, 1), order))
    expected = [m for k in range(1, order + 1) for m in itertools.combinations_with_replacement(range(d), k)]
    assert list(tables._SERIES) == expected
    assert tables.MULTI_INDICES[0] == (0,) * d and len(tables.MULTI_INDICES) == math.comb(d + order, order)
    assert tables._START[order] == sum(math.comb(d + k - 1, k) for k in range(1, order))
    for alpha, factorial in zip(tables.MULTI_INDICES, tables._FACTORIALS):
        assert factorial == math.prod(math.factorial(a) for a in alpha)


def test_tables_subset_is_its_downward_closure():
    tables = TaylorTables(_plan((3, 4, 1), 3, requested=((), (0, 0, 2))))
    assert list(tables._SERIES) == [(0,), (2,), (0, 0), (0, 2), (0, 0, 2)]
    assert tables.MULTI_INDICES == ((0, 0, 0), (2, 0, 1))


def test_tables_splits_and_product_columns():
    tables = TaylorTables(_plan((2, 4, 1), 3))
    assert sorted(tables._splits((0, 0, 1))) == [((0,), (0, 1)), ((0, 0), (1,)), ((0, 1), (0,)), ((1,), (0, 0))]
    columns = tables._product_columns(tables._monomial_array(1), tables._monomial_array(2))
    top = list(tables._SERIES[tables._LOW:])
    for i, a in enumerate(tables._monomial_array(1)):
        for j, b in enumerate(tables._monomial_array(2)):
            assert top[columns[i, j]] == tuple(sorted(tuple(a) + tuple(b)))


def test_group_by_count_sums_each_target():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 7, 40)
    left = rng.integers(0, 100, 40)
    values = rng.normal(size=100)
    sums = np.zeros(7)
    for count, group, lefts, _ in TaylorTables._group_by_count(left, None, target):
        sums[group] += values[lefts].reshape(-1, count).sum(1)
    np.testing.assert_allclose(sums, np.bincount(target, weights=values[left], minlength=7))


def test_fused_product_matches_its_definition():
    rng = np.random.default_rng(1)
    A, Z = rng.normal(size=(5, 3, 4)), rng.normal(size=(6, 1, 4))
    target, left, right = [0, 0, 2, 1, 2], [0, 4, 1, 2, 3], [5, 0, 2, 1, 1]
    weight = [1.0, 2.0, -1.0, 0.5, 3.0]
    starts, left_s, right_s, weight_s = NumpyTaylorKernel._by_target(target, left, right, weight, 3)
    out = loops.fused_product(A, Z, starts, left_s, right_s, weight_s, np.empty((3, 3, 4)))
    expected = np.zeros((3, 3, 4))
    for t, a, z, w in zip(target, left, right, weight):
        expected[t] += w * A[a] * Z[z]
    np.testing.assert_allclose(out, expected, rtol=1e-14)


@pytest.mark.skipif(loops.DGEMM is None, reason="SciPy's BLAS is not loadable")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gemm_and_syrk_match_numpy(dtype):
    rng = np.random.default_rng(2)
    A, B = rng.normal(size=(5, 7)).astype(dtype), rng.normal(size=(7, 3)).astype(dtype)
    blas, syrk = (loops.DGEMM, loops.DSYRK) if dtype == np.float64 else (loops.SGEMM, loops.SSYRK)
    ints, one, zero = np.empty(8, dtype=np.int32), np.ones(1, dtype=dtype), np.zeros(1, dtype=dtype)
    C = np.empty((5, 3), dtype=dtype)
    loops.gemm(blas, A, B, C, False, False, zero, ints, one)
    np.testing.assert_allclose(C, A @ B, rtol=1e-5 if dtype == np.float32 else 1e-13)
    G = np.zeros((7, 7), dtype=dtype)
    loops._syrk(syrk, A, G, one, zero, ints)
    upper = np.triu_indices(7)
    np.testing.assert_allclose(G[upper], (A.T @ A)[upper], rtol=1e-5 if dtype == np.float32 else 1e-13)


def test_float32_tanh_within_five_units_in_the_last_place():
    """jet_ode_loops.tanh32_equation's tanh against float64 tanh: 5 ulp everywhere, x itself near 0,
    +-1 far out; its sigma' = 1 - tanh^2 from that tanh."""
    from diagramc.runtime.jet_ode_loops import tanh32_equation

    x = np.concatenate([np.linspace(-20, 20, 400001), np.geomspace(1e-38, 20, 20000),
                        -np.geomspace(1e-38, 20, 20000), [0.0, np.inf, -np.inf]]).astype(np.float32)
    got, slope = np.empty_like(x), np.empty_like(x)
    tanh32_equation(x, got, slope, np.float32(1), np.float32(0), np.float32(-1))
    exact = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(got - exact) / ulp) <= 5
    small = np.abs(x) < 1e-4
    assert np.array_equal(got[small], x[small])
    np.testing.assert_allclose(slope, 1 - got * got, rtol=1e-6, atol=1e-7)


def test_equation_series_is_tanh_along_a_line():
    """The equation's loop makes the series of tanh(z + Z) from Z's: along a line z + v t (Z's
    first coefficient v, the rest zero) it is tanh's own Taylor series times v^k."""
    order = 6
    kernel = NumpyTaylorKernel(_plan((1, 4, 4, 1), order, by_equation=True), lambda z: _tanh_weights(z, order),
                               fused_activation=lambda *a: None)
    rng = np.random.default_rng(3)
    z, v = rng.normal(size=(1, 4)), rng.normal(size=(1, 4))
    Z = np.zeros((kernel._LOW, 1, 4))
    Z[0] = v
    h, factors = _tanh_weights(z, order)
    S, _ = kernel._equation_series(Z, h, factors, kernel._TABLES)
    for k in range(1, kernel._LOW + 1):
        np.testing.assert_allclose(S[k - 1], factors[k - 1] * v**k, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend,order,batch", [("numpy", 3, 1), ("numpy", 4, 9), ("numpy", 2, 5),
                                                 ("torch", 3, 2), ("torch", 5, 9), ("torch", 2, 4)])
def test_kernel_classes_match_jacfwd(backend, order, batch):
    """A kernel built from a plan and an activation function alone, no generated module: tanh
    MLP with two hidden layers, non-zero points, against nested jacfwd."""
    sizes = (2, 5, 4, 2)
    params = random_params(sizes, torch.Generator().manual_seed(order))
    x = torch.randn(batch, 2, generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
    plan = _plan(sizes, order, by_points=False)
    if backend == "numpy":
        kernel = NumpyTaylorKernel(plan, lambda z: _tanh_weights(z, order), fused=False)
        got = torch.as_tensor(kernel.derivatives([p.numpy() for p in params], x.numpy()))
    else:
        kernel = TorchTaylorKernel(plan, lambda z: _tanh_weights(z, order, torch))
        got = kernel.derivatives(params, x)
    want = reference_derivatives(params, x, "tanh", kernel.MULTI_INDICES)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))


def test_kernel_rejects_wrong_shapes_naming_the_parameter():
    kernel = NumpyTaylorKernel(_plan((2, 3, 1), 2), lambda z: _tanh_weights(z, 2), fused=False)
    params = [np.zeros((3, 2)), np.zeros(3), np.zeros((1, 3)), np.zeros(1)]
    with pytest.raises(ValueError, match=r"x has shape \(4, 3\); expected \(batch, 2\)"):
        kernel.derivatives(params, np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"params\[2\] \(W2\) has shape \(2, 3\); expected \(1, 3\)"):
        kernel.derivatives(params[:2] + [np.zeros((2, 3)), np.zeros(1)], np.zeros((4, 2)))



def test_kernel_sees_parameters_changed_in_place_and_checks_them_again():
    """Calls with the same parameter arrays reuse their checked list: values changed in place
    are seen, a shape changed in place is refused, and converted arrays are never kept."""
    sizes, order = (2, 5, 4, 1), 2
    params = [p.numpy() for p in random_params(sizes, torch.Generator().manual_seed(5))]
    x = np.random.default_rng(0).normal(size=(3, 2)) + 0.3
    kernel = NumpyTaylorKernel(_plan(sizes, order), lambda z: _tanh_weights(z, order), fused=False)

    def want(arrays):
        tensors = [torch.as_tensor(np.asarray(p, dtype=np.float64)) for p in arrays]
        return reference_derivatives(tensors, torch.as_tensor(x), "tanh", kernel.MULTI_INDICES).numpy()

    first = kernel.derivatives(params, x)
    np.testing.assert_allclose(first, want(params), rtol=1e-10, atol=1e-12)
    params[0] *= 0.5  # an optimizer's step, in place
    np.testing.assert_allclose(kernel.derivatives(list(params), x), want(params), rtol=1e-10, atol=1e-12)
    params[2].shape = (1, 20)  # the same array, reshaped in place
    with pytest.raises(ValueError, match=r"params\[2\] \(W2\) has shape \(1, 20\); expected \(4, 5\)"):
        kernel.derivatives(params, x)
    params[2].shape = (4, 5)
    single = [p.astype(np.float32) for p in params]  # converted to x's float64 on each call
    kernel.derivatives(single, x)
    single[0] *= 2.0
    np.testing.assert_allclose(kernel.derivatives(single, x), want(single), rtol=1e-6, atol=1e-7)

# ---------------------------------------------------------------------------------------------
# The array-built tables against the simple constructions they replace (Python tuples and dicts).

def _simple_series(d, order, requested=None):
    """The series' monomials as tuples: all up to order, or the requested ones' sub-monomials."""
    if requested is None:
        return [m for k in range(1, order + 1) for m in itertools.combinations_with_replacement(range(d), k)]
    found = {s for m in requested for r in range(1, len(m) + 1) for s in itertools.combinations(m, r)}
    return sorted(found, key=lambda m: (len(m), m))


def _simple_power_table(series, start, low, k):
    """P_k's rows as the loops over columns and their splits wrote them."""
    column = {m: j for j, m in enumerate(series)}
    left, right, target, squares = [], [], [], []
    for j in range(start[k], low):
        for alpha, gamma in TaylorTables._splits(series[j]):
            if len(alpha) < k - 1:
                continue
            if k == 2 and alpha == gamma:
                squares.append((column[alpha], j - start[k]))
            elif k != 2 or column[alpha] < column[gamma]:
                left.append(column[alpha] - start[k - 1])
                right.append(column[gamma])
                target.append(j - start[k])
    return left, right, target, squares


def _simple_equation_rows(series, low, c2):
    column = {m: j for j, m in enumerate(series)}
    s_rows, q_rows = [], []
    for t, beta in enumerate(series[:low]):
        for alpha, gamma in TaylorTables._splits(beta):
            s_rows.append((t, column[alpha], column[gamma], len(alpha) / len(beta)))
            if column[alpha] <= column[gamma]:
                q_rows.append((t, column[alpha], column[gamma], c2 * (1.0 if alpha == gamma else 2.0)))
    return s_rows, q_rows


_SUBSET = ((), (0, 0, 2), (1, 2), (0, 1, 1, 2), (2, 2, 2, 2))


@pytest.mark.parametrize("d,order,requested", [(2, 0, None), (2, 0, ((),)), (1, 1, ((), (0,))), (1, 5, None), (2, 4, None), (3, 4, None), (4, 3, None), (3, 5, None),
                                               (3, 4, _SUBSET), (5, 4, ((), (4,), (0, 1, 3, 3)))])
def test_array_tables_match_the_simple_construction(d, order, requested):
    tables = TaylorTables(_plan((d, 4, 1), order, requested=requested))
    series = _simple_series(d, order, requested and [m for m in requested if m])
    assert list(tables._SERIES) == series
    start = [next((j for j, m in enumerate(series) if len(m) >= k), len(series)) for k in range(order + 2)]
    assert list(tables._START) == start
    low = start[order] if order >= 2 else len(series)
    for k, (left, right, target, squares) in tables._POWER_TABLES.items():
        want = _simple_power_table(series, start, low, k)
        assert (left.tolist(), right.tolist(), target.tolist()) == tuple(want[:3])
        assert [tuple(s) for s in squares.tolist()] == want[3]
    for rows, want in zip(tables._EQUATION_ROWS, _simple_equation_rows(series, low, -1.0)):
        assert list(zip(*(a.tolist() for a in rows))) == want
    wanted = ((),) + tuple(series) if requested is None else requested
    exponents = [tuple(sum(1 for i in m if i == v) for v in range(d)) for m in wanted]
    assert tables.MULTI_INDICES == tuple(exponents)
    assert tables._FACTORIALS.tolist() == [float(math.prod(map(math.factorial, a))) for a in exponents]
    column = {m: j for j, m in enumerate(series)}
    for a in range(1, order):  # every product of two orders: its column among the product's order, or -1
        grid = tables._product_columns(tables._monomial_array(a), tables._monomial_array(order - a))
        for i, alpha in enumerate(tables._monomial_array(a).tolist()):
            for j, gamma in enumerate(tables._monomial_array(order - a).tolist()):
                product = tuple(sorted(alpha + gamma))
                assert grid[i, j] == (column[product] - start[order] if product in column else -1)


def test_all_monomials_and_sorted_rows():
    from diagramc.runtime.tables import _all_monomials, _sorted_rows
    for d in range(1, 6):
        for k in range(0, 6):
            want = list(itertools.combinations_with_replacement(range(d), k))
            assert [tuple(r) for r in _all_monomials(d, k).tolist()] == want
    rows = np.random.default_rng(3).integers(0, 9, (50, 5))
    assert np.array_equal(np.stack(_sorted_rows(list(rows.T)), axis=1), np.sort(rows, axis=1))


def test_stored_tables_round_trip_exactly():
    from diagramc.runtime.tables import _decode, _encode
    table = {"a": (np.arange(5), slice(2, 9), range(1, 4), None, 2.5, [np.array([0.5, 1 / 3] * 200)]),
             3: [np.array([2**40, -1]), np.zeros((0, 5), dtype=np.int64), np.array([1.0, 2.0]), np.random.default_rng(0).normal(size=300)],
             (1, 2): np.arange(12, dtype=np.intp).reshape(3, 4)}
    arrays = []
    node = _encode(table, arrays)
    back = _decode(node, {f"a{i}": a for i, a in enumerate(arrays)})
    assert list(back) == list(table) and back["a"][1:5] == table["a"][1:5]

    def same(a, b):
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        elif isinstance(a, (list, tuple)):
            assert type(a) is type(b) and len(a) == len(b) and all(same(x, y) or True for x, y in zip(a, b))
        elif isinstance(a, dict):
            for k in a:
                same(a[k], b[k])
        return True
    same(table, back)


def test_kernel_loads_its_stored_tables_and_only_its_own(tmp_path, monkeypatch):
    import diagramc.runtime.tables as tables_module
    monkeypatch.setattr(tables_module, "STORE_FROM_NUMBERS", 0)  # store even a small kernel's
    module_file = tmp_path / "kernel.py"
    module_file.write_text("# a module\n# sha256 of all lines above: 1\n")
    plan, activation = _plan((3, 5, 4, 1), 4), lambda z: _tanh_weights(z, 4)
    tables_module._RECENT.clear()
    built = NumpyTaylorKernel(plan, activation, fused=False, module_file=str(module_file))
    data = built.stored_tables()
    assert data is not None
    (tmp_path / "kernel.tables.npz").write_bytes(data)
    tables_module._RECENT.clear()
    loaded = NumpyTaylorKernel(plan, activation, fused=False, module_file=str(module_file))
    assert loaded._STORE and loaded.stored_tables() is None  # loaded, nothing built
    assert np.array_equal(loaded._TOP_ORDER, built._TOP_ORDER) and np.array_equal(loaded._OUTPUT_COLUMNS, built._OUTPUT_COLUMNS)
    params = [p.numpy() for p in random_params((3, 5, 4, 1), torch.Generator().manual_seed(4))]
    x = np.random.default_rng(5).normal(size=(9, 3))
    assert np.array_equal(loaded.derivatives(params, x), built.derivatives(params, x))
    want = reference_derivatives([torch.as_tensor(p) for p in params], torch.as_tensor(x), "tanh", loaded.MULTI_INDICES)
    np.testing.assert_allclose(loaded.derivatives(params, x), want.numpy(), rtol=1e-10, atol=1e-10 * float(want.abs().max()))
    module_file.write_text("# another module\n# sha256 of all lines above: 2\n")  # another text: its own tables
    tables_module._RECENT.clear()
    assert NumpyTaylorKernel(plan, activation, fused=False, module_file=str(module_file))._STORE is None


def test_torch_kernel_stores_the_tables_of_its_first_call(tmp_path, monkeypatch):
    import diagramc.runtime.tables as tables_module
    monkeypatch.setattr(tables_module, "STORE_FROM_NUMBERS", 0)
    module_file = tmp_path / "kernel.py"
    module_file.write_text("# a module\n# sha256 of all lines above: 1\n")
    plan, activation = _plan((3, 5, 4, 1), 4, by_tangent=True), lambda z: _tanh_weights(z, 4, torch)
    tables_module._RECENT.clear()
    built = TorchTaylorKernel(plan, activation, module_file=str(module_file))
    (tmp_path / "kernel.tables.npz").write_bytes(built.stored_tables())
    assert {"top sums", "tangent entries", "first layer entries"} <= set(built._BUILT)  # the CPU's tables' too
    tables_module._RECENT.clear()
    loaded = TorchTaylorKernel(plan, activation, module_file=str(module_file))
    params = random_params((3, 5, 4, 1), torch.Generator().manual_seed(6))
    x = torch.randn(9, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(loaded.derivatives(params, x), built.derivatives(params, x))
    assert loaded.stored_tables() is None  # all it used was stored
