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
import hashlib
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from .combinatorics import multi_index as mi

HIDDEN = (64, 64, 64)
ACTIVATION = "tanh"
SEED = 20240531
#: relative error (per order, L2 over the packed vector) below which two methods agree
AGREEMENT_TOL = 1e-7


@dataclasses.dataclass(frozen=True)
class Cell:
    d: int
    order: int
    batch: int = 256

    @property
    def label(self) -> str:
        return f"d={self.d} n={self.order} b={self.batch}"


DEFAULT_CELLS = (
    Cell(4, 4),
    Cell(4, 5),
    Cell(8, 4),
    Cell(16, 3, 64),
    Cell(64, 2),
    Cell(2, 8),
    Cell(64, 2, 1),
)

OURS = ("diagramc_torch", "diagramc_torch_graph", "diagramc_torch_compile", "diagramc_numpy")
ANCHORS = ("torch_func_jacfwd", "jax_jacfwd_jit", "jax_jet_interp", "jax_hessian")
SHORT_NAMES = {
    "diagramc_torch": "ours torch",
    "diagramc_torch_graph": "ours torch CUDA graph",
    "diagramc_torch_compile": "ours torch.compile",
    "diagramc_numpy": "ours numpy",
    "torch_func_jacfwd": "torch.func jacfwd",
    "jax_jacfwd_jit": "JAX jacfwd jit",
    "jax_jet_interp": "JAX jet+interp",
    "jax_hessian": "jax.hessian",
}


@dataclasses.dataclass
class Settings:
    """How hard to time; the quick mode uses fewer repetitions and skips the costliest anchors."""

    quick: bool
    min_time: float  # seconds of repetitions aimed at per method
    max_reps: int
    min_reps: int
    budget: float  # seconds at most spent repeating one slow method
    eager_limit: float  # a torch.func run expected above this is estimated, not run in full
    eager_max_work: float  # torch.func is skipped above batch * (d+1)^n (its tangent columns)
    jax_jacfwd_max_order: int  # nested jacfwd compiles for minutes at high order
    jax_jacfwd_max_entries: float  # and is skipped above batch * d^n dense entries
    cold_compile_subprocess: bool
    rounds: int  # interleaved rounds: every fast method once per round, in turn
    round_max_s: float  # a method slower than this per call sits the rounds out
    burst_s: float = 0.01  # in its turn a method runs calls for about this long (its steady state)
    max_burst: int = 25

    @classmethod
    def make(cls, quick: bool) -> "Settings":
        if quick:
            return cls(True, 0.3, 7, 3, 5.0, 5.0, 2e5, 5, 3e5, False, 9, 0.5)
        return cls(False, 2.0, 50, 5, 30.0, 60.0, math.inf, 99, math.inf, True, 25, 3.0)


# ----------------------------------------------------------------------------- the problem


def make_problem(cell: Cell, seed: int = SEED):
    """Weights scaled like ``nn.Linear`` init (uniform in +-1/sqrt(fan_in)) and non-zero x."""
    rng = np.random.default_rng([seed, cell.d])
    sizes = (cell.d, *HIDDEN, 1)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / math.sqrt(n_in)
        params.append(rng.uniform(-bound, bound, (n_out, n_in)))
        params.append(rng.uniform(-bound, bound, (n_out,)))
    x = rng.uniform(0.1, 1.0, (cell.batch, cell.d)) * rng.choice([-1.0, 1.0], (cell.batch, cell.d))
    return params, x


def dense_columns(d: int, k: int) -> np.ndarray:
    """Flat positions in a dense (d,)*k tensor of the order-k multi-indices, canonical order."""
    if k == 0:
        return np.zeros(1, dtype=np.intp)
    combos = list(itertools.combinations_with_replacement(range(d), k))
    return np.ravel_multi_index(tuple(np.array(combos).T), (d,) * k)


def pack_dense(tensors, d: int) -> np.ndarray:
    """Dense derivative tensors [f (b,), Df (b,d), D2f (b,d,d), ...] -> (b, N) canonical order."""
    out = []
    for k, t in enumerate(tensors):
        t = np.asarray(t).reshape(len(t), -1)
        out.append(t[:, dense_columns(d, k)])
    return np.concatenate(out, axis=1)


def rel_errors(value: np.ndarray, reference: np.ndarray, d: int, order: int) -> dict[int, float]:
    """Relative L2 error of each order's block of a packed (b, N) array."""
    errors, start = {}, 0
    for k in range(order + 1):
        size = mi.count_of_order(d, k)
        ref = reference[:, start : start + size]
        diff = np.linalg.norm(value[:, start : start + size] - ref)
        errors[k] = float(diff / max(np.linalg.norm(ref), np.finfo(float).tiny))
        start += size
    return errors


# ----------------------------------------------------------------------------- timing


def _repeat(run: Callable[[], object], settings: Settings, first: float | None = None):
    """(wall times, last result) of repeated runs, after one warm-up run unless its time is given.

    Repetitions stop at ``settings.max_reps`` or once about ``settings.min_time`` is spent,
    at least ``settings.min_reps`` of them, and a slow run is repeated only within
    ``settings.budget`` seconds (once at least).
    """
    if first is None:
        t0 = time.perf_counter()
        run()
        first = time.perf_counter() - t0
    reps = settings.max_reps
    if first > 0:
        reps = min(reps, max(settings.min_reps, math.ceil(settings.min_time / first)))
        reps = max(1, min(reps, int(settings.budget / first)))
    times, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - t0)
    return times, result


def _result(times=None, packed=None, call=None, **extra) -> dict:
    """A method's result; `call` (one timed run) is kept for the interleaved rounds, then dropped."""
    out = {"status": "ok"}
    if times:
        out.update(median_s=statistics.median(times), min_s=min(times), reps=len(times), times_s=times)
    out.update(extra)
    if packed is not None:
        out["_packed"] = packed
    if call is not None:
        out["_call"] = call
    return out


def _interleaved(calls: dict[str, Callable[[], object]], rounds: int, bursts: dict[str, int]) -> tuple[dict, dict]:
    """(steady times, first times) of every call in `rounds` rounds, the order rotating from
    round to round. On a shared machine whose speed drifts by 1.5x within minutes, a ratio of
    two methods' times in the same round is far steadier than a ratio of medians taken minutes
    apart. In its turn a method runs a burst of `bursts[name]` calls (several where one call
    is far shorter than a round, two where two fit in a round, _burst): its steady time for
    the round is the median of the burst's calls after the first, as the issue asks (steady
    state); the burst's first call, after the other methods have filled the caches with their
    own data, is kept apart (slower: up to 3x at 0.1 ms a call, 1.1x at 10 ms)."""
    names = list(calls)
    steady: dict[str, list[float]] = {name: [] for name in names}
    first: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times = []
            for _ in range(bursts.get(name, 1)):
                t0 = time.perf_counter()
                calls[name]()
                times.append(time.perf_counter() - t0)
            steady[name].append(statistics.median(times[1:] or times))
            first[name].append(times[0])
    return steady, first


def _burst(median_s: float, settings: "Settings") -> int:
    """Calls per turn in the interleaved rounds: enough for about settings.burst_s of work, at
    most settings.max_burst; at least two where two calls take at most settings.round_max_s
    (one call after another method is a cold call, not the steady state), else one."""
    least = 2 if 2 * median_s <= settings.round_max_s else 1
    return max(least, min(settings.max_burst, int(settings.burst_s / max(median_s, 1e-9))))


def _skipped(status: str, note: str, **extra) -> dict:
    return {"status": status, "note": note, "median_s": None, **extra}


# ----------------------------------------------------------------------------- memory


def _nbytes(a) -> int:
    return int(a.numel() * a.element_size()) if hasattr(a, "element_size") else int(np.asarray(a).nbytes)


def _torch_call_peak(call) -> tuple[object, int]:
    """(result, peak bytes) of call(): torch.profiler's CPU allocator events, summed in time order."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        out = call()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())  # stable: ties keep the profiler's order
    live = peak = 0
    for e in events:
        if str(e.device_type()).endswith("CPU"):
            live += e.nbytes()
            peak = max(peak, live)
    return out, peak


def _numpy_call_peak(call) -> tuple[object, int]:
    """(result, peak bytes) of call() by tracemalloc, above what was traced before the call."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        out = call()
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if started:
            tracemalloc.stop()
    return out, peak


MEMORY_METHODS = {
    "numpy": "tracemalloc peak during the call (numpy reports its buffers to tracemalloc)",
    "torch": "torch.profiler(profile_memory=True): CPU allocator allocations minus frees, peak in time order",
}


def call_memory(module, params, x, backend: str) -> dict:
    """Peak memory of one call of ``module.derivatives(params, x)`` against its output plus weights.

    ``peak_bytes`` counts what the call allocated above what was live before it (the output
    included); ``output_bytes`` = batch x outputs x len(MULTI_INDICES) x 8; ``ratio`` =
    peak / (output + weights). Call it on a warm module (index tables built at import are
    not counted; they are the module's, not the call's).
    """
    method = MEMORY_METHODS[backend]
    if backend == "torch" and getattr(x, "is_cuda", False):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = _sync(module.derivatives(params, x), "cuda")
        peak, method = torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated"
    else:
        measure = _torch_call_peak if backend == "torch" else _numpy_call_peak
        out, peak = measure(lambda: module.derivatives(params, x))
    batch = int(x.shape[0])
    output_bytes = batch * int(module.OUTPUTS) * len(module.MULTI_INDICES) * 8
    weights_bytes = sum(_nbytes(p) for p in params)
    return {
        "peak_bytes": int(peak), "output_bytes": output_bytes, "weights_bytes": weights_bytes,
        "input_bytes": _nbytes(x), "returned_bytes": _nbytes(out),
        "ratio": peak / (output_bytes + weights_bytes), "method": method,
    }


def _proc_status(pid="self") -> dict:
    """A process's resident set (VmRSS) and its high-water mark (VmHWM), bytes, from /proc ({} without it)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def _rss() -> dict:
    """This process's VmRSS and VmHWM (the memory check runs on Linux: it needs /proc)."""
    return _proc_status()


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- matmul rate


def matmul_rate(quick: bool, device: str = "cpu") -> dict:
    """float64 GEMM rates (GFLOP/s): a square 1024 one and one shaped like the kernels' (M x 64 @ 64 x 64)."""
    import torch

    out = {}
    shapes = {"square_1024": (1024, 1024, 1024), "kernel_like_65536x64x64": (65536, 64, 64)}
    settings = Settings.make(True) if quick else dataclasses.replace(Settings.make(False), min_time=1.0)
    rng = np.random.default_rng(0)
    for name, (m, k, n) in shapes.items():
        a, b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
        ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
        flops = 2.0 * m * k * n
        t_torch = statistics.median(_repeat(lambda: _sync(ta @ tb, device), settings)[0])
        t_numpy = statistics.median(_repeat(lambda: a @ b, settings)[0])
        out[name] = {
            "shape": [m, k, n],
            "torch_gflops": flops / t_torch / 1e9,
            "numpy_gflops": flops / t_numpy / 1e9,
        }
    shaped = list(out.values())
    for library in ("torch", "numpy"):  # each backend's kernels are set against their own library's GEMM
        out[f"{library}_peak_gflops"] = max(v[f"{library}_gflops"] for v in shaped)
    out["peak_gflops"] = max(out["torch_peak_gflops"], out["numpy_peak_gflops"])
    out["device"] = device
    return out


def _sync(value, device):
    if device != "cpu":
        import torch

        torch.cuda.synchronize()
    return value


# ----------------------------------------------------------------------------- our kernels


def kernel_multiply_adds(module, device: str = "cpu") -> dict | None:
    """Multiply-adds per batch element of one call of a generated kernel, as the module states
    it for the path taken on that device (a torch kernel on a GPU keeps the powers of Z)."""
    stated = getattr(module, "MULTIPLY_ADDS", None)
    if device != "cpu":
        stated = getattr(getattr(module, "_KERNEL", None), "_MULTIPLY_ADDS_BY_POWERS", stated)
    return None if stated is None else {**stated, "source": "module"}


def _counted_gemm_macs(module, params, x) -> float | None:
    """Matrix-product multiply-adds per batch element of one call, as torch's FlopCounterMode counts them."""
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:
        return None
    with FlopCounterMode(display=False) as counter:
        module.derivatives(params, x)
    return counter.get_total_flops() / 2 / x.shape[0]


def _cold_compile_code(cell: Cell, backend: str, device: str) -> str:
    return (
        "import json, sys, tempfile, time\n"
        "from diagramc.bench import Cell, _cold_compile\n"
        f"print('COLD ' + json.dumps(_cold_compile(Cell({cell.d}, {cell.order}, {cell.batch}), "
        f"{backend!r}, {device!r})))\n"
    )


def _cold_compile(cell: Cell, backend: str, device: str) -> dict:
    """diagramc.compile into a new empty folder plus the first call (libraries imported already);
    for NumPy kernels then the same in a later process (``later_process``), whose numba loops
    load from the disk cache the first left beside the module.

    Every cache of compiled modules is keyed by the module's path, so a new folder misses them;
    in a process that compiled before, sympy's own caches may still be warm.
    """
    params, x = _our_inputs(cell, backend, device)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        module = compile_cell(cell, backend, folder)
        t1 = time.perf_counter()
        _sync(module.derivatives(params, x), device)
        t2 = time.perf_counter()
        size = Path(module.__file__).stat().st_size
        later = _later_process_start(cell, folder) if backend == "numpy" else None
    return {"compile_s": t1 - t0, "first_call_s": t2 - t1, "cold_total_s": t2 - t0, "module_bytes": size,
            **({} if later is None else {"later_process": later})}


def _later_process_start(cell: Cell, folder: str) -> dict | None:
    """A NumPy kernel already in `folder`, in a fresh process: diagramc.compile (finds the
    module intact and imports it) and the first call, numba's loops loaded from its disk cache."""
    code = (
        "import json, time\n"
        "from diagramc.bench import Cell, compile_cell, _our_inputs\n"
        f"cell = Cell({cell.d}, {cell.order}, {cell.batch})\n"
        "params, x = _our_inputs(cell, 'numpy', 'cpu')\n"
        "t0 = time.perf_counter()\n"
        f"module = compile_cell(cell, 'numpy', {folder!r})\n"
        "t1 = time.perf_counter()\n"
        "module.derivatives(params, x)\n"
        "t2 = time.perf_counter()\n"
        "print('LATER ' + json.dumps({'compile_s': t1 - t0, 'first_call_s': t2 - t1, 'total_s': t2 - t0}))\n"
    )
    return _fresh_process_report(code, "LATER ", timeout=600)[0]


def _fresh_process_report(code: str, tag: str, timeout: float) -> tuple[dict | None, str]:
    """Runs `code` in a fresh Python process that imports this checkout's diagramc: the JSON it
    printed after `tag` (None if it printed none) and the end of its stderr."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith(tag):
            return json.loads(line[len(tag):]), proc.stderr[-2000:]
    return None, proc.stderr[-2000:]


def _cold_compile_timed(cell: Cell, backend: str, device: str, settings: Settings) -> dict:
    if not settings.cold_compile_subprocess:
        return {**_cold_compile(cell, backend, device), "cold_in": "this process (sympy caches may be warm)"}
    report, errors = _fresh_process_report(_cold_compile_code(cell, backend, device), "COLD ", timeout=1800)
    if report is None:
        raise RuntimeError(f"cold compile of {cell.label} ({backend}) failed:\n{errors}")
    return {**report, "cold_in": "a fresh process"}


def _our_inputs(cell: Cell, backend: str, device: str):
    params, x = make_problem(cell)
    if backend == "torch":
        import torch

        return [torch.from_numpy(p).to(device) for p in params], torch.from_numpy(x).to(device)
    return params, x


def compile_cell(cell: Cell, backend: str, out_dir=None):
    """Our kernel of a cell's network (d-64-64-64-1, tanh) at its order: ``diagramc.compile``."""
    import diagramc

    arch = diagramc.Architecture(layer_sizes=(cell.d, *HIDDEN, 1), activation=ACTIVATION)
    return diagramc.compile(arch, cell.order, backend=backend, out_dir=out_dir)


def bench_ours(cell: Cell, backend: str, settings: Settings, kernel_dir: Path, device: str) -> dict:
    cold = _cold_compile_timed(cell, backend, device if backend == "torch" else "cpu", settings)
    module = compile_cell(cell, backend, kernel_dir)
    expected = tuple(mi.up_to_order(cell.d, cell.order))
    if tuple(map(tuple, module.MULTI_INDICES)) != expected:
        raise RuntimeError(f"{module.__file__}: MULTI_INDICES are not all of orders 0..{cell.order} in canonical order")
    params, x = _our_inputs(cell, backend, device if backend == "torch" else "cpu")
    dev = device if backend == "torch" else "cpu"
    call = lambda: _sync(module.derivatives(params, x), dev)  # noqa: E731
    times, out = _repeat(call, settings)
    packed = (out.cpu().numpy() if backend == "torch" else np.asarray(out))[:, 0, :]
    macs = kernel_multiply_adds(module, dev)
    if macs is not None and backend == "torch":
        macs["gemm_counted_by_torch"] = _counted_gemm_macs(module, params, x)
    memory = call_memory(module, params, x, backend)
    source = Path(module.__file__).read_bytes()
    return _result(times, packed, call, compile_s=cold["cold_total_s"], cold_compile=cold, memory=memory,
                   multiply_adds_per_sample=macs, module=str(module.__file__),
                   fused_loops=bool(getattr(getattr(module, "_KERNEL", None), "_FUSED", False)),
                   module_sha256=hashlib.sha256(source).hexdigest())


def bench_ours_graphed(cell: Cell, kernel_dir: Path, settings: Settings, device: str) -> dict:
    """Our torch kernel recorded once as a CUDA graph (diagramc.cuda_graphed) and replayed."""
    import diagramc

    module = compile_cell(cell, "torch", kernel_dir)
    params, x = _our_inputs(cell, "torch", device)
    t0 = time.perf_counter()
    evaluate = diagramc.cuda_graphed(module.derivatives, params, x)
    record_s = time.perf_counter() - t0
    call = lambda: _sync(evaluate(params, x), device)  # noqa: E731
    times, out = _repeat(call, settings)
    return _result(times, out.cpu().numpy()[:, 0, :], call, record_s=record_s,
                   multiply_adds_per_sample=kernel_multiply_adds(module, device))


def bench_ours_compiled(cell: Cell, kernel_dir: Path, settings: Settings, device: str) -> dict:
    """Our torch kernel under ``torch.compile(mode="reduce-overhead")`` (fused GPU kernels in a
    CUDA graph): the opt-in for a GPU; its compile time is reported like JAX's jit."""
    import torch

    module = compile_cell(cell, "torch", kernel_dir)
    params, x = _our_inputs(cell, "torch", device)
    compiled = torch.compile(module.derivatives, mode="reduce-overhead", dynamic=False)
    t0 = time.perf_counter()
    _sync(compiled(params, x), device)
    compile_s = time.perf_counter() - t0
    call = lambda: _sync(compiled(params, x).clone(), device)  # noqa: E731  (the graph's output is reused)
    times, out = _repeat(call, settings)
    return _result(times, out.cpu().numpy()[:, 0, :], call, compile_s=compile_s,
                   multiply_adds_per_sample=kernel_multiply_adds(module, device))


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
        return _sync(run(xs), device)

    work = cell.batch * (cell.d + 1) ** cell.order
    if work > settings.eager_max_work:
        return _skipped("skipped", f"quick mode: batch x (d+1)^n = {work:,} tangent columns")
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
    times, out = _repeat(lambda: call(tx), settings, first=estimate or None)
    packed = pack_dense([t.cpu().numpy() for t in out], cell.d)
    return _result(times, packed, lambda: call(tx), probes=probes)


# ----------------------------------------------------------------------------- JAX


def _jax():
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

    times, out = _repeat(call, settings)
    return times, compile_s, out, call


def bench_jax_jacfwd(cell: Cell, settings: Settings) -> dict:
    jax = _jax()
    if jax is None:
        return _skipped("unavailable", "JAX is not installed (pip install diagramc[bench])")
    if cell.order > settings.jax_jacfwd_max_order:
        return _skipped("skipped", f"quick mode: nested jacfwd at order {cell.order} compiles for ~a minute")
    if cell.batch * cell.d**cell.order > settings.jax_jacfwd_max_entries:
        return _skipped("skipped", f"quick mode: {cell.batch} x {cell.d}^{cell.order} dense entries")
    params, x = make_problem(cell)
    fn = jax.vmap(_all_orders(jax.jacfwd, _jax_mlp(params), cell.order))
    times, compile_s, out, call = _jit_timed(fn, (jax.numpy.asarray(x),), settings)
    return _result(times, pack_dense([np.asarray(t) for t in out], cell.d), call, compile_s=compile_s)


def bench_jax_hessian(cell: Cell, settings: Settings) -> dict:
    jax = _jax()
    if jax is None:
        return _skipped("unavailable", "JAX is not installed (pip install diagramc[bench])")
    if cell.order != 2:
        return _skipped("n/a", "order 2 only")
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
    return _result(times, pack_dense([np.asarray(t) for t in out], cell.d), call, compile_s=compile_s)


@functools.lru_cache(maxsize=None)
def _generalised_binomial(r: Fraction, q: int) -> Fraction:
    out = Fraction(1)
    for t in range(q):
        out *= r - t
    return out / math.factorial(q)


@functools.lru_cache(maxsize=None)
def _gamma(pairs: tuple, n: int) -> Fraction:
    """gamma_ij from the pairs (i_m, j_m) over supp(i): invariant under permuting the variables."""
    k = sum(a for a, _ in pairs)
    gamma = Fraction(0)
    for parts in itertools.product(*(range(a + 1) for a, _ in pairs)):
        size = sum(parts)
        if size == 0:
            continue
        term = Fraction((-1) ** (k - size)) * Fraction(size, n) ** k
        for (a, b), lm in zip(pairs, parts):
            term *= math.comb(a, lm) * _generalised_binomial(Fraction(n * lm, size), b)
        gamma += term
    return gamma


@functools.lru_cache(maxsize=32)
def interpolation_coefficients(d: int, n: int, k: int):
    """Griewank-Utke-Walther: D^i f(x) = sum_j gamma_ij c_k(j) for every |i| = k <= n.

    j runs over the order-n multi-indices, read as directions in R^d; c_k(j) is the k-th
    Taylor coefficient (d^k/dt^k / k!) of t -> f(x + t j). Exact rationals:
        gamma_ij = sum_{0 < l <= i} (-1)^(|i - l|) C(i, l) C(n l / |l|, j) (|l| / n)^k
    (C of multi-indices: products of generalised binomials). gamma_ij vanishes unless
    supp(j) is within supp(i). Returns sparse (rows, cols, values) over the canonical
    lists of order k (rows) and order n (cols).
    """
    directions = {j: c for c, j in enumerate(mi.of_order(d, n))}
    rows, cols, values = [], [], []
    for r, i in enumerate(mi.of_order(d, k)):
        support = [m for m in range(d) if i[m]]
        for combo in itertools.combinations_with_replacement(support, n):
            j = mi.exponents(combo, d)
            gamma = _gamma(tuple(sorted((i[m], j[m]) for m in support)), n)
            if gamma:
                rows.append(r)
                cols.append(directions[j])
                values.append(float(gamma))
    return np.array(rows, dtype=np.int32), np.array(cols, dtype=np.int32), np.array(values)


def bench_jax_jet(cell: Cell, settings: Settings) -> dict:
    jax = _jax()
    if jax is None:
        return _skipped("unavailable", "JAX is not installed (pip install diagramc[bench])")
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

    times, compile_s, out, call = _jit_timed(all_orders, (jnp.asarray(x),), settings)
    return _result(times, np.asarray(out), call, compile_s=compile_s, directions=int(directions.shape[0]))


# ----------------------------------------------------------------------------- memory check

GiB = 2**30


def _memory_check_child(d: int, order: int, batches, backend: str, rss_limit: int, folder: str) -> None:
    """In a fresh process: compile, import, then time and measure one call per batch; JSON lines on stdout."""
    import diagramc
    from . import compiler
    from .compiler import cache
    from .compiler.spec import KernelSpec

    def emit(kind, **data):
        print("MEMCHECK " + json.dumps({"kind": kind, **data}, default=float), flush=True)

    if backend == "torch":
        import torch  # imported before the baseline, like numpy

        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    emit("start", rss=_rss())
    arch = diagramc.Architecture(layer_sizes=(d, *HIDDEN, 1), activation=ACTIVATION)
    spec = KernelSpec.create(arch, order, backend, None, False)
    t0 = time.perf_counter()
    source = compiler.compile_source(spec, folder)
    t1 = time.perf_counter()
    module = cache.load(Path(folder) / f"{spec.module_name()}.py", source)
    t2 = time.perf_counter()
    emit("compiled", compile_s=t1 - t0, import_s=t2 - t1, module_bytes=len(source.encode()),
         multi_indices=len(module.MULTI_INDICES), rss=_rss())
    measured = None  # (batch, peak bytes) of the last call

    def predicted_peak(batch):
        """The working set grows with the batch up to one chunk (_CHUNK points), the output with all of it."""
        last_batch, last_peak = measured
        chunk = getattr(getattr(module, "_KERNEL", None), "_CHUNK", batch)
        output = len(module.MULTI_INDICES) * 8 * module.OUTPUTS
        work = max(last_peak - output * last_batch, 0) / min(last_batch, chunk)
        return work * min(batch, chunk) + output * batch

    for batch in batches:
        rss = _rss()
        asked = batch
        while measured is not None and batch > 1:
            predicted = rss["VmRSS"] + 1.1 * predicted_peak(batch)
            if predicted <= 0.9 * rss_limit:
                break
            emit("skipped", batch=batch, predicted_rss=predicted,
                 note=f"would need ~{predicted / GiB:.1f} GiB (> 90% of the {rss_limit / GiB:.0f} GiB limit); halved")
            batch //= 2
        if batch != asked and batch in batches:
            continue
        params, x = _our_inputs(Cell(d, order, batch), backend, "cpu")
        t0 = time.perf_counter()
        module.derivatives(params, x)
        first = time.perf_counter() - t0
        before = _rss()
        hwm_reset = _reset_hwm()
        t0 = time.perf_counter()
        out = module.derivatives(params, x)
        call_s = time.perf_counter() - t0
        after = _rss()
        del out
        memory = call_memory(module, params, x, backend)
        rss_increase = (after["VmHWM"] - before["VmRSS"]) if hwm_reset else None
        measured = (batch, max(memory["peak_bytes"], rss_increase or 0))
        emit("batch", batch=batch, first_call_s=first, call_s=call_s, memory=memory,
             rss_before=before["VmRSS"], rss_peak_increase=rss_increase, rss_hwm_reset=hwm_reset,
             process_rss_peak=after["VmHWM"])
    emit("done", rss=_rss())


def memory_check(d: int = 64, order: int = 4, batch: int = 1, backend: str = "numpy", *,
                 batches=None, rss_limit_gib: float = 12.0, timeout: float = 1800.0, out_dir=None) -> dict:
    """Compile and run the order-``order``, d = ``d`` kernel (tanh, hidden 64-64-64) in a watched subprocess.

    Reports the compile time (rendering the source), import time (writing and importing the
    module: its index tables are built then), and per batch (``batch`` and 16 unless
    ``batches`` is given) the first and a warm call's time, the call's peak memory against
    output plus weights (:func:`call_memory`) and the rise of the process's peak RSS during
    a call (VmHWM after minus VmRSS before). The subprocess is killed when its RSS passes
    ``rss_limit_gib`` or it runs past ``timeout`` seconds; what it reported until then is kept.
    A batch whose predicted peak (the working set, which grows up to one chunk of the batch,
    plus the output) would pass 90% of the limit is halved until it fits. Prints a summary;
    writes ``memory_check.json`` in ``out_dir`` when given. Returns the report.
    """
    batches = list(batches) if batches is not None else sorted({batch, 16})
    rss_limit = int(rss_limit_gib * GiB)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    report = {"d": d, "order": order, "backend": backend, "hidden": list(HIDDEN), "activation": ACTIVATION,
              "requested_batches": batches, "rss_limit_bytes": rss_limit, "timeout_s": timeout,
              "events": [], "status": "running"}
    with tempfile.TemporaryDirectory() as folder:
        code = (f"from diagramc.bench import _memory_check_child\n"
                f"_memory_check_child({d}, {order}, {batches!r}, {backend!r}, {rss_limit}, {folder!r})\n")
        t_start = time.perf_counter()
        with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
            proc = subprocess.Popen([sys.executable, "-c", code], stdout=stdout, stderr=stderr, text=True, env=env)
            max_rss = 0
            while proc.poll() is None:
                rss = _child_rss(proc.pid)
                max_rss = max(max_rss, rss)
                elapsed = time.perf_counter() - t_start
                if rss > rss_limit or elapsed > timeout:
                    proc.kill()
                    proc.wait()
                    report["status"] = (f"killed: RSS {rss / GiB:.1f} GiB > {rss_limit_gib:g} GiB" if rss > rss_limit
                                        else f"killed: ran past {timeout:.0f} s")
                    break
                time.sleep(0.1)
            report["wall_s"] = time.perf_counter() - t_start
            report["child_rss_max_sampled"] = max_rss
            stdout.seek(0)
            stderr.seek(0)
            for line in stdout.read().splitlines():
                if line.startswith("MEMCHECK "):
                    report["events"].append(json.loads(line[9:]))
            if report["status"] == "running":
                report["status"] = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            if proc.returncode != 0:
                report["stderr_tail"] = stderr.read()[-3000:]
    for event in report["events"]:
        if event["kind"] == "compiled":
            report.update({k: event[k] for k in ("compile_s", "import_s", "module_bytes", "multi_indices")})
    report["batches"] = [e for e in report["events"] if e["kind"] == "batch"]
    print(format_memory_check(report))
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "memory_check.json").write_text(json.dumps(report, indent=1, default=float))
    return report


def _child_rss(pid: int) -> int:
    return _proc_status(pid).get("VmRSS", 0)


def format_memory_check(report: dict) -> str:
    lines = [f"memory check: d={report['d']} n={report['order']} {report['backend']}, "
             f"hidden {'-'.join(map(str, report['hidden']))} {report['activation']}: {report['status']}"]
    if "compile_s" in report:
        lines.append(f"  {report['multi_indices']:,} multi-indices; compile {report['compile_s']:.1f} s, "
                     f"import {report['import_s']:.1f} s, module {report['module_bytes'] / 1e3:.0f} kB")
    for b in report["batches"]:
        mem = b["memory"]
        rise = b.get("rss_peak_increase")
        lines.append(
            f"  batch {b['batch']}: call {b['call_s']:.3g} s (first {b['first_call_s']:.3g} s); peak {_mib(mem['peak_bytes'])} "
            f"= {mem['ratio']:.3g} x (output {_mib(mem['output_bytes'])} + weights {_mib(mem['weights_bytes'])}); "
            f"RSS rise {_mib(rise) if rise is not None else '-'}, process peak RSS {b['process_rss_peak'] / GiB:.2f} GiB")
    for e in report["events"]:
        if e["kind"] == "skipped":
            lines.append(f"  batch {e['batch']}: skipped, {e['note']}")
    lines.append(f"  largest RSS seen by the watcher: {report['child_rss_max_sampled'] / GiB:.2f} GiB; "
                 f"wall {report['wall_s']:.0f} s")
    if report.get("stderr_tail"):
        lines.append("  stderr: " + report["stderr_tail"][-1000:])
    return "\n".join(lines)


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
            methods[name] = _skipped("error", f"{type(exc).__name__}: {exc}"[:2000])
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
        bursts = {name: _burst(methods[name]["median_s"], settings) for name in fast}
        steady, first = _interleaved(fast, settings.rounds, bursts)
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

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device != "cpu" else platform.processor() or platform.machine(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")},
    }
    jax = _jax()
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


def _ms(t) -> str:
    if t is None:
        return "-"
    return f"{t * 1e3:.3g}" if t < 10 else f"{t * 1e3:.0f}"


def format_table(report: dict) -> str:
    """Medians (ms), cold compile times, anchor/ours ratios and agreement, one row per cell."""
    cells = report["cells"]
    present = [m for m in (*OURS, *ANCHORS) if any(m in c["methods"] for c in cells)]
    head = ["cell"] + [SHORT_NAMES[m] for m in present] + ["best anchor / ours", "max rel err"]
    rows = []
    for c in cells:
        row = [f"d={c['d']} n={c['order']} b={c['batch']}"]
        for m in present:
            r = c["methods"].get(m, {})
            if r.get("median_s") is not None:
                text = _ms(r.get("interleaved_median_s") or r["median_s"])
                if r.get("compile_s") is not None:
                    text += f" (c {r['compile_s']:.2g}s)"
            elif r.get("status") == "estimated":
                text = f"~{_ms(r['estimate_s'])} est"
            else:
                text = r.get("status", "-")
            row.append(text)
        ratio = c.get("best_anchor_over_best_ours")
        row.append(f"{ratio:.3g} ({SHORT_NAMES[c['best_anchor']]})" if ratio else "-")
        errs = [a["max_rel_error"] for a in c["agreement"].values()]
        row.append(f"{max(errs):.1e}" if errs else "-")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)) for r in [head] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("times: median ms of repeated runs (of the interleaved rounds for methods fast enough to take "
                 "part); (c X s) = cold compile (ours) or jit compile (JAX); est = estimated from a small batch")
    lines.append("best anchor / ours: the median, over the rounds, of the ratio within a round (where both took "
                 "part); in a round each method runs a burst of calls (~10 ms of them, at least 2, at most 25) and "
                 "counts the median of its calls after the first, its steady state; ratio > 1: our kernel is faster")
    pinned = report.get("settings", {}).get("pinned_cores")
    if pinned is not None:
        lines.append(f"every method ran pinned to core(s) {', '.join(map(str, pinned))} (--threads {len(pinned)})")
    fused = {c["methods"].get("diagramc_numpy", {}).get("fused_loops") for c in cells} - {None}
    if fused:
        lines.append("ours numpy: " + ("fused loops (numba)" if fused == {True} else "NumPy operations only "
                     "(pip install diagramc[fast] for fused loops)" if fused == {False} else "mixed"))
    ratio_lines = ["anchor time / our time (best of our backends):"]
    for c in cells:
        parts = [f"{SHORT_NAMES[a]} {v['best_ours']:.3g}" + (" (est)" if c["methods"][a]["status"] == "estimated" else "")
                 for a, v in c["ratios_anchor_over_ours"].items()]
        minima, first = c.get("best_anchor_over_best_ours_of_minima"), c.get("best_anchor_over_best_ours_first_calls")
        ratio_lines.append(f"  d={c['d']} n={c['order']} b={c['batch']}: " + ", ".join(parts)
                           + (f"; best anchor / ours of the fastest runs {minima:.3g}" if minima else "")
                           + (f", of the bursts' first calls (cold caches) {first:.3g}" if first else ""))
    rate = report["matmul"]
    rate_lines = [f"float64 GEMM rate (torch on {rate.get('device', 'cpu')}, numpy on cpu): peak {rate['peak_gflops']:.1f} GFLOP/s "
                  + ", ".join(f"{k}: torch {v['torch_gflops']:.1f} numpy {v['numpy_gflops']:.1f}"
                              for k, v in rate.items() if isinstance(v, dict))]
    for c in cells:
        for m in OURS:
            r = c["methods"].get(m)
            if r and r.get("gflops"):
                peak = rate.get(f"{'numpy' if m == 'diagramc_numpy' else 'torch'}_peak_gflops", rate["peak_gflops"])
                rate_lines.append(
                    f"  {SHORT_NAMES[m]} d={c['d']} n={c['order']} b={c['batch']}: "
                    f"{r['multiply_adds_per_sample']['total']:,} multiply-adds/sample, "
                    f"{r['gflops']:.3g} GFLOP/s = {r['gflops'] / peak:.2%} of its library's GEMM peak")
    start_lines = ["ours numpy, cold compile (enumeration, sympy, emission + first call) / in a later process "
                   "(import + first call, numba's loops from its disk cache):"]
    for c in cells:
        cold = (c["methods"].get("diagramc_numpy") or {}).get("cold_compile") or {}
        later = cold.get("later_process")
        if later:
            start_lines.append(f"  d={c['d']} n={c['order']} b={c['batch']}: {cold['compile_s']:.2f} + "
                               f"{cold['first_call_s']:.2f} s / {later['compile_s']:.2f} + {later['first_call_s']:.2f} s")
    memory_lines = ["peak memory of one call = ratio x (output + weights):"]
    for c in cells:
        for m in OURS:
            mem = (c["methods"].get(m) or {}).get("memory")
            if mem:
                memory_lines.append(
                    f"  {SHORT_NAMES[m]} d={c['d']} n={c['order']} b={c['batch']}: peak {_mib(mem['peak_bytes'])} = "
                    f"{mem['ratio']:.3g} x (output {_mib(mem['output_bytes'])} + weights {_mib(mem['weights_bytes'])})")
    starts = [""] + start_lines if len(start_lines) > 1 else []
    return "\n".join(lines + [""] + ratio_lines + [""] + rate_lines + starts + [""] + memory_lines)


def _mib(n: float) -> str:
    return f"{n / 2**20:.3g} MiB"


def plot(report: dict, path: Path) -> None:
    """Time against order: one colour per method, one marker per d; hollow: batch != 256 or estimated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    names = [m for m in (*OURS, *ANCHORS) if any(m in c["methods"] for c in report["cells"])]
    colors = {m: f"C{i}" for i, m in enumerate(names)}
    shift = {m: (i - (len(names) - 1) / 2) * 0.07 for i, m in enumerate(names)}
    markers: dict[int, str] = {}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for c in report["cells"]:
        marker = markers.setdefault(c["d"], "osD^vp*h"[len(markers) % 8])
        for m, r in c["methods"].items():
            t = r.get("interleaved_median_s") or r.get("median_s") or r.get("estimate_s")
            if not t:
                continue
            hollow = c["batch"] != 256 or r.get("status") == "estimated"
            ax.plot(c["order"] + shift[m], t, marker=marker, markersize=8, linestyle="none", color=colors[m],
                    markerfacecolor="none" if hollow else colors[m])
    handles = [Line2D([], [], color=colors[m], marker="o", linestyle="none", label=SHORT_NAMES[m]) for m in names]
    handles += [Line2D([], [], color="gray", marker=mk, linestyle="none", label=f"d = {d}") for d, mk in markers.items()]
    ax.legend(handles=handles, fontsize=8, ncol=2)
    ax.set_yscale("log")
    orders = sorted({c["order"] for c in report["cells"]})
    ax.set_xticks(orders)
    ax.set_xlim(orders[0] - 0.5, orders[-1] + 0.5)
    ax.set_xlabel("order n (all derivatives of orders 0..n)")
    ax.set_ylabel("seconds per call (median)")
    machine = report.get("machine", {})
    where = f"torch on {machine.get('device', 'cpu')} ({machine.get('device_name') or '?'})"
    ax.set_title(f"tanh MLP d-64-64-64-1, float64, batch 256 (hollow: other batch, or estimated); {where}", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="diagramc benchmark; --memory: the d=64 order-4 memory check")
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory", action="store_true", help="run memory_check() instead of the timing bench")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "torch"))
    parser.add_argument("--rss-limit-gib", type=float, default=12.0)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    if args.memory:
        memory_check(args.d, args.order, backend=args.backend, batches=[int(b) for b in args.batches.split(",")],
                     rss_limit_gib=args.rss_limit_gib, timeout=args.timeout, out_dir=args.out)
    else:
        run_bench(args.out, quick=args.quick)
