"""Neural ODEs (contract section 10): derivatives of solutions and Kelly et al.'s Taylor regularizer.

For dz/dt = f(z) (or f(cat(z, t))) with f an MLP, ``d^k z/dt^k`` at (z, t) for k = 0..K in one
Taylor-mode pass (diagramc.runtime.jet_torch.ode_series): coefficient k of f along the
solution gives coefficient k + 1 of the solution, each layer extending its series by one
coefficient per step. Compiled modules are kept in memory per architecture and order: a call
inside an ODE solver does no file I/O and no hashing.
"""
from __future__ import annotations

import math
import weakref

import torch

from ..errors import DiagramcError
from ..compiler.jets import compile_jet
from ..network import Architecture, params_from_torch
from ..runtime import jet_torch

_MODULES: dict = {}  # (architecture, order) -> the loaded torch jet module
_READ = weakref.WeakKeyDictionary()  # model -> _Read


class _Read:
    """What a model was read as: its layers, their weights' shapes, its architecture, its Linear
    layers and the jet modules it used, by order (walking and checking an nn.Sequential, or
    hashing its architecture, costs more than a small pass itself)."""

    __slots__ = ("children", "arch", "linears", "shapes", "modules", "__weakref__")

    def __init__(self, children, arch, linears, shapes):
        self.children, self.arch, self.linears, self.shapes, self.modules = children, arch, linears, shapes, {}


def _read(model):
    """The model's _Read and its [W1, b1, ..., WL, bL], read again only when its layers change."""
    children = tuple(getattr(model, "_modules", {}).values())
    known = _READ.get(model) if isinstance(model, torch.nn.Module) else None
    if known is not None and known.children == children:
        params = [p for lin in known.linears for p in (lin._parameters["weight"], lin._parameters["bias"])]
        if all(p is not None and p.shape == shape for p, shape in zip(params, known.shapes)):
            return known, params
    arch = Architecture.from_torch(model)
    params = params_from_torch(model)  # its checks too: every Linear has its bias
    linears = [m for m in children if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Linear"]
    known = _Read(children, arch, linears, tuple(p.shape for p in params))
    if isinstance(model, torch.nn.Module):
        _READ[model] = known
    return known, params


def _prepared(model, order: int):
    """The compiled jet module for the model's architecture (from memory after the first call) and
    the model's [W1, b1, ..., WL, bL]."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise DiagramcError(f"order must be a non-negative integer, got {order!r}")
    known, params = _read(model)
    module = known.modules.get(order)
    if module is None:
        key = (known.arch, order)
        module = _MODULES.get(key)
        if module is None:
            module = _MODULES[key] = compile_jet(known.arch, max(order, 1), "torch")
        known.modules[order] = module
    return module, params


def _module(model, order: int):
    return _prepared(model, order)[0]


def _series(model, z, order, t, regularizer=False):
    module, params = _prepared(model, order)
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"z must be a torch.Tensor of shape (batch, D), got {type(z).__name__}")
    D = module.INPUTS - (t is not None)
    if (z.dim() == 2 and z.shape[1] == D == module.OUTPUTS and order <= module.ORDER + 1
            and _alike(params, z.dtype, z.device)):
        # the module's own checks, made here for a model read above: the runtime directly
        return jet_torch.ode_series(params, z, t, order, module.series_activation, module.SERIES_RULE,
                                    module.ACTIVATION, regularizer)
    return module.ode_series(params, z, t, order, regularizer)  # its error says what is wrong


def _alike(params, dtype, device):
    return all(p.dtype == dtype and p.device == device for p in params)


def _factorials(order, like):
    return torch.tensor([math.factorial(k) for k in range(order + 1)], dtype=like.dtype, device=like.device)


def ode_derivatives(model, z, order: int, t=None):
    """d^k z/dt^k for k = 0..order at the points z (batch, D), shape (batch, D, order + 1).

    The dynamics are dz/dt = model(z), or model(cat([z, t])) with time the last input when t
    (a scalar or (batch,)) is given. Differentiable with respect to the model's parameters and z.
    """
    series = _series(model, z, order, t)
    return series * _factorials(order, series)


def taylor_regularizer(model, z, order: int, t=None):
    """Per point (batch,), the mean over the D states of (d^order z/dt^order)^2 (Kelly et al.'s R_K integrand)."""
    if isinstance(order, int) and not isinstance(order, bool) and order < 1:
        raise DiagramcError(f"the regularizer's order must be at least 1, got {order!r}")
    return _series(model, z, order, t, regularizer=True)[1]


class TaylorRegularizedODE(torch.nn.Module):
    """Dynamics for torchdiffeq: ``dynamics(t, (z, r)) -> (model(z[, t]), taylor_regularizer(...))``.

    Integrating the second component from t0 to t1 gives R_K = int mean(||d^K z/dt^K||^2) dt;
    ``r`` itself is not read. Works with ``torchdiffeq.odeint`` and ``odeint_adjoint`` (the model
    is a submodule, so its parameters are this module's).
    """

    def __init__(self, model, order: int, time_input: bool = False):
        super().__init__()
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise DiagramcError(f"the regularizer's order must be a positive integer, got {order!r}")
        self.model = model
        self.order = order
        self.time_input = bool(time_input)
        _module(model, order)  # compiled now, not inside the solver

    def forward(self, t, y):
        z = y[0]
        series, regularizer = _series(self.model, z, self.order, t if self.time_input else None, regularizer=True)
        return series[..., 1], regularizer
