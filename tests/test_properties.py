"""Property-based: random architectures, activations, points and multi-indices against torch.func."""
import math
import time

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import diagramc

from .reference import TORCH_ACTIVATIONS, random_params, reference_derivatives

ACTIVATIONS = ["tanh", "sigmoid", "softplus", "sin", "gelu", "silu", "relu", "x*tanh(x)"]


@st.composite
def cases(draw):
    d = draw(st.integers(1, 3))
    hidden = draw(st.integers(1, 3))
    sizes = (d,) + tuple(draw(st.integers(1, 4)) for _ in range(hidden)) + (draw(st.integers(1, 2)),)
    activation = draw(st.sampled_from(ACTIVATIONS))
    alphas = draw(st.lists(st.tuples(*[st.integers(0, 3)] * d), min_size=1, max_size=4, unique=True))
    alphas = [a for a in alphas if sum(a) <= 4] or [(1,) + (0,) * (d - 1)]
    seed = draw(st.integers(0, 2**31 - 1))
    backend = draw(st.sampled_from(["numpy", "torch"]))
    batch = draw(st.integers(1, 12))  # from 8 on, layer 1's top order is folded into one matrix
    return sizes, activation, alphas, seed, backend, batch


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_random_kernels_match_jacfwd(case, tmp_path_factory):
    sizes, activation, alphas, seed, backend, batch = case
    assert activation in TORCH_ACTIVATIONS
    arch = diagramc.Architecture(sizes, activation)
    order = max(sum(a) for a in alphas)
    mod = diagramc.compile(arch, order, backend, multi_indices=alphas,
                           out_dir=tmp_path_factory.getbasetemp() / "kernels")
    gen = torch.Generator().manual_seed(seed)
    params = random_params(sizes, gen)
    x = torch.randn(batch, sizes[0], generator=gen, dtype=torch.float64) * 1.5
    want = reference_derivatives(params, x, activation, mod.MULTI_INDICES)
    if backend == "numpy":
        got = torch.as_tensor(mod.derivatives([p.numpy() for p in params], x.numpy()))
    else:
        got = mod.derivatives(params, x)
    scale = max(1.0, want.abs().max().item())
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-9 * scale), (got - want).abs().max()
    assert all(math.isfinite(v) for v in got.flatten().tolist())


# --- random custom activations: well-formed expressions from the whitelist ------------------
# Each draw builds the text diagramc parses and, from the same tree, a torch function for the
# reference (nested jacfwd): nothing of diagramc's parser or derivation is in the reference.
UNARY = {
    "tanh": torch.tanh, "sin": torch.sin, "cos": torch.cos, "sigmoid": torch.sigmoid, "atan": torch.atan,
    "asinh": torch.asinh, "erf": torch.erf, "exp": torch.exp,
    "softplus": lambda a: torch.logaddexp(a, torch.zeros_like(a)),
}
WRAPPED = {  # functions of a well-formed argument that stay finite on the reals
    "log(1 + ({})**2)": lambda a: torch.log(1 + a**2),
    "sqrt(2 + sin({}))": lambda a: torch.sqrt(2 + torch.sin(a)),
    "({})**2": lambda a: a**2,
    "({})**3/4": lambda a: a**3 / 4,
}
CONSTANTS = ["0.5", "2", "1.5", "3"]


@st.composite
def expressions(draw, depth=3):
    """(text, torch function) of a random well-formed expression in x."""
    kind = draw(st.sampled_from(["x", "x", "unary", "wrapped", "binary", "scaled"] if depth > 0 else ["x"]))
    if kind == "x":
        return "x", lambda z: z
    if kind == "unary":
        name = draw(st.sampled_from(sorted(UNARY)))
        text, f = draw(expressions(depth - 1))
        if name == "exp":  # exp of a bounded argument: no overflow far from the points either
            return f"exp(tanh({text}))", lambda z: torch.exp(torch.tanh(f(z)))
        return f"{name}({text})", lambda z: UNARY[name](f(z))
    if kind == "wrapped":
        template = draw(st.sampled_from(sorted(WRAPPED)))
        text, f = draw(expressions(depth - 1))
        return template.format(text), lambda z: WRAPPED[template](f(z))
    if kind == "scaled":
        c = draw(st.sampled_from(CONSTANTS))
        text, f = draw(expressions(depth - 1))
        return f"{c}*({text})", lambda z: float(c) * f(z)
    op = draw(st.sampled_from(["+", "-", "*", "/"]))
    (a, fa), (b, fb) = draw(expressions(depth - 1)), draw(expressions(depth - 1))
    if op == "/":
        return f"({a})/(2 + cos({b}))", lambda z: fa(z) / (2 + torch.cos(fb(z)))
    ops = {"+": lambda u, v: u + v, "-": lambda u, v: u - v, "*": lambda u, v: u * v}
    return f"({a}) {op} ({b})", lambda z: ops[op](fa(z), fb(z))


@st.composite
def long_chains(draw):
    """A chain of unary calls nested up to the 500-character limit."""
    names = draw(st.lists(st.sampled_from(["tanh", "sin", "atan", "sigmoid", "erf", "asinh"]), min_size=20, max_size=90))
    text, functions = "x", []
    for name in names:
        if len(name) + 2 + len(text) > 500:
            break
        text = f"{name}({text})"
        functions.append(UNARY[name])

    def f(z):
        for g in functions:
            z = g(z)
        return z

    return text, f


def _check_custom(text, f, order, sizes, seed, tmp_path):
    from .test_taylor_arith import _jacfwd_derivatives

    if "x" not in text.replace("exp", ""):
        return
    start = time.process_time()  # this process's CPU time: the check holds on a loaded machine too
    mod = diagramc.compile(diagramc.Architecture(sizes, text), order, "torch", out_dir=tmp_path)
    assert time.process_time() - start < 5.0, text
    gen = torch.Generator().manual_seed(seed)
    params = random_params(sizes, gen)
    x = torch.randn(2, sizes[0], generator=gen, dtype=torch.float64)
    got = mod.derivatives(params, x)
    want = _jacfwd_derivatives(params, x, f, mod.MULTI_INDICES)
    orders = torch.tensor([sum(a) for a in mod.MULTI_INDICES])
    for k in range(order + 1):
        w, g = want[..., orders == k], got[..., orders == k]
        finite = torch.isfinite(w)
        if not finite.any():
            continue
        scale = w[finite].abs().max()
        assert ((g - w)[finite].abs() <= 1e-9 * scale + 1e-12).all(), (text, k, ((g - w)[finite].abs().max() / scale).item())


NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]  # a failure is reported as found, at once


@settings(derandomize=True, deadline=None, max_examples=10, phases=NO_SHRINK,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(expr=expressions(), order=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_random_custom_activations_match_jacfwd(expr, order, seed, tmp_path_factory):
    """Random whitelisted expressions, orders up to 8 (one input; two up to order 4): compiled
    within seconds, equal to nested jacfwd to 1e-9 of each order's largest derivative."""
    text, f = expr
    sizes = (1, 3, 1) if order > 4 else (2, 2, 1)
    _check_custom(text, f, order, sizes, seed, tmp_path_factory.getbasetemp() / "custom")


@settings(derandomize=True, deadline=None, max_examples=3, phases=NO_SHRINK,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(expr=long_chains(), order=st.integers(2, 6), seed=st.integers(0, 2**31 - 1))
def test_nested_to_the_length_limit(expr, order, seed, tmp_path_factory):
    """Calls nested up to the 500-character limit: Taylor arithmetic, within seconds, exact."""
    text, f = expr
    _check_custom(text, f, order, (1, 2, 1), seed, tmp_path_factory.getbasetemp() / "custom")


JUNK = ["(", ")", "@", "[", ";", "'", "lambda ", "__", "import ", ",", "=", "foo(", ".real", "**", "/"]


@settings(derandomize=True, deadline=None, max_examples=40, phases=NO_SHRINK)
@given(expr=expressions(), junk=st.sampled_from(JUNK), where=st.floats(0, 1))
def test_malformed_expressions_get_the_one_line_error(expr, junk, where):
    """A well-formed expression with junk inserted: either still well-formed, or the contract's
    one-line error (exit status 2) naming what is wrong, never an internal error."""
    import contextlib
    import io

    from diagramc import cli

    text = expr[0]
    cut = int(where * len(text))
    broken = text[:cut] + junk + text[cut:]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["activation", broken, "--order", "2"])
    message = err.getvalue()
    if code == 0:
        return
    assert code == 2 and message.startswith("diagramc: error: ") and message.count("\n") == 1, message
    assert "internal error" not in message, message
