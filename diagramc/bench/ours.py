"""Our kernels in the benchmark: compiled, timed, counted (multiply-adds), cold compile."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ..combinatorics import multi_index as mi
from .measure import repeat_call, method_result, synchronize, call_memory
from .problem import ACTIVATION, Cell, HIDDEN, Settings, make_problem



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
        "from diagramc.bench.ours import Cell, _cold_compile\n"
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
    params, x = our_inputs(cell, backend, device)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        module = compile_cell(cell, backend, folder)
        t1 = time.perf_counter()
        synchronize(module.derivatives(params, x), device)
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
        "from diagramc.bench.ours import Cell, compile_cell, our_inputs\n"
        f"cell = Cell({cell.d}, {cell.order}, {cell.batch})\n"
        "params, x = our_inputs(cell, 'numpy', 'cpu')\n"
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


def our_inputs(cell: Cell, backend: str, device: str):
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
    params, x = our_inputs(cell, backend, device if backend == "torch" else "cpu")
    dev = device if backend == "torch" else "cpu"
    call = lambda: synchronize(module.derivatives(params, x), dev)  # noqa: E731
    times, out = repeat_call(call, settings)
    packed = (out.cpu().numpy() if backend == "torch" else np.asarray(out))[:, 0, :]
    macs = kernel_multiply_adds(module, dev)
    if macs is not None and backend == "torch":
        macs["gemm_counted_by_torch"] = _counted_gemm_macs(module, params, x)
    memory = call_memory(module, params, x, backend)
    source = Path(module.__file__).read_bytes()
    return method_result(times, packed, call, compile_s=cold["cold_total_s"], cold_compile=cold, memory=memory,
                   multiply_adds_per_sample=macs, module=str(module.__file__),
                   fused_loops=bool(getattr(getattr(module, "_KERNEL", None), "_FUSED", False)),
                   module_sha256=hashlib.sha256(source).hexdigest())


def bench_ours_graphed(cell: Cell, kernel_dir: Path, settings: Settings, device: str) -> dict:
    """Our torch kernel recorded once as a CUDA graph (diagramc.cuda_graphed) and replayed."""
    import diagramc

    module = compile_cell(cell, "torch", kernel_dir)
    params, x = our_inputs(cell, "torch", device)
    t0 = time.perf_counter()
    evaluate = diagramc.cuda_graphed(module.derivatives, params, x)
    record_s = time.perf_counter() - t0
    call = lambda: synchronize(evaluate(params, x), device)  # noqa: E731
    times, out = repeat_call(call, settings)
    return method_result(times, out.cpu().numpy()[:, 0, :], call, record_s=record_s,
                   multiply_adds_per_sample=kernel_multiply_adds(module, device))


def bench_ours_compiled(cell: Cell, kernel_dir: Path, settings: Settings, device: str) -> dict:
    """Our torch kernel under ``torch.compile(mode="reduce-overhead")`` (fused GPU kernels in a
    CUDA graph): the opt-in for a GPU; its compile time is reported like JAX's jit."""
    import torch

    module = compile_cell(cell, "torch", kernel_dir)
    params, x = our_inputs(cell, "torch", device)
    compiled = torch.compile(module.derivatives, mode="reduce-overhead", dynamic=False)
    t0 = time.perf_counter()
    synchronize(compiled(params, x), device)
    compile_s = time.perf_counter() - t0
    call = lambda: synchronize(compiled(params, x).clone(), device)  # noqa: E731  (the graph's output is reused)
    times, out = repeat_call(call, settings)
    return method_result(times, out.cpu().numpy()[:, 0, :], call, compile_s=compile_s,
                   multiply_adds_per_sample=kernel_multiply_adds(module, device))
