"""Differential operators: diagramc's compiled kernel against torch.func, nested autodiff and JAX.

    python benchmarks/bench_operators.py [--cells small|all|NAME ...] [--rounds N] [--threads N]
                                         [--memory] [--methods LABEL ...] [--json FILE]

Cells (float64, tanh): the Laplacian on a 3 x 64 network at D = 4 and D = 64 (batch 256),
on collapsed Taylor mode's network (D = 50, 768-768-512-512-1, batch 256: slow, in "all"),
the biharmonic at D = 5 on that network ("all"), and u_t - Delta u at D = 3 + t on the
3 x 64 network. Each is timed forward and forward + backward (the gradient of the batch's
sum with respect to the parameters, as a physics-informed training step takes it).

Anchors: torch.func's vmap(hessian) (= jacfwd(jacrev)) and vmap(jacrev(jacrev)), each
contracted with the operator (the Laplacian: the Hessian's trace), and nested first-order
autodiff (one backward pass for the gradient, then one per second derivative, as the
collapsed Taylor mode paper times it); where JAX and folx are installed, folx's forward
Laplacian and jax.hessian's trace under jit (for the biharmonic: each applied twice). Methods
run in interleaved rounds, each turn a burst of calls after an idle pause (PAUSE, BURST: the
steady state a training loop gets); medians are reported, with each
method's multiply-adds per call (torch's FlopCounterMode on matrix products, halved; for JAX,
XLA's flop count of the whole program, halved), our matmul rate against bare GEMMs of the same
shapes and against one large float64 GEMM at default threads (the machine's rate), both timed
in the same rounds. --memory adds each method's peak resident memory in a differentiable call,
measured in a fresh process per method (probe_memory: VmHWM after /proc/self/clear_refs).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch.func import hessian, jacrev, vmap
from torch.utils.flop_counter import FlopCounterMode

import diagramc

CELLS = {
    # name: (layer sizes, operator, batch)
    "laplacian-d4": ((4, 64, 64, 64, 1), "laplacian", 256),
    "laplacian-d64": ((64, 64, 64, 64, 1), "laplacian", 256),
    "heat-d3+t": ((4, 64, 64, 64, 1), {(1, 0, 0, 0): 1.0, (0, 2, 0, 0): -1.0, (0, 0, 2, 0): -1.0,
                                       (0, 0, 0, 2): -1.0}, 256),
    "laplacian-big": ((50, 768, 768, 512, 512, 1), "laplacian", 256),
    "biharmonic-big": ((5, 768, 768, 512, 512, 1), "biharmonic", 256),
}
SMALL = ("laplacian-d4", "laplacian-d64", "heat-d3+t")
# idle seconds before each timed call: spinning thread pools (XLA's, OpenMP's) of the method
# before go quiet, so that no method is timed against another's spinning threads
PAUSE = 0.05
BURST = 0.02  # seconds of calls a method's turn times, after its first (see timed)
MACHINE_GEMM = 2048  # the machine's rate: a float64 (n, n) @ (n, n) at default threads


def network(sizes, generator):
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        params += [torch.randn(n_out, n_in, generator=generator, dtype=torch.float64) / n_in**0.5,
                   torch.randn(n_out, generator=generator, dtype=torch.float64) * 0.1]
    return params


def mlp(params):
    def f(x):  # one point -> scalar
        h = x
        for i in range(0, len(params) - 2, 2):
            h = torch.tanh(params[i] @ h + params[i + 1])
        return (params[-2] @ h + params[-1])[0]

    return f


def terms(module):
    return [(alpha, c) for alpha, c in module.OPERATOR]


def by_hessian(params, x, module, inner):
    """An operator of order <= 2 from dense per-point Hessians (and gradients where it has first-order terms)."""
    f = mlp(params)
    H = vmap(inner(f))(x)
    out = 0.0
    for alpha, c in terms(module):
        idx = [i for i, a in enumerate(alpha) for _ in range(a)]
        if len(idx) == 2:
            out = out + c * H[:, idx[0], idx[1]]
        else:
            out = out + c * vmap(jacrev(f))(x)[:, idx[0]]
    return out


def nested_autodiff(params, x, module, create_graph):
    """First-order autodiff nested: the gradient, then one backward pass per second derivative."""
    x = x.detach().requires_grad_(True)
    f = mlp(params)
    y = vmap(f)(x)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    out = 0.0
    for alpha, c in terms(module):
        idx = [i for i, a in enumerate(alpha) for _ in range(a)]
        if len(idx) == 1:
            out = out + c * g[:, idx[0]]
        else:
            (g2,) = torch.autograd.grad(g[:, idx[0]].sum(), x, create_graph=create_graph, retain_graph=True)
            out = out + c * g2[:, idx[1]]
    return out


def biharmonic_nested(params, x, module, create_graph):
    """Delta^2 f by nested first-order autodiff: the Laplacian's own gradient, twice more."""
    x = x.detach().requires_grad_(True)
    f = mlp(params)
    y = vmap(f)(x)

    def laplacian(y):
        (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        return sum(torch.autograd.grad(g[:, i].sum(), x, create_graph=True)[0][:, i] for i in range(x.shape[1]))

    return laplacian(laplacian(y))


def jax_methods(name, module, params, x):
    """JAX anchors under jit, when JAX is installed: folx's forward Laplacian and jax.hessian's
    trace (for u_t - Delta u: folx over space with a jvp in time). Each call returns
    (values, multiply-adds per XLA's cost analysis, halved) and takes the backward flag."""
    try:
        import jax
        import jax.numpy as jnp
        from folx import forward_laplacian
    except ImportError:
        return {}
    jax.config.update("jax_enable_x64", True)
    P = [jnp.asarray(p.detach().numpy()) for p in params]
    X = jnp.asarray(x.numpy())
    terms_ = terms(module)

    def f(p, y):
        h = y
        for i in range(0, len(p) - 2, 2):
            h = jnp.tanh(p[i] @ h + p[i + 1])
        return (p[-2] @ h + p[-1])[0]

    def by_hessian(p, y):
        H = jax.hessian(lambda v: f(p, v))(y)
        g = jax.grad(lambda v: f(p, v))(y)
        out = 0.0
        for alpha, c in terms_:
            idx = [i for i, a in enumerate(alpha) for _ in range(a)]
            out = out + c * (H[idx[0], idx[1]] if len(idx) == 2 else g[idx[0]])
        return out

    def by_folx(p, y):
        time_terms = [(alpha, c) for alpha, c in terms_ if sum(alpha) == 1]
        if not time_terms:  # the Laplacian over every input
            return forward_laplacian(lambda v: f(p, v))(y).laplacian
        t = time_terms[0][0].index(1)  # u_t - Delta_x u: folx over space, a jvp in time
        space = [i for i in range(y.shape[0]) if i != t]
        lap = forward_laplacian(lambda v: f(p, y.at[jnp.array(space)].set(v)))(y[jnp.array(space)]).laplacian
        _, dt = jax.jvp(lambda v: f(p, v), (y,), (jnp.zeros_like(y).at[t].set(1.0),))
        return time_terms[0][1] * dt - lap

    def laplacian_of(g):
        return lambda v: jnp.trace(jax.hessian(g)(v))

    def biharmonic_by_hessian(p, y):
        return laplacian_of(laplacian_of(lambda v: f(p, v)))(y)

    def biharmonic_by_folx(p, y):
        inner = lambda v: forward_laplacian(lambda w: f(p, w))(v).laplacian  # noqa: E731
        return forward_laplacian(inner)(y).laplacian

    points = ((("folx twice", biharmonic_by_folx), ("jax.hessian twice (jit)", biharmonic_by_hessian))
              if name.startswith("biharmonic") else
              (("folx forward_laplacian", by_folx), ("jax.hessian (jit)", by_hessian)))
    found = {}
    for label, point in points:
        batched = jax.vmap(point, in_axes=(None, 0))

        def both(p, X, batched=batched):
            out, pullback = jax.vjp(lambda q: batched(q, X), p)
            return out, pullback(jnp.ones_like(out))

        jitted = {False: jax.jit(batched), True: jax.jit(both)}
        counts = {}
        for backward, fn in jitted.items():
            cost = fn.lower(P, X).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            counts[backward] = int(cost.get("flops", 0) // 2)

        def call(backward, jitted=jitted, counts=counts):
            result = jitted[backward](P, X)
            out = result[0] if backward else result
            jax.block_until_ready(result)
            return torch.from_numpy(np.array(out)), counts[backward]

        found[label] = call
    return found


def methods_for(name, module, params, x, only=None):
    ours = lambda: module.apply(params, x)[:, 0]  # noqa: E731
    found = {"diagramc": ours}
    if name.startswith("biharmonic"):
        found["nested autodiff"] = lambda: biharmonic_nested(params, x, module, True)
    else:
        found["vmap(hessian)"] = lambda: by_hessian(params, x, module, hessian)
        found["vmap(jacrev(jacrev))"] = lambda: by_hessian(params, x, module, lambda f: jacrev(jacrev(f)))
        found["nested autodiff"] = lambda: nested_autodiff(params, x, module, True)
    if only is None or any(m not in found for m in only):  # JAX's compile is slow: only when asked for
        found.update(jax_methods(name, module, params, x))
    return {m: c for m, c in found.items() if only is None or m == "diagramc" or m in only}


def is_jax(call):
    return "jitted" in getattr(call, "__code__", timed.__code__).co_varnames


def _once(call, params, backward):
    start = time.perf_counter()
    if is_jax(call):
        out = call(backward)[0]
        return time.perf_counter() - start, out
    out = call()
    if backward:
        torch.autograd.grad(out.sum(), params, allow_unused=True)
    return time.perf_counter() - start, out.detach()


def timed(call, params, backward):
    """Seconds of a call in steady state, after an idle PAUSE: the median of a burst of about
    BURST seconds of calls after the first (a training loop calls back to back: the first
    call after a pause, with cold caches, is not what it gets); a call longer than BURST alone."""
    time.sleep(PAUSE)
    first, out = _once(call, params, backward)
    if first >= BURST:
        return first, out
    times = [_once(call, params, backward)[0] for _ in range(max(2, min(25, int(BURST / max(first, 1e-6)))))]
    return statistics.median(times), out


@contextlib.contextmanager
def torch_products():
    """Our kernel on torch's operations, whose products FlopCounterMode sees: its CPU loops make the
    same products in NumPy (operator_torch.ForwardLaplacianLoops), which the counter cannot see."""
    from diagramc.runtime import operator_torch

    loops_apply = operator_torch._loops_apply
    operator_torch._loops_apply = lambda params, x: False
    try:
        yield
    finally:
        operator_torch._loops_apply = loops_apply


def counted_call(call, params, backward, ours=False):
    """(output, matrix-product multiply-adds) of one call (torch's FlopCounterMode, halved)."""
    if is_jax(call):  # XLA's cost analysis: every flop, not only matrix products
        return call(backward)
    with FlopCounterMode(display=False) as counter, (torch_products() if ours else contextlib.nullcontext()):
        out = call()
        if backward:
            torch.autograd.grad(out.sum(), params, allow_unused=True)
    if ours:  # the output checked against the anchors is the one timed, and its path warmed up as the anchors' are
        out = call()
        if backward:
            torch.autograd.grad(out.sum(), params, allow_unused=True)
    return out.detach(), counter.get_total_flops() // 2


def gemm_reference(sizes, batch, rows, backward):
    """Our kernel's hidden-to-hidden matrix products as bare GEMMs (each layer's rows at once;
    with backward also the two products of their gradients): the machine's matmul rate on them."""
    mats = [(torch.randn(batch * rows, n_in, dtype=torch.float64), torch.randn(n_in, n_out, dtype=torch.float64))
            for n_in, n_out in zip(sizes[1:-2], sizes[2:-1])]

    def call():
        for A, W in mats:
            Y = A @ W
            if backward:
                Y @ W.T
                A.T @ Y
        return torch.zeros(1)

    macs = sum(A.shape[0] * A.shape[1] * W.shape[1] for A, W in mats) * (3 if backward else 1)
    return call, macs


def machine_gemm():
    """One large float64 matmul: the machine's matmul rate at default threads (timed each round)."""
    A, B = (torch.randn(MACHINE_GEMM, MACHINE_GEMM, dtype=torch.float64) for _ in range(2))
    return lambda: (A @ B)[:1, 0], MACHINE_GEMM**3


def setup(name, folder, only=None):
    sizes, operator, batch = CELLS[name]
    generator = torch.Generator().manual_seed(0)
    params = [p.requires_grad_(True) for p in network(sizes, generator)]
    x = torch.randn(batch, sizes[0], generator=generator, dtype=torch.float64)
    module = diagramc.compile_operator(diagramc.Architecture(sizes, "tanh"), operator, "torch", out_dir=folder)
    return params, x, module, methods_for(name, module, params, x, only)


def _status_kib(field):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def probe_memory(name, method, folder):
    """Bytes a differentiable call (forward + backward) adds to this process's resident memory at
    its peak: after a warm-up call (JAX compiled), the kernel's high-water mark is reset
    (/proc/self/clear_refs) and the call's peak VmHWM less the VmRSS before it is taken. Large
    blocks go through mmap, so that memory freed by the warm-up is not resident already."""
    import ctypes

    # every block of 128 KiB or more straight from mmap and back at free (no dynamic threshold):
    # resident memory then follows the live arrays of torch and XLA alike
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    params, x, module, methods = setup(name, folder, [method] if method != "diagramc" else [])
    call = methods[method]
    timed(call, params, True)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    before = _status_kib("VmRSS")
    timed(call, params, True)
    return (_status_kib("VmHWM") - before) * 1024


def peak_memory(name, methods):
    """probe_memory for each method in a fresh process of its own: {method: bytes}."""
    found = {}
    for method in methods:
        done = subprocess.run([sys.executable, __file__, "--probe", name, method], capture_output=True, text=True)
        found[method] = int(done.stdout.split()[-1]) if done.returncode == 0 else None
    return found


def run_cell(name, rounds, folder, memory=False, only=None):
    params, x, module, methods = setup(name, folder, only)
    sizes, _, batch = CELLS[name]
    big, big_macs = machine_gemm()
    result = {"cell": name, "layer_sizes": sizes, "batch": batch, "plan": json.loads(module.PLAN)["kind"],
              "ours_multiply_adds_per_point": module.MULTIPLY_ADDS, "modes": {}}
    reference = None
    for backward in (False, True):
        mode = "forward+backward" if backward else "forward"
        gemm, gemm_macs = gemm_reference(sizes, batch, json.loads(module.PLAN)["rows"], backward)
        times = {m: [] for m in methods}
        times["GEMM"] = []
        times["machine GEMM"] = []
        counted = {}
        for m, call in methods.items():  # warm-up: multiply-adds counted, and every method agrees
            out, counted[m] = counted_call(call, params, backward, ours=m == "diagramc")
            reference = out if reference is None else reference
            scale = reference.abs().max().item()
            assert (out - reference).abs().max().item() <= 1e-8 * max(scale, 1.0), (name, m)
        for _ in range(rounds):
            for m, call in methods.items():
                times[m].append(timed(call, params, backward)[0])
            times["GEMM"].append(timed(gemm, params, False)[0])
            times["machine GEMM"].append(timed(big, params, False)[0])
        medians = {m: statistics.median(t) for m, t in times.items()}
        gemm_time = medians.pop("GEMM")
        machine = big_macs / medians.pop("machine GEMM")
        fastest_anchor = min(v for m, v in medians.items() if m != "diagramc")
        result["modes"][mode] = {
            "median_s": medians,
            "matmul_multiply_adds": counted,
            "speedup_vs_fastest_anchor": fastest_anchor / medians["diagramc"],
            "gemm_rate_multiply_adds_per_s": gemm_macs / gemm_time,
            "ours_rate_multiply_adds_per_s": counted["diagramc"] / medians["diagramc"],
            "machine_gemm_multiply_adds_per_s": machine,
        }
        if memory and backward:
            result["modes"][mode]["peak_bytes"] = peak_memory(name, methods)
    return result


def format_cell(r):
    lines = [f"{r['cell']}: {'-'.join(map(str, r['layer_sizes']))} tanh, batch {r['batch']}, plan {r['plan']}, "
             f"{r['ours_multiply_adds_per_point']:,} multiply-adds per point (plan)"]
    for mode, m in r["modes"].items():
        ours = m["median_s"]["diagramc"]
        rate, gemm = m["ours_rate_multiply_adds_per_s"], m["gemm_rate_multiply_adds_per_s"]
        machine = m["machine_gemm_multiply_adds_per_s"]
        lines.append(f"  {mode}: ours {ours * 1e3:.2f} ms, {rate / 1e9:.2f} G matmul multiply-adds/s = {rate / gemm:.0%} "
                     f"of bare GEMMs on its products ({gemm / 1e9:.2f} G/s), {rate / machine:.0%} of the machine's "
                     f"{MACHINE_GEMM}^2 GEMM ({machine / 1e9:.2f} G/s); {m['speedup_vs_fastest_anchor']:.2f}x the fastest anchor")
        peak = m.get("peak_bytes", {})
        for name, t in m["median_s"].items():
            memory = f"  peak {peak[name] / 2**20:8.1f} MiB" if peak.get(name) is not None else ""
            lines.append(f"    {name:24s} {t * 1e3:10.2f} ms  {t / ours:6.2f}x ours  "
                         f"{m['matmul_multiply_adds'][name] / 1e6:10.1f} M multiply-adds{memory}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", default=["small"], help="small, all, or cell names: " + ", ".join(CELLS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--memory", action="store_true",
                        help="also each method's peak resident memory in a differentiable call, a process each")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="the anchors to time (default: all); JAX ones by label, e.g. 'folx forward_laplacian'")
    parser.add_argument("--probe", nargs=2, metavar=("CELL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        with tempfile.TemporaryDirectory() as folder:
            print(probe_memory(*args.probe, folder))
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
        if args.threads == 1:  # XLA's pool otherwise spins between calls and slows torch's turns
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
                                       " intra_op_parallelism_threads=1").strip()
    names = [c for spec in args.cells for c in (SMALL if spec == "small" else CELLS if spec == "all" else [spec])]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, medians of {args.rounds} interleaved rounds")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            results.append(run_cell(name, args.rounds, folder, args.memory, args.methods))
            print(format_cell(results[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
    return results


if __name__ == "__main__":
    main()
