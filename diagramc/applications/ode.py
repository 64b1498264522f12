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

_MODULES: dict = {}  # (architecture, order) -> the loaded torch jet module
_READ = weakref.WeakKeyDictionary()  # model -> (its layers, their weights' shapes, architecture, Linear layers)


def _layers(model):
    """The model's architecture and Linear layers, read again only when its layers change
    (walking and checking an nn.Sequential costs more than a small pass itself)."""
    children = tuple(getattr(model, "_modules", {}).values())
    known = _READ.get(model) if isinstance(model, torch.nn.Module) else None
    if known is not None and known[0] == children:
        params = [p for lin in known[2] for p in (lin._parameters["weight"], lin._parameters["bias"])]
        if all(p is not None and p.shape == shape for p, shape in zip(params, known[3])):
            return known[1], params
    arch = Architecture.from_torch(model)
    params = params_from_torch(model)  # its checks too: every Linear has its bias
    linears = [m for m in children if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Linear"]
    if isinstance(model, torch.nn.Module):
        _READ[model] = (children, arch, linears, tuple(p.shape for p in params))
    return arch, params


def _prepared(model, order: int):
    """The compiled jet module for the model's architecture (from memory after the first call) and
    the model's [W1, b1, ..., WL, bL]."""
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise DiagramcError(f"order must be a non-negative integer, got {order!r}")
    arch, params = _layers(model)
    key = (arch, order)
    module = _MODULES.get(key)
    if module is None:
        module = _MODULES[key] = compile_jet(arch, max(order, 1), "torch")
    return module, params


def _module(model, order: int):
    return _prepared(model, order)[0]


def _series(model, z, order, t, regularizer=False):
    module, params = _prepared(model, order)
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"z must be a torch.Tensor of shape (batch, D), got {type(z).__name__}")
    return module.ode_series(params, z, t, order, regularizer)


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
