"""Benchmark: diagramc's kernels against the methods users pick today (see driver.py).

problem (cells, the MLP, packing) -> ours / anchors (each method timed) -> measure (rounds,
memory, matmul rate) -> report (table, plot); driver runs the cells; memory_check apart.
"""
from .anchors import bench_jax_hessian, bench_jax_jacfwd, bench_jax_jet, bench_torch_func, interpolation_coefficients
from .driver import run_bench
from .measure import call_memory, matmul_rate
from .memory_check import memory_check
from .ours import compile_cell, kernel_multiply_adds
from .problem import ANCHORS, DEFAULT_CELLS, OURS, Cell, Settings, make_problem, pack_dense
from .report import format_table, plot

__all__ = ["ANCHORS", "DEFAULT_CELLS", "OURS", "Cell", "Settings", "bench_jax_hessian", "bench_jax_jacfwd", "bench_jax_jet",
           "bench_torch_func", "call_memory", "compile_cell", "format_table", "interpolation_coefficients",
           "kernel_multiply_adds", "make_problem", "matmul_rate", "memory_check", "pack_dense", "plot", "run_bench"]
