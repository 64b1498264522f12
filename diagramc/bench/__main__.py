"""python -m diagramc.bench [--quick] [--out DIR] | --memory: the timing bench, or the d = 64, order-4 memory check."""
import argparse

from .driver import run_bench
from .memory_check import memory_check

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
