"""The compiler: a request through every stage, each a module of this package.

    spec (KernelSpec) -> plan (KernelPlan) -> printing (vertex functions) -> codegen (text)
    -> cache (atomic write, integrity) -> import by path

driver.py calls them in that order; contributions.py compiles the per-diagram kernels.
"""
from .driver import compile, compile_source, loaded, taylor

__all__ = ["compile", "compile_source", "loaded", "taylor"]
