"""The d = 64, order-4 memory check in a watched subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from .measure import proc_status, reset_peak_rss, current_rss, call_memory
from .ours import our_inputs
from .problem import ACTIVATION, Cell, HIDDEN
from .report import format_mib





# ----------------------------------------------------------------------------- memory check

GiB = 2**30


def _memory_check_child(d: int, order: int, batches, backend: str, rss_limit: int, folder: str) -> None:
    """In a fresh process: compile, import, then time and measure one call per batch; JSON lines on stdout."""
    import diagramc
    from .. import compiler
    from ..compiler import cache
    from ..compiler.spec import KernelSpec

    def emit(kind, **data):
        print("MEMCHECK " + json.dumps({"kind": kind, **data}, default=float), flush=True)

    if backend == "torch":
        import torch  # imported before the baseline, like numpy

        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    emit("start", rss=current_rss())
    arch = diagramc.Architecture(layer_sizes=(d, *HIDDEN, 1), activation=ACTIVATION)
    spec = KernelSpec.create(arch, order, backend, None, False)
    t0 = time.perf_counter()
    source = compiler.compile_source(spec, folder)
    t1 = time.perf_counter()
    module = cache.load(Path(folder) / f"{spec.module_name()}.py", source)
    t2 = time.perf_counter()
    emit("compiled", compile_s=t1 - t0, import_s=t2 - t1, module_bytes=len(source.encode()),
         multi_indices=len(module.MULTI_INDICES), rss=current_rss())
    measured = None  # (batch, peak bytes) of the last call

    def predicted_peak(batch):
        """The working set grows with the batch up to one chunk (_CHUNK points), the output with all of it."""
        last_batch, last_peak = measured
        chunk = getattr(getattr(module, "_KERNEL", None), "_CHUNK", batch)
        output = len(module.MULTI_INDICES) * 8 * module.OUTPUTS
        work = max(last_peak - output * last_batch, 0) / min(last_batch, chunk)
        return work * min(batch, chunk) + output * batch

    for batch in batches:
        rss = current_rss()
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
        params, x = our_inputs(Cell(d, order, batch), backend, "cpu")
        t0 = time.perf_counter()
        module.derivatives(params, x)
        first = time.perf_counter() - t0
        before = current_rss()
        hwm_reset = reset_peak_rss()
        t0 = time.perf_counter()
        out = module.derivatives(params, x)
        call_s = time.perf_counter() - t0
        after = current_rss()
        del out
        memory = call_memory(module, params, x, backend)
        rss_increase = (after["VmHWM"] - before["VmRSS"]) if hwm_reset else None
        measured = (batch, max(memory["peak_bytes"], rss_increase or 0))
        emit("batch", batch=batch, first_call_s=first, call_s=call_s, memory=memory,
             rss_before=before["VmRSS"], rss_peak_increase=rss_increase, rss_hwm_reset=hwm_reset,
             process_rss_peak=after["VmHWM"])
    emit("done", rss=current_rss())


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
        code = (f"from diagramc.bench.memory_check import _memory_check_child\n"
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
    return proc_status(pid).get("VmRSS", 0)


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
            f"  batch {b['batch']}: call {b['call_s']:.3g} s (first {b['first_call_s']:.3g} s); peak {format_mib(mem['peak_bytes'])} "
            f"= {mem['ratio']:.3g} x (output {format_mib(mem['output_bytes'])} + weights {format_mib(mem['weights_bytes'])}); "
            f"RSS rise {format_mib(rise) if rise is not None else '-'}, process peak RSS {b['process_rss_peak'] / GiB:.2f} GiB")
    for e in report["events"]:
        if e["kind"] == "skipped":
            lines.append(f"  batch {e['batch']}: skipped, {e['note']}")
    lines.append(f"  largest RSS seen by the watcher: {report['child_rss_max_sampled'] / GiB:.2f} GiB; "
                 f"wall {report['wall_s']:.0f} s")
    if report.get("stderr_tail"):
        lines.append("  stderr: " + report["stderr_tail"][-1000:])
    return "\n".join(lines)
