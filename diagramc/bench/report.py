"""The report: a table on stdout and a plot."""
from __future__ import annotations

from pathlib import Path
from .problem import ANCHORS, OURS, SHORT_NAMES





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
                    f"  {SHORT_NAMES[m]} d={c['d']} n={c['order']} b={c['batch']}: peak {format_mib(mem['peak_bytes'])} = "
                    f"{mem['ratio']:.3g} x (output {format_mib(mem['output_bytes'])} + weights {format_mib(mem['weights_bytes'])})")
    starts = [""] + start_lines if len(start_lines) > 1 else []
    return "\n".join(lines + [""] + ratio_lines + [""] + rate_lines + starts + [""] + memory_lines)


def format_mib(n: float) -> str:
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
