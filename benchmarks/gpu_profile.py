"""Compare versions of the torch kernel on a GPU within one process: times, kernels, agreement.

    python benchmarks/gpu_profile.py --variants base=DIR new=DIR [new+eq=DIR] --cells 4,4 2,8 64,2,1

Each DIR holds generated torch modules (``diagramc compile ... --backend torch``) for the
cells' networks (tanh, d-64-64-64-1), e.g. compiled from two commits: a GPU lease is short,
so one call measures every version side by side, with the calls interleaved (a shared
machine drifts). A variant named ``*+eq`` lets layers from 2 on follow the activation's
equation on the GPU too (``_by_equation`` without its CPU-only condition).

Per cell and variant it prints: the largest relative error against the first variant run
in float64 on the CPU, the median of eager calls and of CUDA-graph replays (ms; each call
synchronised), and, from ``torch.profiler``, the kernels one eager call launches and their
summed device time. The anchors (JAX jet + interpolation; at order 2 ``jax.hessian``) are
timed in the same process by ``diagramc.bench``. Writes ``gpu_profile.json`` to --out.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the GPU's memory to torch too

import torch  # noqa: E402

import diagramc  # noqa: E402
from diagramc import bench  # noqa: E402


def load(directory: str, cell: bench.Cell, name: str):
    """The generated module for the cell's network in directory, imported under its own name."""
    found = sorted(Path(directory).glob(f"taylor_tanh_d{cell.d}_h3_n{cell.order}_torch_*.py"))
    if len(found) != 1:
        raise SystemExit(f"{directory}: expected one torch module for d={cell.d}, n={cell.order}, found {len(found)}")
    spec = importlib.util.spec_from_file_location(name, found[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if name.endswith("+eq") and hasattr(module, "_BY_EQUATION"):
        module._KERNEL._by_equation = lambda Z, h, factors: module._KERNEL._BY_EQUATION
    if not torch.cuda.is_available():  # a dry run on a CPU takes the GPU's path
        module._KERNEL._scatters = lambda Z: True
    return module


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(call, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def kernels_of(call) -> dict:
    """Kernels one call launches (torch.profiler, CUDA activity): count, summed device time, the top 6."""
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        return {"kernels": 0, "device_ms": 0.0, "top": []}
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        sync()
    per_name = collections.defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_name[e.name][0] += 1
            per_name[e.name][1] += e.device_time_total / 1e3  # ms
    top = sorted(per_name.items(), key=lambda kv: -kv[1][1])[:6]
    return {"kernels": sum(n for n, _ in per_name.values()), "device_ms": sum(t for _, t in per_name.values()),
            "top": [(name[:70], n, round(t, 4)) for name, (n, t) in top]}


def profile_cell(cell: bench.Cell, variants: dict[str, str], rounds: int, reps: int) -> dict:
    params, x = bench.make_problem(cell)
    cpu = [torch.from_numpy(p) for p in params], torch.from_numpy(x)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # on a CPU: a dry run of this script
    gpu = [p.to(device) for p in cpu[0]], cpu[1].to(device)
    modules = {name: load(directory, cell, name) for name, directory in variants.items()}
    reference = next(iter(modules.values())).derivatives(*cpu)
    scale = reference.abs().amax(dim=(0, 1)).clamp(min=1e-300)
    out = {"cell": cell.label, "variants": {}}
    calls = {}
    for name, module in modules.items():
        got = module.derivatives(*gpu)
        error = float(((got.cpu() - reference).abs().amax(dim=(0, 1)) / scale).max())
        evaluate = diagramc.cuda_graphed(module.derivatives, *gpu) if device == "cuda" else module.derivatives
        replay = evaluate(*gpu)
        graph_error = float(((replay.cpu() - reference).abs().amax(dim=(0, 1)) / scale).max())
        calls[name] = (lambda m=module: m.derivatives(*gpu), lambda e=evaluate: e(*gpu))
        out["variants"][name] = {"max_rel_error": max(error, graph_error), **kernels_of(calls[name][0]),
                                 "eager_s": [], "graph_s": []}
    for r in range(rounds):  # interleaved, the order rotating
        names = list(calls)[r % len(calls):] + list(calls)[: r % len(calls)]
        for name in names:
            eager, graph = calls[name]
            out["variants"][name]["eager_s"] += timed(eager, max(1, reps // 5))
            out["variants"][name]["graph_s"] += timed(graph, reps)
    for v in out["variants"].values():
        v["eager_ms"] = 1e3 * statistics.median(v["eager_s"])
        v["graph_ms"] = 1e3 * statistics.median(v["graph_s"])
    settings = bench.Settings.make(True)
    anchors = {"jax_jet_interp": bench.bench_jax_jet(cell, settings)}
    if cell.order == 2:
        anchors["jax_hessian"] = bench.bench_jax_hessian(cell, settings)
    out["anchors"] = {k: (1e3 * a["median_s"] if a.get("median_s") else a.get("note")) for k, a in anchors.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", required=True, metavar="NAME=DIR")
    parser.add_argument("--cells", nargs="+", default=["4,4", "4,5", "8,4", "16,3,64", "64,2", "2,8", "64,2,1"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variants)
    results = []
    for text in args.cells:
        cell = bench.Cell(*(int(v) for v in text.split(",")))
        r = profile_cell(cell, variants, args.rounds, args.reps)
        results.append(r)
        anchors = ", ".join(f"{k} {v:.3f} ms" if isinstance(v, float) else f"{k}: {v}" for k, v in r["anchors"].items())
        print(f"{cell.label}: {anchors}", flush=True)
        for name, v in r["variants"].items():
            print(f"  {name:10s} err {v['max_rel_error']:.1e}  eager {v['eager_ms']:7.3f} ms  graph {v['graph_ms']:7.3f} ms"
                  f"  kernels {v['kernels']:4d}  device {v['device_ms']:.3f} ms", flush=True)
            for top in v["top"]:
                print(f"      {top}", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    machine = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__}
    (Path(args.out) / "gpu_profile.json").write_text(json.dumps({"machine": machine, "cells": results}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
