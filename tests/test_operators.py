"""Compiled differential operators (CONTRACT.md section 9) against nested torch.func derivatives."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import diagramc
from diagramc.compiler import cache
from diagramc.cli import main
from diagramc.compiler.operators import OperatorSpec, make_plan
from diagramc.runtime import operator_fused

from .reference import random_params, reference_derivatives

TOL = 1e-9


def contracted(params, x, activation, operator, mixing):
    """sum c_alpha D^alpha f from nested jacfwd: (batch, m), or (batch, 1) when mixing."""
    alphas = sorted({k[1] if mixing else k for k, _ in operator})
    D = reference_derivatives(params, x, activation, alphas)
    col = {a: i for i, a in enumerate(alphas)}
    if mixing:
        return sum(c * D[:, o, col[a]] for (o, a), c in operator)[:, None]
    return sum(c * D[:, :, col[a]] for a, c in operator)


def random_operator(rng, d, order, terms=3):
    """Random multi-indices up to `order` (one of exactly that order) with random coefficients."""
    def alpha(k):
        a = [0] * d
        for _ in range(k):
            a[rng.randrange(d)] += 1
        return tuple(a)

    op = {alpha(order): rng.uniform(-2, 2)}
    for _ in range(terms - 1):
        op[alpha(rng.randint(1, order))] = rng.uniform(-2, 2)
    return op


def evaluate(module, params, x):
    if module.__name__.split("_")[-2] == "numpy":
        return torch.as_tensor(module.apply([p.detach().numpy() for p in params], x.detach().numpy()))
    return module.apply(params, x)


def check(module, params, x, activation):
    got = evaluate(module, params, x)
    want = contracted(params, x, activation, module.OPERATOR, module.MIXING)
    assert got.shape == want.shape
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= TOL * max(scale, 1e-3), (got, want)


CASES = [  # layer sizes, activation, operator (name or the order of a random one), seed
    ((3, 7, 6, 1), "tanh", "laplacian", 0),
    ((2, 6, 2), "sigmoid", "laplacian", 1),
    ((3, 5, 5, 4, 6, 1), "softplus", "laplacian", 2),
    ((2, 6, 5, 2), "sin", "biharmonic", 3),
    ((3, 5, 4, 1), "gelu", "biharmonic", 4),
    ((3, 6, 5, 3), "silu", "divergence", 5),
    ((2, 5, 2), "tanh", "divergence", 6),
    ((3, 6, 5, 1), "tanh", 1, 7),
    ((3, 6, 5, 2), "sigmoid", 2, 8),
    ((2, 5, 4, 3, 1), "softplus", 3, 9),
    ((3, 5, 5, 1), "sin", 3, 10),
    ((2, 4, 4, 4, 4, 1), "gelu", 4, 11),
    ((2, 5, 6, 2), "silu", 4, 12),
    ((3, 4, 1), "x*tanh(x)", 3, 13),
    ((2, 16, 16, 1), "tanh", "biharmonic", 14),  # wide enough that the plan collapses twice
]


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("sizes,activation,operator,seed", CASES)
def test_apply_matches_nested_jacfwd(tmp_path, backend, sizes, activation, operator, seed):
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    if isinstance(operator, int):
        operator = random_operator(rng, sizes[0], operator)
    params = random_params(sizes, generator)
    x = torch.randn(4, sizes[0], generator=generator, dtype=torch.float64)
    module = diagramc.compile_operator(diagramc.Architecture(sizes, activation), operator, backend, out_dir=tmp_path)
    check(module, params, x, activation)


@pytest.mark.parametrize("sizes,activation,operator", [
    ((3, 6, 5, 2), "tanh", "laplacian"),
    ((2, 5, 4, 1), "sin", "biharmonic"),
    ((2, 5, 4, 2), "silu", {(0, (2, 1)): 0.7, (1, (0, 2)): -1.3, (1, (1, 0)): 0.4}),
    ((3, 5, 4, 1), "softplus", {(1, 0, 0): 0.5, (0, 2, 0): -1.0, (1, 1, 1): 0.25}),
    ((2, 16, 16, 1), "sin", "biharmonic"),
])
def test_gradients_match_double_backward(tmp_path, sizes, activation, operator):
    generator = torch.Generator().manual_seed(11)
    params = [p.requires_grad_(True) for p in random_params(sizes, generator)]
    x = torch.randn(3, sizes[0], generator=generator, dtype=torch.float64, requires_grad=True)
    module = diagramc.compile_operator(diagramc.Architecture(sizes, activation), operator, "torch", out_dir=tmp_path)
    got = module.apply(params, x)
    want = contracted(params, x, activation, module.OPERATOR, module.MIXING)
    weights = torch.randn(got.shape, generator=generator, dtype=torch.float64)
    g_got = torch.autograd.grad((got * weights).sum(), params + [x], allow_unused=True, materialize_grads=True)
    g_want = torch.autograd.grad((want * weights).sum(), params + [x], allow_unused=True, materialize_grads=True)
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, rtol=TOL, atol=TOL * max(b.abs().max().item(), 1e-3))


def test_mixed_operator_with_time_and_order_zero(tmp_path):
    # u_t - u_xx - u_yy + 0.5 u, time as input 0: every output alike
    generator = torch.Generator().manual_seed(3)
    sizes = (3, 6, 6, 2)
    params = random_params(sizes, generator)
    x = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    op = {(1, 0, 0): 1.0, (0, 2, 0): -1.0, (0, 0, 2): -1.0, (0, 0, 0): 0.5}
    for backend in ("torch", "numpy"):
        module = diagramc.compile_operator(diagramc.Architecture(sizes, "tanh"), op, backend, out_dir=tmp_path)
        check(module, params, x, "tanh")
        assert module.OPERATOR == (((0, 0, 0), 0.5), ((1, 0, 0), 1.0), ((0, 2, 0), -1.0), ((0, 0, 2), -1.0))


def test_dims_restrict_the_laplacian(tmp_path):
    generator = torch.Generator().manual_seed(4)
    sizes = (3, 6, 5, 1)
    params = random_params(sizes, generator)
    x = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    arch = diagramc.Architecture(sizes, "tanh")
    space = diagramc.compile_operator(arch, "laplacian", "torch", dims=(1, 2), out_dir=tmp_path)
    assert space.OPERATOR == (((0, 2, 0), 1.0), ((0, 0, 2), 1.0))
    check(space, params, x, "tanh")
    bi = diagramc.compile_operator(arch, "biharmonic", "numpy", dims=(0, 2), out_dir=tmp_path)
    assert bi.OPERATOR == (((4, 0, 0), 1.0), ((2, 0, 2), 2.0), ((0, 0, 4), 1.0))
    check(bi, params, x, "tanh")


def test_mixing_outputs_and_divergence(tmp_path):
    arch = diagramc.Architecture((3, 5, 3), "tanh")
    div = diagramc.compile_operator(arch, "divergence", "torch", out_dir=tmp_path)
    assert div.MIXING and div.OPERATOR == (((0, (1, 0, 0)), 1.0), ((1, (0, 1, 0)), 1.0), ((2, (0, 0, 1)), 1.0))
    generator = torch.Generator().manual_seed(5)
    params = random_params((3, 5, 3), generator)
    x = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    assert div.apply(params, x).shape == (6, 1)
    trace = torch.vmap(torch.func.jacfwd(lambda p: params[2] @ torch.tanh(params[0] @ p + params[1]) + params[3]))(x)
    assert torch.allclose(div.apply(params, x)[:, 0], trace.diagonal(dim1=1, dim2=2).sum(1), rtol=1e-12)


def test_no_hidden_layers_and_no_vertices(tmp_path):
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    linear = random_params((2, 3), generator)
    op = {(1, 0): 2.0, (0, 0): 1.0, (1, 1): 5.0}
    for backend in ("torch", "numpy"):
        module = diagramc.compile_operator(diagramc.Architecture((2, 3), "tanh"), op, backend, out_dir=tmp_path)
        check(module, linear, x, "tanh")
        relu = diagramc.compile_operator(diagramc.Architecture((2, 4, 1), "relu"), "laplacian", backend, out_dir=tmp_path)
        assert np.allclose(np.asarray(evaluate(relu, random_params((2, 4, 1), generator), x)), 0.0)


def test_module_header_constants_and_plan(tmp_path):
    arch = diagramc.Architecture((4, 8, 8, 1), "tanh")
    module = diagramc.compile_operator(arch, "laplacian", "numpy", out_dir=tmp_path)
    text = open(module.__file__).read()
    assert text.startswith("# Generated by diagramc")
    assert "diagramc compile --operator laplacian --layer-sizes 4,8,8,1" in text.splitlines()[1]
    assert "import sympy" not in text and "jinja2" not in text
    assert (module.INPUTS, module.OUTPUTS, module.HIDDEN_LAYERS, module.ACTIVATION, module.ORDER) == (4, 1, 2, "tanh", 2)
    assert module.MULTIPLY_ADDS > 0 and len(text.splitlines()) < 150
    plan = make_plan(OperatorSpec.create(diagramc.Architecture((50, 768, 768, 512, 512, 1), "tanh"), "laplacian"))
    assert plan.kind == "forward-laplacian" and plan.collapse and plan.rows == 52
    assert "why" in plan.describe() and plan.to_json()["rows"] == 52


def test_float32_numpy_keeps_dtype(tmp_path):
    module = diagramc.compile_operator(diagramc.Architecture((2, 4, 1), "sin"), "laplacian", "numpy", out_dir=tmp_path)
    generator = torch.Generator().manual_seed(7)
    params = [p.float().numpy() for p in random_params((2, 4, 1), generator)]
    assert module.apply(params, np.ones((3, 2), dtype=np.float32)).dtype == np.float32


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_bad_inputs_raise_value_errors_naming_them(tmp_path, backend):
    module = diagramc.compile_operator(diagramc.Architecture((3, 4, 1), "tanh"), "laplacian", backend, out_dir=tmp_path)
    params = random_params((3, 4, 1), torch.Generator().manual_seed(0))
    if backend == "numpy":
        params = [p.numpy() for p in params]
    x = params[0][:2, :3] * 0 + 1.0
    with pytest.raises(ValueError, match=r"params\[2\] \(W2\) has shape \(1, 5\); expected \(1, 4\)"):
        module.apply(params[:2] + [params[2][:, [0, 1, 2, 3, 0]]] + params[3:], x)
    with pytest.raises(ValueError, match=r"x has shape \(2, 2\); expected \(batch, 3\)"):
        module.apply(params, x[:, :2])
    with pytest.raises(ValueError, match=r"params has 2 arrays; expected 4"):
        module.apply(params[:2], x)
    if backend == "torch":
        with pytest.raises(ValueError, match=r"params\[0\] \(W1\) is torch.float64 .* expected x's torch.float32"):
            module.apply(params, x.float())


@pytest.mark.parametrize("operator,dims,sizes,message", [
    ("curl", None, (3, 4, 1), "unknown operator 'curl'"),
    ("divergence", None, (3, 4, 2), "OUTPUTS == INPUTS"),
    ("laplacian", (0, 3), (3, 4, 1), "dims"),
    ({(1, 0, 0): 1.0}, (0,), (3, 4, 1), "dims restricts"),
    ({}, None, (3, 4, 1), "empty"),
    ({(1, 0): 1.0}, None, (3, 4, 1), "expected 3"),
    ({(5, (1, 0, 0)): 1.0}, None, (3, 4, 2), "out of range"),
    ({(1, 0, 0): "a"}, None, (3, 4, 1), "not a real number"),
    ([1, 2], None, (3, 4, 1), "mapping"),
])
def test_bad_operators_raise(operator, dims, sizes, message):
    with pytest.raises(diagramc.DiagramcError, match=message):
        diagramc.compile_operator(diagramc.Architecture(sizes, "tanh"), operator, dims=dims)


def test_operator_one_liner_keeps_the_module(tmp_path, monkeypatch):
    monkeypatch.setenv("DIAGRAMC_CACHE", str(tmp_path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    first = diagramc.operator(model, x, "laplacian")
    params = [p.detach() for p in diagramc.params_from_torch(model)]
    assert torch.allclose(first, contracted(params, x.detach(), "tanh", ((((2, 0)), 1.0), ((0, 2), 1.0)), False))
    monkeypatch.setattr(cache, "load", lambda *a: pytest.fail("a repeated request touched the cache"))
    again = diagramc.operator(model, x, "laplacian")
    again.sum().backward()
    assert torch.equal(first, again) and x.grad is not None and model[0].weight.grad is not None


def test_cli_compiles_operators(tmp_path, capsys):
    assert main(["compile", "--operator", "laplacian", "--dims", "0,1", "--layer-sizes", "3,8,1",
                 "--activation", "tanh", "-o", str(tmp_path)]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert path.endswith(".py") and "operator_laplacian" in path
    assert main(["compile", "--operator-term", "1,0:1", "--operator-term", "0,2:-1.5", "--layer-sizes", "2,8,1",
                 "--activation", "sin", "--backend", "torch", "-o", str(tmp_path)]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    command = open(path).read().splitlines()[1].strip()
    assert command.endswith(f"--operator-term 1,0:1.0 --operator-term 0,2:-1.5 --layer-sizes 2,8,1 --activation sin "
                            f"--backend torch -o {tmp_path}")
    assert main(["compile", "--operator-term", "0:1,0:1", "--operator-term", "1:0,1:1", "--layer-sizes", "2,4,2",
                 "--activation", "tanh", "-o", str(tmp_path)]) == 0


@pytest.mark.parametrize("argv,message", [
    (["--operator", "curl"], "--operator"),
    (["--operator-term", "2,0,0"], "operator term"),
    (["--operator-term", "2,0,x:1"], "operator term"),
    (["--operator", "laplacian", "--operator-term", "2,0,0:1"], "not both"),
    (["--operator", "laplacian", "--order", "2"], "--order"),
    (["--dims", "0"], "--dims needs --operator"),
    (["--operator", "laplacian", "--dims", "0,7"], "dims"),
    (["--operator", "laplacian", "--multi-index", "1,0,0"], "--multi-index"),
    ([], "--order"),
])
def test_cli_operator_errors(tmp_path, capsys, argv, message):
    code = main(["compile", *argv, "--layer-sizes", "3,4,1", "--activation", "tanh", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("diagramc: error:") and message in err and len(err.strip().splitlines()) == 1


def test_poisson_example_runs_small(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("DIAGRAMC_CACHE", str(tmp_path / "cache"))
    path = Path(__file__).resolve().parents[1] / "examples" / "poisson_pinn.py"
    spec = importlib.util.spec_from_file_location("poisson_pinn", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    report = example.main(["--steps", "3", "--width", "6", "--points", "16", "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "poisson.png").stat().st_size > 0
    assert report["steps"] == 3 and 0 < report["relative_l2_error"] < 10


def test_runtime_tables_collapse_the_top():
    from diagramc.runtime.operator_tables import Tables, named_operator

    heat = (((1, 0, 0), 1.0), ((0, 2, 0), -1.0), ((0, 0, 2), -1.0))
    t = Tables(heat, 3, 1, mixing=False, collapse=True)
    assert t.series == [(0, 0, 0), (0, 1, 0), (0, 0, 1)] and t.top == [(1, 0, 0), (0, 2, 0), (0, 0, 2)]
    assert t.rows == 4 and t.quadratic_kind == "uniform" and t.quadratic[0, 0, 0] == -2.0  # c alpha!
    assert t.input_rows.tolist() == [[0, 1, 0], [0, 0, 1], [1, 0, 0]]  # e_y, e_z, then u_t's weight
    full = Tables(heat, 3, 1, mixing=False, collapse=False)
    assert full.rows == 6 and not full.groups and full.series_order == 2
    bi = Tables(named_operator("biharmonic", 2, 1), 2, 1, mixing=False, collapse=True)
    assert [sum(a) for a in bi.top] == [4, 4, 4] and max(map(sum, bi.series)) == 3
    assert named_operator("divergence", 2, 2) == (((0, (1, 0)), 1.0), ((1, (0, 1)), 1.0))


@pytest.mark.parametrize("sizes,activation,operator", [
    ((3, 6, 5, 2), "sin", "biharmonic"),
    ((2, 5, 4, 1), "tanh", {(2, 1): 0.7, (0, 3): -1.2, (1, 0): 0.3}),
    ((2, 5, 4, 2), "silu", {(0, (2, 2)): 0.7, (1, (1, 3)): -1.3}),
    ((2, 6, 6, 6, 1), "softplus", "biharmonic"),
    ((3, 5, 4, 1), "gelu", {(1, 1, 1): 1.0}),
])
def test_collapsed_twice_through_the_runtime(tmp_path, sizes, activation, operator):
    """Tables(twice=True) on networks whose plan would not choose it, both runtimes."""
    from diagramc.runtime import operator_numpy, operator_torch
    from diagramc.runtime.operator_tables import Tables

    generator = torch.Generator().manual_seed(9)
    params = random_params(sizes, generator)
    x = torch.randn(4, sizes[0], generator=generator, dtype=torch.float64)
    for backend, rt in (("torch", operator_torch), ("numpy", operator_numpy)):
        module = diagramc.compile_operator(diagramc.Architecture(sizes, activation), operator, backend, out_dir=tmp_path)
        tables = Tables(module.OPERATOR, module.INPUTS, module.OUTPUTS, module.MIXING, collapse=True, twice=True)
        assert tables.high and tables.second
        p, xx = (params, x) if backend == "torch" else ([q.numpy() for q in params], x.numpy())
        t = rt.tables_on(tables, module.OUTPUTS, xx if backend == "torch" else xx.dtype, {})
        state = rt.series_activation(rt.first_layer(xx, p[0], t), p[1], module._activation, t)
        for layer in range(1, module.HIDDEN_LAYERS):
            state = rt.series_activation(rt.affine(state, p[2 * layer]), p[2 * layer + 1], module._activation, t)
        got = torch.as_tensor(rt.output(state, p[-2], p[-1], t, module.MIXING))
        want = contracted(params, x, activation, module.OPERATOR, module.MIXING)
        assert (got - want).abs().max().item() <= TOL * want.abs().max().item()


FUSED = [  # layer sizes, activation, operator: first-order series and one collapsed row
    ((3, 7, 1), "tanh", "laplacian"),
    ((4, 6, 5, 2), "sigmoid", "laplacian"),
    ((3, 5, 6, 4, 1), "softplus", {(1, 0, 0): 0.7, (0, 2, 0): -1.3, (0, 0, 2): -1.3}),
    ((2, 5, 4, 3, 6, 3), "gelu", "laplacian"),
    ((3, 6, 5, 1), "sin", {(0, 1, 0): 1.0, (0, 0, 1): -0.5}),  # first order only: no quadratic form
    ((4, 6, 6, 2), "silu", "laplacian"),
    ((3, 5, 5, 1), "x*tanh(x)", {(2, 0, 0): 0.5, (0, 2, 0): 0.5, (0, 0, 2): 0.5, (1, 0, 0): 2.0}),
]


@pytest.mark.parametrize("sizes,activation,operator", FUSED)
def test_fused_forward_laplacian_and_its_written_backward(tmp_path, sizes, activation, operator):
    generator = torch.Generator().manual_seed(len(sizes) * 31 + sizes[1])
    params = [p.requires_grad_(True) for p in random_params(sizes, generator)]
    x = (torch.randn(5, sizes[0], generator=generator, dtype=torch.float64) + 0.5).requires_grad_(True)
    module = diagramc.compile_operator(diagramc.Architecture(sizes, activation), operator, "torch", out_dir=tmp_path)
    assert "rt.forward_laplacian(" in open(module.__file__).read()
    check_with_gradients(module, module.apply(params, x), params, x, activation, generator)


def check_with_gradients(module, got, params, x, activation, generator):
    """got (the module's apply at x) and its gradients in every parameter and x against nested jacfwd."""
    want = contracted(params, x, activation, module.OPERATOR, module.MIXING)
    assert (got - want).abs().max().item() <= TOL * max(want.abs().max().item(), 1e-3)
    weights = torch.randn(got.shape, generator=generator, dtype=torch.float64)
    g_got = torch.autograd.grad((got * weights).sum(), params + [x], allow_unused=True, materialize_grads=True)
    g_want = torch.autograd.grad((want * weights).sum(), params + [x], allow_unused=True, materialize_grads=True)
    for a, b in zip(g_got, g_want):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=TOL, atol=TOL * max(b.abs().max().item(), 1e-3))


def test_fused_kernel_restores_threads_and_keeps_float32(tmp_path):
    sizes = (3, 8, 8, 1)
    generator = torch.Generator().manual_seed(5)
    params = [p.float().requires_grad_(True) for p in random_params(sizes, generator)]
    x = torch.randn(6, 3, generator=generator).float()
    module = diagramc.compile_operator(diagramc.Architecture(sizes, "tanh"), "laplacian", "torch", out_dir=tmp_path)
    threads = torch.get_num_threads()
    out = module.apply(params, x)
    torch.autograd.grad(out.sum(), params)
    assert torch.get_num_threads() == threads
    assert out.dtype == torch.float32
    want = contracted([p.double() for p in params], x.double(), "tanh", module.OPERATOR, module.MIXING)
    assert torch.allclose(out.double(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation,hidden,seed", [
    ("tanh", 2, 0), ("sigmoid", 3, 1), ("softplus", 2, 2), ("gelu", 3, 3), ("sin", 2, 4), ("silu", 2, 5),
    ("x*tanh(x)", 3, 6),
])
def test_numba_loops_agree_with_the_torch_forward_laplacian(tmp_path, activation, hidden, seed):
    """ForwardLaplacianLoops (numba loops, NumPy's products) against ForwardLaplacian's torch
    operations in float64: values and gradients in x and every parameter, Laplacian and u_t - Delta u."""
    from diagramc.runtime import operator_torch as ot

    rng = random.Random(seed)
    d = rng.randint(2, 5)
    sizes = (d,) + tuple(rng.randint(3, 9) for _ in range(hidden)) + (rng.randint(1, 2),)
    heat = {tuple(int(i == 0) for i in range(d)): 0.7,
            **{tuple(2 * int(i == k) for i in range(d)): -1.3 for k in range(1, d)}}
    generator = torch.Generator().manual_seed(seed)
    for operator in ("laplacian", heat):
        module = diagramc.compile_operator(diagramc.Architecture(sizes, activation), operator, "torch",
                                           out_dir=tmp_path)
        assert module._fused_activation is not None
        params = [p.requires_grad_(True) for p in random_params(sizes, generator)]
        x = (torch.randn(7, d, generator=generator, dtype=torch.float64) + 0.3).requires_grad_(True)
        t = ot.tables_on(module._TABLES, module.OUTPUTS, x, module._ON)
        got = ot.ForwardLaplacianLoops.apply(x, module._fused_activation, t, *params)
        want = ot.ForwardLaplacian.apply(x, module._activation, t, *params)
        assert got.dtype == torch.float64 and got.shape == want.shape
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
        weights = torch.randn(got.shape, generator=generator, dtype=torch.float64)
        g_got = torch.autograd.grad((got * weights).sum(), params + [x])
        g_want = torch.autograd.grad((want * weights).sum(), params + [x])
        for a, b in zip(g_got, g_want):
            assert a.shape == b.shape and a.dtype == b.dtype
            assert torch.allclose(a, b, rtol=1e-11, atol=1e-11 * max(b.abs().max().item(), 1e-3))


def test_loops_see_parameters_updated_in_place(tmp_path):
    """The loops keep NumPy views of the parameters between calls: an optimizer's in-place steps show."""
    from diagramc.runtime import operator_torch as ot

    sizes = (3, 8, 7, 1)
    module = diagramc.compile_operator(diagramc.Architecture(sizes, "tanh"), "laplacian", "torch", out_dir=tmp_path)
    params = [p.requires_grad_(True) for p in random_params(sizes, torch.Generator().manual_seed(4))]
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.2
    optimizer = torch.optim.SGD(params, lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        module.apply(params, x).square().sum().backward()
        optimizer.step()
    t = ot.tables_on(module._TABLES, module.OUTPUTS, x, module._ON)
    got = ot.ForwardLaplacianLoops.apply(x, module._fused_activation, t, *params)
    want = contracted(params, x, "tanh", module.OPERATOR, module.MIXING)
    assert (got - want).abs().max().item() <= TOL * max(want.abs().max().item(), 1e-3)


def test_activation_numba_cannot_compile_falls_back_to_torch(tmp_path):
    from diagramc.runtime import operator_torch as ot
    from diagramc.runtime.numpy_loops import jit

    @jit()
    def untyped(zs, value, weights):
        value[0, 0] = np.linalg.svd(zs)  # an array into a number: numba refuses to type it

    sizes = (3, 6, 5, 1)
    module = diagramc.compile_operator(diagramc.Architecture(sizes, "tanh"), "laplacian", "torch", out_dir=tmp_path)
    params = [p.requires_grad_(True) for p in random_params(sizes, torch.Generator().manual_seed(6))]
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    t = ot.tables_on(module._TABLES, module.OUTPUTS, x, module._ON)
    got = ot.forward_laplacian(params, x, module._activation, t, untyped)
    assert untyped in operator_fused.UNCOMPILED
    want = contracted(params, x, "tanh", module.OPERATOR, module.MIXING)
    assert (got - want).abs().max().item() <= TOL * max(want.abs().max().item(), 1e-3)
    assert torch.autograd.grad(got.sum(), params)[0].shape == params[0].shape


def test_loops_restore_blas_threads(tmp_path):
    """The loops hold BLAS to one thread for small products and give each library its count back."""
    from diagramc.runtime import threads

    np.ones((4, 4)) @ np.ones((4, 4))  # NumPy's BLAS loaded
    calls = threads._blas_libraries()
    if not calls:
        pytest.skip("threadpoolctl finds no BLAS here")
    sizes = (3, 8, 8, 1)
    module = diagramc.compile_operator(diagramc.Architecture(sizes, "tanh"), "laplacian", "torch", out_dir=tmp_path)
    params = [p.requires_grad_(True) for p in random_params(sizes, torch.Generator().manual_seed(2))]
    x = torch.randn(5, 3, dtype=torch.float64)
    before = [get() for get, _ in calls]
    try:
        for _, set_ in calls:
            set_(2)
        seen = []
        with threads.blas_threads(1):
            seen = [get() for get, _ in calls]
        torch.autograd.grad(module.apply(params, x).sum(), params)
        assert seen == [1] * len(calls) and [get() for get, _ in calls] == [2] * len(calls)
    finally:
        for (_, set_), count in zip(calls, before):
            set_(count)


def test_split_activation_hoists_only_calls_on_z():
    from diagramc.compiler.operators import split_activation
    from diagramc.compiler.printing import activation_code

    calls, rest = split_activation(activation_code(diagramc.Architecture((2, 3, 1), "tanh").activation, 3, "scalar"))
    assert [(n, f) for n, f, _ in calls] == [("u", "tanh"), ("s_exp", "exp")] and not any("math." in r for r in rest)
    calls, rest = split_activation(activation_code(diagramc.Architecture((2, 3, 1), "softplus").activation, 3, "scalar"))
    assert [f for _, f, _ in calls] == ["exp"] and any("math.log1p" in r for r in rest)  # log1p(exp(...)): nested, kept


BIHARMONIC = [  # layer sizes, activation, operator, dims: c sum_ik d_i^2 d_k^2, the fused kernel's form
    ((3, 7, 1), "tanh", "biharmonic", None),
    ((4, 6, 5, 2), "sigmoid", "biharmonic", (0, 2, 3)),
    ((3, 5, 6, 4, 1), "softplus", "biharmonic", None),
    ((2, 5, 4, 3, 6, 3), "gelu", "biharmonic", None),
    ((3, 6, 5, 1), "sin", {(4, 0, 0): -0.5, (0, 4, 0): -0.5, (2, 2, 0): -1.0}, None),  # -1/2 over inputs 0, 1
    ((5, 6, 6, 2), "silu", "biharmonic", (4,)),
    ((2, 5, 5, 1), "x*tanh(x)", "biharmonic", None),
]


@pytest.mark.parametrize("sizes,activation,operator,dims", BIHARMONIC)
def test_fused_biharmonic_and_its_written_backward(tmp_path, sizes, activation, operator, dims):
    """ForwardBiharmonicLoops (value, first and second derivatives, collapsed third and fourth)
    against nested jacfwd contracted with the operator: values, and gradients in x and every parameter."""
    from diagramc.runtime import operator_torch as ot

    generator = torch.Generator().manual_seed(len(sizes) * 17 + sizes[1])
    params = [p.requires_grad_(True) for p in random_params(sizes, generator)]
    x = (torch.randn(5, sizes[0], generator=generator, dtype=torch.float64) + 0.4).requires_grad_(True)
    module = diagramc.compile_operator(diagramc.Architecture(sizes, activation), operator, "torch", dims=dims,
                                       out_dir=tmp_path)
    assert "rt.forward_biharmonic(" in open(module.__file__).read()
    t = ot.tables_on(module._TABLES, module.OUTPUTS, x, module._ON)
    used = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ot.ForwardBiharmonicLoops, "apply",
                      lambda *a, apply=ot.ForwardBiharmonicLoops.apply: used.append(1) or apply(*a))
        got = module.apply(params, x)
    assert used and "biharmonic" in t
    check_with_gradients(module, got, params, x, activation, generator)


def test_fused_biharmonic_float32_and_the_series_where_loops_cannot_serve(tmp_path):
    """float32 stays float32; under a torch.func transform (no NumPy views) the module's series serve."""
    sizes = (3, 8, 8, 1)
    generator = torch.Generator().manual_seed(8)
    params = random_params(sizes, generator)
    x = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    module = diagramc.compile_operator(diagramc.Architecture(sizes, "tanh"), "biharmonic", "torch", out_dir=tmp_path)
    want = contracted(params, x, "tanh", module.OPERATOR, module.MIXING)
    out = module.apply([p.float() for p in params], x.float())
    assert out.dtype == torch.float32
    assert torch.allclose(out.double(), want, rtol=1e-4, atol=1e-4 * want.abs().max().item())
    per_point = torch.func.vmap(lambda y: module.apply(params, y[None])[0])(x)
    assert (per_point - want).abs().max().item() <= TOL * want.abs().max().item()


@pytest.mark.parametrize("operator,dims,form", [
    ("biharmonic", None, ((0, 1, 2), 1.0)),
    ("biharmonic", (0, 2), ((0, 2), 1.0)),
    ({(4, 0, 0): 3.0, (0, 4, 0): 3.0, (2, 2, 0): 6.0}, None, ((0, 1), 3.0)),
    ({(4, 0, 0): 1.0, (0, 4, 0): 1.0, (2, 2, 0): 1.0}, None, None),  # not the biharmonic's 2
    ({(4, 0, 0): 1.0, (0, 4, 0): 1.0, (2, 2, 0): 2.0, (1, 0, 0): 1.0}, None, None),  # a term more
    ("laplacian", None, None),
])
def test_biharmonic_form_recognises_the_operator(operator, dims, form):
    from diagramc.compiler.operators import biharmonic_form

    spec = OperatorSpec.create(diagramc.Architecture((3, 4, 1), "tanh"), operator, "torch", dims)
    assert biharmonic_form(spec) == form


def test_fused_biharmonic_gives_way_where_numba_cannot_compile_the_activation(tmp_path):
    from diagramc.runtime import operator_torch as ot
    from diagramc.runtime.numpy_loops import jit

    @jit()
    def untyped(zs, value, weights):
        value[0, 0] = np.linalg.svd(zs)  # an array into a number: numba refuses to type it

    module = diagramc.compile_operator(diagramc.Architecture((2, 5, 4, 1), "tanh"), "biharmonic", "torch",
                                       out_dir=tmp_path)
    x = torch.randn(3, 2, dtype=torch.float64)
    params = random_params((2, 5, 4, 1), torch.Generator().manual_seed(3))
    t = ot.tables_on(module._TABLES, module.OUTPUTS, x, module._ON)
    assert ot.forward_biharmonic(params, x, t, untyped, (0, 1), 1.0) is None
    assert untyped in operator_fused.UNCOMPILED


@pytest.mark.parametrize("sizes,activation,operator", [
    ((3, 6, 5, 1), "tanh", "laplacian"),
    ((3, 5, 6, 2), "softplus", {(1, 0, 0): 0.7, (0, 2, 0): -1.3, (0, 0, 2): -1.3}),
    ((3, 6, 5, 4, 2), "sigmoid", "biharmonic"),
])
def test_fused_nodes_split_the_batch_over_threads(tmp_path, monkeypatch, sizes, activation, operator):
    """The batch's slices on threads, and the backward's rows remade a point at a time, give the
    whole batch's values and gradients (x and parameters)."""

    module = diagramc.compile_operator(diagramc.Architecture(sizes, activation), operator, "torch", out_dir=tmp_path)
    generator = torch.Generator().manual_seed(21)
    params = [p.requires_grad_(True) for p in random_params(sizes, generator)]
    x = (torch.randn(11, sizes[0], generator=generator, dtype=torch.float64) + 0.2).requires_grad_(True)
    results, seen, real = [], [], operator_fused.parts
    monkeypatch.setattr(operator_fused, "parts", lambda *a: seen.append(real(*a)) or seen[-1])
    monkeypatch.setattr(operator_fused, "POINTS_PER_THREAD", 2)
    monkeypatch.setattr(diagramc.runtime.threads, "get_num_threads", lambda: 3)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(4)  # the parts follow the smaller of diagramc's and torch's counts
    try:
        for split in (False, True):
            monkeypatch.setattr(operator_fused, "SPLIT_WORK", 1 if split else 2**62)
            monkeypatch.setattr(operator_fused, "CHUNK_ELEMENTS", 1 if split else 2**62)  # a point at a time
            out = module.apply(params, x)
            assert (seen[-1] is not None) == split and (not split or len(seen[-1]) == 3)
            results.append((out, torch.autograd.grad(out.square().sum(), params + [x])))
    finally:
        torch.set_num_threads(torch_threads)
    (whole, g_whole), (split, g_split) = results
    want = contracted(params, x, activation, module.OPERATOR, module.MIXING)
    assert (split - want).abs().max().item() <= TOL * max(want.abs().max().item(), 1e-3)
    assert torch.allclose(split, whole, rtol=1e-13, atol=1e-13 * whole.abs().max().item())
    for a, b in zip(g_split, g_whole):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * max(b.abs().max().item(), 1e-3))


@pytest.mark.parametrize("sizes,activation,operator,dims", [case + (None,) for case in FUSED[:4]] + BIHARMONIC[:4])
def test_numpy_modules_run_the_fused_loops(tmp_path, monkeypatch, sizes, activation, operator, dims):
    """The NumPy backend's forward Laplacian and biharmonic go through operator_fused's loops, whole
    batch and split over threads, and agree with nested jacfwd."""
    module = diagramc.compile_operator(diagramc.Architecture(sizes, activation), operator, "numpy", dims=dims,
                                       out_dir=tmp_path)
    kind = json.loads(module.PLAN)["kernel"].removeprefix("fused-")
    assert kind in ("laplacian", "biharmonic") and f"rt.forward_{kind}(" in open(module.__file__).read()
    used, real = [], getattr(operator_fused, f"{kind}_forward")
    monkeypatch.setattr(operator_fused, f"{kind}_forward", lambda *a: used.append(1) or real(*a))
    generator = torch.Generator().manual_seed(sizes[1])
    params = random_params(sizes, generator)
    x = torch.randn(9, sizes[0], generator=generator, dtype=torch.float64) + 0.3
    check(module, params, x, activation)
    monkeypatch.setattr(operator_fused, "POINTS_PER_THREAD", 2)
    monkeypatch.setattr(operator_fused, "SPLIT_WORK", 1)
    monkeypatch.setattr(diagramc.runtime.threads, "get_num_threads", lambda: 2)
    check(module, params, x, activation)
    assert len(used) == 3  # once whole, then once per slice
