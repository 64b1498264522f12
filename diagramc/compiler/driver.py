"""The driver: a compile request through every stage of the pipeline.

    analysis (KernelSpec) -> plan (KernelPlan) -> vertex functions (sympy, printed)
    -> templates (jinja2) -> cache (atomic write, integrity) -> import by path
"""
from __future__ import annotations

import functools
from pathlib import Path
from types import ModuleType
from typing import Iterable, Sequence

from . import cache, codegen
from ..network import Architecture, params_from_torch
from .spec import KernelSpec


@functools.lru_cache(maxsize=128)
def _render(spec: KernelSpec, out_dir: str) -> str:
    return codegen.render(spec, out_dir)


def compile_source(spec: KernelSpec, out_dir: "str | Path") -> str:
    """The generated module's text for a spec (deterministic; rendered once per process)."""
    return _render(spec, str(out_dir))


def compile(
    arch: Architecture,
    order: int,
    backend: str = "numpy",
    multi_indices: "Iterable[Sequence[int]] | None" = None,
    out_dir: "str | Path | None" = None,
    force: bool = False,
    strategy: "str | None" = None,
) -> ModuleType:
    """Compile the Taylor-coefficient kernel of an architecture up to ``order``; return the imported module.

    ``multi_indices`` restricts the module to a subset (canonical order); ``out_dir``
    defaults to the per-user cache. A module already there is reused only when intact.
    Requests above ``spec.MAX_COEFFICIENTS`` distinct coefficients need ``force=True``.
    ``strategy`` ("products" or "directions") overrides the plan's choice of algorithm.
    """
    spec = KernelSpec.create(arch, order, backend, multi_indices, force, strategy)
    folder = Path(out_dir) if out_dir is not None else cache.default_cache_dir()
    path = folder / f"{spec.module_name()}.py"
    return cache.load(path, compile_source(spec, folder))


_LOADED: dict = {}  # (architecture, order, backend, multi-indices) -> module, for the one-line helpers


def loaded(arch: Architecture, order: int, backend: str, multi_indices=None) -> ModuleType:
    """The compiled module for a request, kept in memory after its first load: a call in a
    training loop does no file I/O and no hashing."""
    key = (arch, order, backend, None if multi_indices is None else tuple(map(tuple, multi_indices)))
    module = _LOADED.get(key)
    if module is None:
        module = _LOADED[key] = compile(arch, order, backend, multi_indices)
    return module


def taylor(model, x, order: int, multi_indices=None, coefficients: bool = True):
    """One call for users: the Taylor coefficients (or derivatives) of a torch MLP at x, up to order.

    Compiles (cached) the torch kernel for the model's architecture and evaluates it on the
    model's own parameters, so the result is differentiable with respect to them.
    Returns a tensor (batch, outputs, len(module.MULTI_INDICES)).
    """
    import torch

    module = loaded(Architecture.from_torch(model), order, "torch", multi_indices)
    params = params_from_torch(model)
    x = torch.as_tensor(x, dtype=params[0].dtype, device=params[0].device)
    if x.ndim == 1:
        x = x[None]
    return (module.taylor_coefficients if coefficients else module.derivatives)(params, x)
