"""The anchors: torch.func nested jacfwd, JAX jacfwd/jet/hessian under jit."""
from __future__ import annotations

import functools
import itertools
import math
import time

import numpy as np

from ..combinatorics import multi_index as mi
from ..runtime import interpolation
from .measure import repeat_call, method_result, skipped_result, synchronize
from .problem import Cell, Settings, make_problem, pack_dense



# ----------------------------------------------------------------------------- torch.func


def _all_orders(jacfwd, f, order):
    """x -> (f, Df, ..., D^order f) by nested forward mode; the primal values come along as aux."""

    def level0(x):
        return f(x), ()

    g = level0
    for _ in range(order):

        def lifted(x, g=g):
            top, lower = g(x)
            return top, lower + (top,)

        g = jacfwd(lifted, has_aux=True)

    def everything(x):
        top, lower = g(x)
        return lower + (top,)

    return everything


def bench_torch_func(cell: Cell, settings: Settings, device: str) -> dict:
    import torch
    from torch.func import jacfwd, vmap

    params, x = make_problem(cell)
    tp = [torch.from_numpy(p).to(device) for p in params]
    tx = torch.from_numpy(x).to(device)

    def f(v):
        h = v
        for i in range(0, len(tp) - 2, 2):
            h = torch.tanh(tp[i] @ h + tp[i + 1])
        return (tp[-2] @ h + tp[-1])[0]

    run = vmap(_all_orders(jacfwd, f, cell.order))

    def call(xs):
        return synchronize(run(xs), device)

    work = cell.batch * (cell.d + 1) ** cell.order
    if work > settings.eager_max_work:
        return skipped_result("skipped", f"quick mode: batch x (d+1)^n = {work:,} tangent columns")
    t0 = time.perf_counter()
    warm_out = call(tx[:1])
    warm = time.perf_counter() - t0
    if cell.batch > 1 and warm > settings.eager_limit / 4:
        # even one point is slow: extrapolate from it rather than probe further
        estimate = warm * cell.batch
        return {
            "status": "estimated", "median_s": None, "estimate_s": estimate,
            "note": f"one point alone took {warm:.1f} s (first call); ~{estimate:.0f} s for batch {cell.batch} "
                    "by linear extrapolation (an upper bound: per-call overhead does not scale)",
            "probes": [(1, warm)], "_packed": pack_dense([t.cpu().numpy() for t in warm_out], cell.d),
            "_packed_rows": 1,
        }
    # Probe on batches 4, 16, 64, ... up to a quarter of the full batch (while a probe is
    # affordable) and extrapolate with the growth seen between the last two probes, at least
    # linear: small batches are dominated by per-op overhead, large ones get slower per point
    # once the d^n tangents stop fitting in cache. Run the full batch only below the limit.
    probes, estimate, growth, probe_out = [], 0.0, 1.0, None
    batch = 4
    while batch < cell.batch:
        t0 = time.perf_counter()
        probe_out = call(tx[:batch])
        probes.append((batch, time.perf_counter() - t0))
        if len(probes) >= 2:
            (b0, t_0), (b1, t_1) = probes[-2:]
            growth = max(1.0, math.log(max(t_1, 1e-9) / max(t_0, 1e-9)) / math.log(b1 / b0))
        estimate = probes[-1][1] * (cell.batch / batch) ** growth
        next_probe = probes[-1][1] * 4**growth
        if batch * 4 >= cell.batch or (estimate > settings.eager_limit and next_probe > settings.eager_limit / 2):
            break
        batch *= 4
    if estimate > settings.eager_limit:
        packed = pack_dense([t.cpu().numpy() for t in probe_out], cell.d)
        timed = ", ".join(f"{t:.2f} s at batch {b}" for b, t in probes)
        return {
            "status": "estimated", "median_s": None, "estimate_s": estimate,
            "note": f"a full run would take ~{estimate:.0f} s (> {settings.eager_limit:.0f} s): timed "
                    f"{timed}; extrapolated as batch^{growth:.2f}",
            "probes": probes, "_packed": packed, "_packed_rows": probes[-1][0],
        }
    times, out = repeat_call(lambda: call(tx), settings, first=estimate or None)
    packed = pack_dense([t.cpu().numpy() for t in out], cell.d)
    return method_result(times, packed, lambda: call(tx), probes=probes)


# ----------------------------------------------------------------------------- JAX


def import_jax():
    try:
        import jax
    except ImportError:
        return None
    jax.config.update("jax_enable_x64", True)
    return jax


def _jax_mlp(params):
    import jax.numpy as jnp

    jp = [jnp.asarray(p) for p in params]

    def f(v):
        h = v
        for i in range(0, len(jp) - 2, 2):
            h = jnp.tanh(jp[i] @ h + jp[i + 1])
        return (jp[-2] @ h + jp[-1])[0]

    return f


def _jit_timed(fn, args, settings: Settings):
    """(times, compile seconds, output, one timed run) of a jitted function; compile = lowering + XLA compile."""
    import jax

    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0

    def call():
        return jax.block_until_ready(compiled(*args))

    times, out = repeat_call(call, settings)
    return times, compile_s, out, call


def bench_jax_jacfwd(cell: Cell, settings: Settings) -> dict:
    jax = import_jax()
    if jax is None:
        return skipped_result("unavailable", "JAX is not installed (pip install diagramc[bench])")
    if cell.order > settings.jax_jacfwd_max_order:
        return skipped_result("skipped", f"quick mode: nested jacfwd at order {cell.order} compiles for ~a minute")
    if cell.batch * cell.d**cell.order > settings.jax_jacfwd_max_entries:
        return skipped_result("skipped", f"quick mode: {cell.batch} x {cell.d}^{cell.order} dense entries")
    params, x = make_problem(cell)
    fn = jax.vmap(_all_orders(jax.jacfwd, _jax_mlp(params), cell.order))
    times, compile_s, out, call = _jit_timed(fn, (jax.numpy.asarray(x),), settings)
    return method_result(times, pack_dense([np.asarray(t) for t in out], cell.d), call, compile_s=compile_s)


def bench_jax_hessian(cell: Cell, settings: Settings) -> dict:
    jax = import_jax()
    if jax is None:
        return skipped_result("unavailable", "JAX is not installed (pip install diagramc[bench])")
    if cell.order != 2:
        return skipped_result("n/a", "order 2 only")
    params, x = make_problem(cell)
    f = _jax_mlp(params)

    def value_gradient_hessian(v):
        # jax.hessian is jacfwd(jacrev(f)); value and gradient come along as aux of the same pass
        def vg(u):
            value, gradient = jax.value_and_grad(f)(u)
            return gradient, (value, gradient)

        hessian, (value, gradient) = jax.jacfwd(vg, has_aux=True)(v)
        return value, gradient, hessian

    times, compile_s, out, call = _jit_timed(jax.vmap(value_gradient_hessian), (jax.numpy.asarray(x),), settings)
    return method_result(times, pack_dense([np.asarray(t) for t in out], cell.d), call, compile_s=compile_s)


@functools.lru_cache(maxsize=32)
def interpolation_coefficients(d: int, n: int, k: int):
    """Griewank-Utke-Walther: D^i f(x) = sum_j gamma_ij c_k(j) for every |i| = k <= n.

    j runs over the order-n multi-indices, read as directions in R^d; c_k(j) is the k-th
    Taylor coefficient (d^k/dt^k / k!) of t -> f(x + t j); gamma_ij in exact rationals
    (runtime.interpolation.gamma), zero unless supp(j) is within supp(i), so only those j are
    visited. Returns sparse (rows, cols, values) over the canonical
    lists of order k (rows) and order n (cols).
    """
    directions = {j: c for c, j in enumerate(mi.of_order(d, n))}
    rows, cols, values = [], [], []
    for r, i in enumerate(mi.of_order(d, k)):
        support = [m for m in range(d) if i[m]]
        for combo in itertools.combinations_with_replacement(support, n):
            j = mi.exponents(combo, d)
            gamma = interpolation.gamma(tuple(sorted((i[m], j[m]) for m in support)), n)
            if gamma:
                rows.append(r)
                cols.append(directions[j])
                values.append(float(gamma))
    return np.array(rows, dtype=np.int32), np.array(cols, dtype=np.int32), np.array(values)


def jet_program(cell: Cell):
    """(all_orders, x, directions): JAX jet along the C(d+n-1, n) directions with exact
    interpolation, as a function of the points to jit, the cell's points, the direction count."""
    import jax
    import jax.numpy as jnp
    from jax.experimental.jet import jet

    params, x = make_problem(cell)
    f = _jax_mlp(params)
    n = cell.order
    directions = jnp.asarray(np.array(mi.of_order(cell.d, n), dtype=float))
    tables = [interpolation_coefficients(cell.d, n, k) for k in range(1, n + 1)]

    def along(v, s):
        zeros = jnp.zeros_like(s)
        value, terms = jet(f, (v,), ([s] + [zeros] * (n - 1),))
        return value, jnp.stack(terms)  # terms[k-1] = d^k/dt^k f(v + t s) at 0

    def all_orders(xs):
        values, terms = jax.vmap(jax.vmap(along, (None, 0)), (0, None))(xs, directions)
        out = [values[:, 0]]
        for k, (rows, cols, gamma) in enumerate(tables, start=1):
            taylor = terms[:, :, k - 1] / math.factorial(k)  # (batch, directions)
            contributions = (taylor[:, cols] * gamma).T  # (nnz, batch)
            out.append(jax.ops.segment_sum(contributions, rows, num_segments=mi.count_of_order(cell.d, k)).T)
        return jnp.concatenate([out[0][:, None]] + out[1:], axis=1)

    return all_orders, x, int(directions.shape[0])


def bench_jax_jet(cell: Cell, settings: Settings) -> dict:
    jax = import_jax()
    if jax is None:
        return skipped_result("unavailable", "JAX is not installed (pip install diagramc[bench])")
    all_orders, x, directions = jet_program(cell)
    times, compile_s, out, call = _jit_timed(all_orders, (jax.numpy.asarray(x),), settings)
    return method_result(times, np.asarray(out), call, compile_s=compile_s, directions=directions)
