"""The quick bench one cell at a time, the merged report rewritten after each: a GPU lease can
end mid-run, and the cells done by then are already in the report.

    OUT=DIR [DEV=cuda|cpu] [CELLS="4,4 64,2,1"] [THREADS=N] python benchmarks/bench_by_cell.py

Writes DIR/bench.json (diagramc bench's report, its cells appended one run_bench call at a
time) and, at the end, DIR/bench.png. On a GPU the torch backend only (our NumPy kernels
would time its host CPU); on a CPU both. THREADS pins every method to N cores, as
`diagramc bench --threads N`.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from diagramc import bench


def main() -> None:
    out = Path(os.environ.get("OUT", "bench-out/by-cell"))
    out.mkdir(parents=True, exist_ok=True)
    device = os.environ.get("DEV", "cuda")
    threads = int(os.environ["THREADS"]) if os.environ.get("THREADS") else None
    cells = ([bench.Cell(*map(int, text.split(","))) for text in os.environ["CELLS"].split()]
             if os.environ.get("CELLS") else bench.DEFAULT_CELLS)
    report = None
    for cell in cells:
        start = time.time()
        with tempfile.TemporaryDirectory() as scratch:  # the cell's kernels and its own report
            one = bench.run_bench(scratch, quick=True, cells=[cell], device=device, threads=threads,
                                  backends=("torch",) if device != "cpu" else ("numpy", "torch"))
        if report is None:
            report = one
        else:
            report["cells"] += one["cells"]
            report["agree"] = report["agree"] and one["agree"]
        (out / "bench.json").write_text(json.dumps(report, indent=1, default=float))
        print(f"## cell {cell.label} took {time.time() - start:.0f} s", flush=True)
    print(bench.format_table(report))
    bench.plot(report, out / "bench.png")


if __name__ == "__main__":
    main()
