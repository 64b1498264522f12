"""One thread against all of them: the same NumPy kernel called with diagramc.set_num_threads(1)
and (N) in turn, medians of interleaved rounds, in one process.

    python benchmarks/thread_scaling.py [--threads N] [--rounds 7] [CELL ...]

CELL is d,n[,batch] (batch 256 by default); the default cells are the bench's. Run it on a
quiet machine: another job on the cores moves the two-thread times most.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from diagramc.bench.ours import compile_cell
from diagramc.bench.problem import Cell, make_problem
from diagramc.runtime import threads

CELLS = ("64,2", "2,8", "4,4", "4,5", "8,4", "16,3,64")


def median_call(fn, seconds=0.3):
    fn()
    first = time.perf_counter()
    fn()
    reps = max(3, int(seconds / max(time.perf_counter() - first, 1e-6)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", nargs="*", default=list(CELLS))
    parser.add_argument("--threads", type=int, default=threads.available_cores())
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    if args.threads < 2:
        parser.error(f"--threads is {args.threads}: the comparison needs 2 or more (this process may use "
                     f"{threads.available_cores()} cores)")
    with tempfile.TemporaryDirectory() as folder:
        print(f"| cell | one thread | {args.threads} threads | speed-up |\n| --- | --- | --- | --- |")
        for text in args.cells:
            cell = Cell(*map(int, text.split(",")))
            module = compile_cell(cell, "numpy", folder)
            params, x = make_problem(cell)
            times = {1: [], args.threads: []}
            for _ in range(args.rounds):
                for count in times:
                    threads.set_num_threads(count)
                    times[count].append(median_call(lambda: module.derivatives(params, x)))
            threads.set_num_threads(None)
            one, many = (statistics.median(times[c]) for c in times)
            print(f"| ({text}) | {one * 1e3:.2f} ms | {many * 1e3:.2f} ms | {one / many:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
