"""Measuring: interleaved timing rounds, a call's peak memory, the machine's matmul rate."""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
import tracemalloc
from typing import Callable

import numpy as np
from .problem import Settings




# ----------------------------------------------------------------------------- timing


def repeat_call(run: Callable[[], object], settings: Settings, first: float | None = None):
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


def method_result(times=None, packed=None, call=None, **extra) -> dict:
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


def interleaved_rounds(calls: dict[str, Callable[[], object]], rounds: int, bursts: dict[str, int],
                       pause_s: float = 0.0) -> tuple[dict, dict]:
    """(steady times, first times) of every call in `rounds` rounds, the order rotating from
    round to round. On a shared machine whose speed drifts by 1.5x within minutes, a ratio of
    two methods' times in the same round is far steadier than a ratio of medians taken minutes
    apart. In its turn a method runs a burst of `bursts[name]` calls (several where one call
    is far shorter than a round, two where two fit in a round, burst_size): its steady time for
    the round is the median of the burst's calls after the first, as the issue asks (steady
    state); the burst's first call, after the other methods have filled the caches with their
    own data, is kept apart (slower: up to 3x at 0.1 ms a call, 1.1x at 10 ms). Each turn
    starts after an idle pause of pause_s: a library's threads still at work after its call
    returns (XLA's, for about 20 ms after a large call) would otherwise slow the next method
    on the cores they hold, and that is the previous method's cost, not the next one's."""
    names = list(calls)
    steady: dict[str, list[float]] = {name: [] for name in names}
    first: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            time.sleep(pause_s)
            times = []
            for _ in range(bursts.get(name, 1)):
                t0 = time.perf_counter()
                calls[name]()
                times.append(time.perf_counter() - t0)
            steady[name].append(statistics.median(times[1:] or times))
            first[name].append(times[0])
    return steady, first


def burst_size(median_s: float, settings: "Settings") -> int:
    """Calls per turn in the interleaved rounds: enough for about settings.burst_s of work, at
    most settings.max_burst; at least two where two calls take at most settings.round_max_s
    (one call after another method is a cold call, not the steady state), else one."""
    least = 2 if 2 * median_s <= settings.round_max_s else 1
    return max(least, min(settings.max_burst, int(settings.burst_s / max(median_s, 1e-9))))


def skipped_result(status: str, note: str, **extra) -> dict:
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
        out = synchronize(module.derivatives(params, x), "cuda")
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


def proc_status(pid="self") -> dict:
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


def current_rss() -> dict:
    """This process's VmRSS and VmHWM (the memory check runs on Linux: it needs /proc)."""
    return proc_status()


def reset_peak_rss() -> bool:
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
        t_torch = statistics.median(repeat_call(lambda: synchronize(ta @ tb, device), settings)[0])
        t_numpy = statistics.median(repeat_call(lambda: a @ b, settings)[0])
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


def synchronize(value, device):
    if device != "cpu":
        import torch

        torch.cuda.synchronize()
    return value
