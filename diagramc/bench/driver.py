"""Benchmark: diagramc's kernels against the methods users pick today.

    run_bench(out_dir, quick=False, cells=None, backends=("torch", "numpy"), device="cpu") -> dict

For each cell (d inputs, order n, batch) of a tanh MLP d-64-64-64-1 in float64, every
method computes all derivatives D^alpha f(x) of orders 0..n; each method's result is packed
into the contract's canonical order (distinct multi-indices only) and compared with ours.

Methods
    diagramc_torch, diagramc_numpy   our generated kernels; steady-state median, and compile
                                     time from a cold cache (a fresh process, an empty folder,
                                     ``diagramc.compile`` plus the first call)
    diagramc_torch_graph             on a GPU (``device="cuda"``): the torch kernel recorded once as a
                                     CUDA graph (``diagramc.cuda_graphed``) and replayed
    diagramc_torch_compile           on a GPU: the torch kernel under ``torch.compile(mode=
                                     "reduce-overhead")``, the opt-in; its compile time reported
    torch_func_jacfwd                ``torch.func``: n nested ``jacfwd`` under ``vmap`` (eager)
    jax_jacfwd_jit                   JAX: n nested ``jacfwd`` under ``vmap`` and ``jit``
    jax_jet_interp                   JAX ``jet`` along the C(d+n-1, n) directions of order n,
                                     exact interpolation (Griewank, Utke, Walther 2000) for
                                     every order 0..n from the same jets, under ``vmap``/``jit``
    jax_hessian                      order 2 only: forward-over-reverse (what ``jax.hessian``
                                     does), value and gradient from the same pass, under ``jit``

Memory: for each of our kernels, the peak memory of one (warm) call, ``memory`` in the JSON:
numpy by ``tracemalloc`` (numpy reports its array buffers to it), torch by ``torch.profiler``
with ``profile_memory`` (every allocation and free of torch's CPU allocator, summed in time
order); both count bytes allocated during the call above what was live before it, the
output included. It is set against the output (batch x outputs x len(MULTI_INDICES) x 8
bytes) plus the weights. ``memory_check()`` (or ``python -m diagramc.bench --memory``)
compiles the order-4, d = 64 kernel in a watched subprocess and reports its times and peaks.

JAX compile times (lowering plus XLA compilation) are reported apart from run times. A
method whose library is missing is skipped and says so; a torch.func run expected to take
longer than a limit is timed on a small batch and its full-batch time estimated.

Output: a table on stdout, ``bench.json`` and ``bench.png`` in ``out_dir``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from ..combinatorics import multi_index as mi
from .anchors import import_jax, bench_jax_hessian, bench_jax_jacfwd, bench_jax_jet, bench_torch_func
from .measure import burst_size, interleaved_rounds, skipped_result, matmul_rate
from .ours import bench_ours, bench_ours_compiled, bench_ours_graphed
from .problem import ACTIVATION, AGREEMENT_TOL, ANCHORS, Cell, DEFAULT_CELLS, HIDDEN, OURS, SEED, Settings, rel_errors
from .report import format_table, plot



# ----------------------------------------------------------------------------- driver


def _run_cell(cell: Cell, settings: Settings, backends, device: str, kernel_dir: Path, log) -> dict:
    runs = {f"diagramc_{b}": functools.partial(bench_ours, cell, b, settings, kernel_dir, device) for b in backends}
    if device != "cpu" and "torch" in backends:
        runs["diagramc_torch_graph"] = functools.partial(bench_ours_graphed, cell, kernel_dir, settings, device)
        runs["diagramc_torch_compile"] = functools.partial(bench_ours_compiled, cell, kernel_dir, settings, device)
    runs["torch_func_jacfwd"] = functools.partial(bench_torch_func, cell, settings, device)
    runs["jax_jacfwd_jit"] = functools.partial(bench_jax_jacfwd, cell, settings)
    runs["jax_jet_interp"] = functools.partial(bench_jax_jet, cell, settings)
    runs["jax_hessian"] = functools.partial(bench_jax_hessian, cell, settings)
    methods: dict[str, dict] = {}
    for name, run in runs.items():
        t0 = time.perf_counter()
        try:
            methods[name] = run()
        except Exception as exc:  # one failing method must not sink the others' numbers
            methods[name] = skipped_result("error", f"{type(exc).__name__}: {exc}"[:2000])
        status = methods[name]["status"]
        log(f"  {name:18s} {status:9s} {time.perf_counter() - t0:7.1f} s"
            + (f"  ({methods[name]['note'][:200]})" if status != "ok" else ""))

    with_values = [name for name in methods if "_packed" in methods[name] and "_packed_rows" not in methods[name]]
    reference_name = with_values[0] if with_values else None
    reference = methods[reference_name]["_packed"] if reference_name else None
    agreement = {}
    for name, result in methods.items():
        packed = result.pop("_packed", None)
        rows = result.pop("_packed_rows", None)
        if packed is None or name == reference_name or reference is None:
            continue
        ref = reference[: rows or len(reference)]
        errors = rel_errors(packed, ref, cell.d, cell.order)
        agreement[name] = {"max_rel_error": max(errors.values()), "by_order": errors, "rows": len(ref)}
    agree = reference is not None and all(a["max_rel_error"] <= AGREEMENT_TOL for a in agreement.values())

    calls = {name: result.pop("_call") for name, result in methods.items() if "_call" in result}
    fast = {name: call for name, call in calls.items() if methods[name]["median_s"] <= settings.round_max_s}
    if any(name in OURS for name in fast) and any(name in ANCHORS for name in fast):
        bursts = {name: burst_size(methods[name]["median_s"], settings) for name in fast}
        steady, first = interleaved_rounds(fast, settings.rounds, bursts, settings.pause_s)
        for name, times in steady.items():
            methods[name]["interleaved_s"] = times
            methods[name]["interleaved_median_s"] = statistics.median(times)
            methods[name]["interleaved_burst"] = bursts[name]
            methods[name]["interleaved_first_s"] = first[name]
            methods[name]["interleaved_first_median_s"] = statistics.median(first[name])

    def seconds(name):  # the interleaved median where the method took part in the rounds
        result = methods[name]
        return result.get("interleaved_median_s") or result.get("median_s") or result.get("estimate_s")

    def ratio(anchor, our):
        """anchor / ours: the median of the ratios within rounds where both took part in them."""
        a, o = methods[anchor].get("interleaved_s"), methods[our].get("interleaved_s")
        if a and o:
            return statistics.median(ta / to for ta, to in zip(a, o)), True
        return seconds(anchor) / seconds(our), False

    ours = {name: seconds(name) for name in methods if name in OURS and methods[name].get("median_s")}
    best_ours = min(ours, key=ours.get) if ours else None
    ratios = {}
    for name in ANCHORS:
        if seconds(name) and best_ours:
            ratios[name] = {our: ratio(name, our)[0] for our in ours}
            ratios[name]["best_ours"], ratios[name]["paired"] = ratio(name, best_ours)
    timed = {n: seconds(n) for n in ANCHORS if methods[n].get("median_s")}
    best_anchor = min(timed, key=timed.get) if timed else None
    best = ratios.get(best_anchor, {})
    summary = {
        "best_ours": best_ours,
        "best_anchor": best_anchor,
        "best_anchor_over_best_ours": best.get("best_ours"),
        "paired_rounds": settings.rounds if best.get("paired") else 0,
        # the fastest run of each over all its runs: what each does when the machine leaves it alone
        "best_anchor_over_best_ours_of_minima": (
            min(methods[best_anchor]["times_s"] + methods[best_anchor].get("interleaved_s", []))
            / min(methods[best_ours]["times_s"] + methods[best_ours].get("interleaved_s", []))
        ) if best_anchor and best_ours else None,
        # the same ratio from each burst's first call (caches left cold by the other methods)
        "best_anchor_over_best_ours_first_calls": statistics.median(
            a / o for a, o in zip(methods[best_anchor]["interleaved_first_s"], methods[best_ours]["interleaved_first_s"])
        ) if best.get("paired") else None,
    }
    for name, result in methods.items():
        macs = result.get("multiply_adds_per_sample")
        if macs and result.get("median_s"):
            result["gflops"] = 2.0 * macs["total"] * cell.batch / seconds(name) / 1e9
    return {
        "d": cell.d, "order": cell.order, "batch": cell.batch,
        "multi_indices": mi.count_of_order(cell.d + 1, cell.order),
        "methods": methods, "reference": reference_name, "agreement": agreement, "agree": agree,
        "ratios_anchor_over_ours": ratios, **summary,
    }


def _machine(device: str) -> dict:
    import torch

    from ..runtime.threads import available_cores, get_num_threads

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "numpy_kernel_threads": get_num_threads(),
        "cores": available_cores(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device != "cpu" else platform.processor() or platform.machine(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")},
    }
    jax = import_jax()
    info["jax"] = jax.__version__ if jax is not None else None
    if jax is not None:
        info["jax_devices"] = [str(dev) for dev in jax.devices()]
    return info


def _process_threads() -> list[int]:
    """Ids of this process's threads (Linux), or [0] (the calling thread) elsewhere."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


@contextlib.contextmanager
def _pinned(threads: int | None):
    """Pin the process, every thread it has and those it starts (subprocesses too), to `threads`
    of its cores for the run, then restore: every method then gets the same cores whatever its
    own thread settings. JAX's CPU client ignores XLA_FLAGS' thread limits: unpinned, its matrix
    products took 1.7 cores of 2 in a run meant to be single-threaded. Yields the cores, or None
    (no pinning asked, or an OS without affinity: then only the libraries' own settings apply)."""
    if threads is None or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    cores = set(sorted(before)[:threads])

    def pin(mask):
        for tid in _process_threads():
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:  # a thread that has ended since it was listed
                pass

    pin(cores)
    try:
        yield sorted(cores)
    finally:
        pin(before)


def run_bench(
    out_dir,
    quick: bool = False,
    cells=None,
    backends=("torch", "numpy"),
    device: str = "cpu",
    *,
    threads: int | None = None,
) -> dict:
    """Run the benchmark; print the table; write ``bench.json`` and ``bench.png`` in ``out_dir``.

    ``cells``: (d, order) or (d, order, batch) tuples or Cell objects; the default set when None.
    ``threads``: torch's intra-op threads, the machine's cores by default; given, the whole
    run is also pinned to that many cores (see _pinned). Progress goes to stderr. Returns the
    report (the JSON's content).
    """
    with _pinned(threads) as pinned_cores:
        return _run_bench(out_dir, quick, cells, backends, device, threads, pinned_cores)


def _run_bench(out_dir, quick, cells, backends, device, threads, pinned_cores) -> dict:
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(threads or cores)
    settings = Settings.make(quick)
    cells = [c if isinstance(c, Cell) else Cell(*c) for c in (cells or DEFAULT_CELLS)]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    report = {
        "machine": _machine(device),
        "settings": {**dataclasses.asdict(settings), "dtype": "float64", "activation": ACTIVATION,
                     "hidden": list(HIDDEN), "agreement_tol": AGREEMENT_TOL, "seed": SEED,
                     "pinned_cores": pinned_cores},
        "note": "wall-clock medians; a shared machine makes them noisy (see loadavg)",
    }
    log("matmul rate ...")
    report["matmul"] = matmul_rate(quick, device)
    report["cells"] = []
    kernel_dir = out_dir / "kernels"
    for cell in cells:
        log(f"{cell.label}:")
        load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        report["cells"].append({**_run_cell(cell, settings, backends, device, kernel_dir, log), "loadavg_start": load})
    report["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    report["agree"] = all(c["agree"] for c in report["cells"])

    (out_dir / "bench.json").write_text(json.dumps(report, indent=1, default=float))
    plot(report, out_dir / "bench.png")
    print(format_table(report))
    print(f"agreement (rel error <= {AGREEMENT_TOL:g} per order): {'yes' if report['agree'] else 'NO'}")
    print(f"wrote {out_dir / 'bench.json'} and {out_dir / 'bench.png'}")
    return report
