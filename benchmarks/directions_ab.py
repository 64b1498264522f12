"""The Taylor kernel's two algorithms against JAX jet + interpolation, in one process:
products (strategy="products") and directions (strategy="directions"), NumPy and torch, on the
bench's cells (tanh 3 x 64, float64, diagramc.bench.problem), interleaved rounds, medians,
ratios taken within a round. Pin it to one core with the bench's environment:

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \\
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
    taskset -c 0 python benchmarks/directions_ab.py [d,n,batch ...]   (ROUNDS=9 by default)
"""
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

import diagramc
from diagramc.bench.anchors import import_jax, jet_program
from diagramc.bench.problem import HIDDEN, Cell, make_problem
from diagramc.combinatorics import multi_index as mi
from diagramc.compiler.plan import make_plan
from diagramc.compiler.spec import KernelSpec

CELLS = [(2, 8, 256), (4, 4, 256), (4, 5, 256), (8, 4, 256), (16, 3, 64)]


def jax_jet(cell):
    """JAX jet along the C(d+n-1, n) directions with exact interpolation, jitted (the bench's anchor)."""
    jax = import_jax()
    all_orders, x, _ = jet_program(cell)
    xj = jax.numpy.asarray(x)
    compiled = jax.jit(all_orders).lower(xj).compile()
    return lambda: np.asarray(jax.block_until_ready(compiled(xj)))


def main(picked):
    rounds = int(os.environ.get("ROUNDS", 9))
    folder = tempfile.mkdtemp(prefix="directions-ab-")
    report = []
    for d, n, batch in [tuple(map(int, c.split(","))) for c in picked] or CELLS:
        cell = Cell(d, n, batch)
        arch = diagramc.Architecture((d, *HIDDEN, 1), "tanh")
        params, x = make_problem(cell)
        tp, tx = [torch.from_numpy(p) for p in params], torch.from_numpy(x)
        methods = {}
        for backend, (p, xx) in (("numpy", (params, x)), ("torch", (tp, tx))):
            for strategy in ("products", "directions"):
                mod = diagramc.compile(arch, n, backend, out_dir=folder, strategy=strategy)
                methods[f"{backend} {strategy}"] = (lambda mod=mod, p=p, xx=xx: np.asarray(mod.derivatives(p, xx))[:, 0])
        methods["jax jet"] = jax_jet(cell)
        reference = methods["numpy products"]()
        orders = np.array([sum(a) for a in mi.up_to_order(d, n)])
        agree = {}
        for name, call in methods.items():
            got = call()
            agree[name] = max(float(np.abs(got[:, orders == k] - reference[:, orders == k]).max()
                                    / np.abs(reference[:, orders == k]).max()) for k in range(n + 1))
        first = {name: call for name, call in methods.items()}
        once = {}
        for name, call in first.items():
            start = time.perf_counter()
            call()
            once[name] = time.perf_counter() - start
        per = {name: max(1, min(20, int(0.1 / max(t, 1e-4)))) for name, t in once.items()}  # about 0.1 s a turn
        times = {name: [] for name in methods}
        names = list(methods)
        for r in range(rounds):  # interleaved, the order rotating
            for name in names[r % len(names):] + names[: r % len(names)]:
                call = methods[name]
                start = time.perf_counter()
                for _ in range(per[name]):
                    call()
                times[name].append((time.perf_counter() - start) / per[name])
        med = {name: statistics.median(t) for name, t in times.items()}

        def ratio(a, b):  # median over rounds of a/b within a round
            return statistics.median(x / y for x, y in zip(times[a], times[b]))

        chosen = {b: make_plan(KernelSpec.create(arch, n, b)).by_directions for b in ("numpy", "torch")}
        row = {"cell": [d, n, batch], "ms": {k: v * 1e3 for k, v in med.items()},
               "jet/numpy products": ratio("jax jet", "numpy products"), "jet/numpy directions": ratio("jax jet", "numpy directions"),
               "numpy products/directions": ratio("numpy products", "numpy directions"),
               "torch products/directions": ratio("torch products", "torch directions"),
               "jet/torch products": ratio("jax jet", "torch products"), "jet/torch directions": ratio("jax jet", "torch directions"),
               "plan picks directions": chosen, "max rel diff (per order) vs numpy products": agree,
               "load": os.getloadavg()[0]}
        report.append(row)
        print(json.dumps(row), flush=True)
    return report


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
