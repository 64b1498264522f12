"""Kelly et al.'s regularizer with its gradient (forward + backward, as in training), four ways:

    diagramc      diagramc.taylor_regularizer: one Taylor-mode pass; on the CPU for tanh, numba loops
                  and SciPy's BLAS with a hand-written adjoint, one autograd node
    torch.func    nested torch.func.jvp of the flow's vector field (Lie derivatives), torch autograd
    jax-kelly     JAX jet as easy-neural-ode calls it: K jets of growing length, under jit, jax.grad
    jax-onepass   the same one-pass algorithm as diagramc, written in JAX, under jit, jax.grad

on their latent-ODE dynamics (20 states, 4 x 50 tanh, batch 150, autonomous) and a small
time-dependent one (2 states + t, 2 x 64 tanh, batch 512), K = 2, 3, 4, 6. Medians over
interleaved rounds, each after an idle pause; ratios are the other's time over diagramc's (above 1: diagramc faster).

    python benchmarks/bench_ode.py [--rounds 15] [--threads N] [--dtype float32] [--orders 2,3,4,6] [--out DIR]

By default every method runs at its library's default threads on all cores, as a user runs it;
--threads N pins the process to N cores with N torch and XLA threads.

The JAX contenders run when jax is installed (pip install jax). Time is a scalar, as in an ODE solver.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

CELLS = {"latent": dict(states=20, widths=(50, 50, 50, 50), batch=150, timed=False),
         "timed": dict(states=2, widths=(64, 64), batch=512, timed=True)}
# issue 29's targets: diagramc against each, per K
TARGETS = {"jax-kelly": lambda K: max(0.8 * (K + 1) / 2, 2.0 if K == 3 else 0.0),
           "jax-onepass": lambda K: 0.9,
           "torch.func": lambda K: {3: 3.0, 4: 6.0}.get(K)}


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=0,
                   help="pin the process to N cores, N torch and XLA threads (default 0: each library's defaults)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--orders", default="2,3,4,6")
    p.add_argument("--cells", default="latent,timed")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-jax", action="store_true")
    p.add_argument("--out", default=None, help="folder for bench_ode.json")
    return p.parse_args()


def torch_contenders(model, z, t, K):
    import torch
    from torch.func import jvp

    import diagramc

    params = list(model.parameters())
    D = z.shape[1]

    def ours():
        loss = diagramc.taylor_regularizer(model, z, K, t).mean()
        return loss, torch.autograd.grad(loss, params)

    def field(w):  # the flow on (z, t)
        zz = w[:, :D]
        inp = torch.cat([zz, w[:, D:]], 1) if t is not None else zz
        return torch.cat([model(inp), torch.ones_like(w[:, D:])], 1)

    def nested():
        tt = torch.zeros((), dtype=z.dtype, device=z.device) if t is None else t
        w = torch.cat([z, tt.expand(z.shape[0], 1)], 1)
        g = lambda w: w  # noqa: E731
        for _ in range(K):
            g = (lambda g: lambda w: jvp(g, (w,), (field(w),))[1])(g)
        top = g(w)[:, :D]
        loss = (top * top).mean()
        return loss, torch.autograd.grad(loss, params)

    return {"diagramc": ours, "torch.func": nested}


def jax_contenders(model, z, t, K, dtype):
    import jax
    import jax.numpy as jnp
    from jax.experimental.jet import jet

    jax.config.update("jax_enable_x64", dtype == "float64")
    params = [jnp.asarray(p.detach().cpu().numpy()) for p in model.parameters()]
    zj = jnp.asarray(z.cpu().numpy())
    D, timed = z.shape[1], t is not None
    tj = jnp.asarray(float(t) if timed else 0.0, dtype=zj.dtype)

    def mlp(params, x):
        h = x
        for i in range(0, len(params) - 2, 2):
            h = jnp.tanh(h @ params[i].T + params[i + 1])
        return h @ params[-2].T + params[-1]

    def f(params, zz, tt):
        return mlp(params, jnp.concatenate([zz, jnp.broadcast_to(tt, (zz.shape[0], 1))], 1) if timed else zz)

    def kelly_loss(params, zz, tt):
        # easy-neural-ode's sol_recursive: the state with time appended, raveled; K jets sharing nothing
        shape = zz.shape

        def g(w):
            return jnp.concatenate([jnp.ravel(f(params, w[:-1].reshape(shape), w[-1])), jnp.ones((1,), w.dtype)])

        w = jnp.concatenate([jnp.ravel(zz), tt[None]])
        y0, _ = jet(g, (w,), ((jnp.ones_like(w),),))
        series = [y0]
        for _ in range(1, K):
            y0, rest = jet(g, (w,), (tuple(series),))
            series = [y0, *rest]
        top = series[K - 1][:-1]
        return jnp.mean(top * top)

    def onepass_loss(params, zz, tt):
        # diagramc's runtime recursion for tanh (a_k = sum_j j h_j u_(k-j) / k, u = 1 - a^2)
        hidden = len(params) // 2 - 1
        hs, As, Us = ([[] for _ in range(hidden)] for _ in range(3))
        zs = [zz]
        W0 = params[0][:, :D] if timed else params[0]
        for k in range(K):
            h = zs[k]
            for layer in range(hidden + 1):
                W = W0 if layer == 0 else params[2 * layer]
                pre = h @ W.T + (params[2 * layer + 1] if k == 0 else 0.0)
                if layer == 0 and timed and k <= 1:
                    pre = pre + (tt * params[0][:, D] if k == 0 else params[0][:, D])
                if layer == hidden:
                    zs.append(pre / (k + 1))
                    break
                hs[layer].append(pre)
                H, A, U = hs[layer], As[layer], Us[layer]
                if k == 0:
                    a = jnp.tanh(pre)
                    A.append(a)
                    U.append(1 - a * a)
                else:
                    a = sum(j * H[j] * U[k - j] for j in range(1, k + 1)) / k
                    A.append(a)
                    U.append(-sum(A[j] * A[k - j] for j in range(k + 1)))
                h = a
        top = zs[K] * math.factorial(K)
        return jnp.mean(top * top)

    out = {}
    for name, loss in (("jax-kelly", kelly_loss), ("jax-onepass", onepass_loss)):
        fn = jax.jit(jax.value_and_grad(loss))

        def run(fn=fn):
            value, grads = fn(params, zj, tj)
            jax.block_until_ready(grads)
            return value, grads

        out[name] = run
    return out


def make_model(states, widths, timed, dtype, device, seed=0):
    import torch

    torch.manual_seed(seed)
    sizes = (states + timed, *widths, states)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers).to(dtype=dtype, device=device)


# Idle seconds before each method's round: the threads another library left spinning after its
# round (XLA's, torch's, OpenBLAS's) go quiet before this one is timed
PAUSE = 0.05


def time_round(fn, seconds=0.02):
    """Seconds per call, after an idle PAUSE and one untimed call: the mean of the calls that fill
    `seconds` (at least one). Counted as they go, not fixed from the first call: that one runs
    cold after the pause, at times ten times slower, and would leave a round of a single call."""
    time.sleep(PAUSE)
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return elapsed / calls


def main():
    args = parse()
    if args.threads:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
        os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={args.threads}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    use_jax = not args.no_jax
    if use_jax:
        try:
            import jax  # noqa: F401
        except ImportError:
            print("jax not installed: timing the torch contenders only", file=sys.stderr)
            use_jax = False
    results = []
    for cell in args.cells.split(","):
        spec = CELLS[cell]
        model = make_model(spec["states"], spec["widths"], spec["timed"], dtype, args.device)
        gen = torch.Generator().manual_seed(1)
        z = torch.randn(spec["batch"], spec["states"], generator=gen).to(dtype=dtype, device=args.device)
        t = torch.tensor(0.3, dtype=dtype, device=args.device) if spec["timed"] else None
        for K in map(int, args.orders.split(",")):
            contenders = torch_contenders(model, z, t, K)
            if use_jax and args.device == "cpu":
                contenders.update(jax_contenders(model, z, t, K, args.dtype))
            losses = {name: float(getattr(v, "detach", lambda: v)()) for name, v in
                      ((name, fn()[0]) for name, fn in contenders.items())}  # warm-up, jit compile
            times = {name: [] for name in contenders}
            for r in range(args.rounds):
                names = list(contenders)
                for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
                    times[name].append(time_round(contenders[name]))
            medians = {name: statistics.median(v) for name, v in times.items()}
            row = {"cell": cell, "K": K, "median_s": medians, "loss": losses,
                   "ratio": {n: medians[n] / medians["diagramc"] for n in medians if n != "diagramc"}}
            results.append(row)
            spread = max(losses.values()) / min(losses.values()) - 1
            text = "  ".join(f"{n} {medians[n] * 1e3:.3f} ms" for n in medians)
            ratios = "  ".join(
                f"{n} {v:.2f}x" + (f" (target {TARGETS[n](K):.1f}x)" if TARGETS[n](K) else "")
                for n, v in row["ratio"].items())
            print(f"{cell:6s} K={K}  {text}\n           ratios: {ratios}  (losses agree to {spread:.1e})", flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"dtype": args.dtype, "threads": args.threads, "rounds": args.rounds, "device": args.device,
                "torch": torch.__version__}
        (out / "bench_ode.json").write_text(json.dumps({"settings": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
