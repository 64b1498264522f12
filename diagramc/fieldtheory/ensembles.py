"""The ensemble of single-hidden-layer networks (contract section 11) and input checks.

``f(x) = sum_j W1_j phi(W0_j . x + b0_j) + b1`` with ``W0_j ~ N(0, sigma_w^2/inputs I)``,
``W1_j ~ N(0, sigma_w^2/width)``, ``b0_j, b1 ~ N(0, sigma_b^2)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# The three networks of the paper; any activation of contract section 5 also works.
SPECIAL = ("relu", "erf", "gauss")
MAX_N = 10  # highest n-point function: the set-partition sums grow like the Bell numbers


def _positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _finite(value, name, positive=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return v


@dataclass(frozen=True)
class Ensemble:
    """The distribution of networks; ``phi`` is evaluated by :meth:`phi` (numpy) and :meth:`phi_torch`."""

    activation: str
    inputs: int
    width: int
    sigma_w: float = 1.0
    sigma_b: float = 1.0

    def __post_init__(self):
        if not isinstance(self.activation, str) or not self.activation.strip():
            raise ValueError(f"activation must be 'relu', 'erf', 'gauss' or a name of section 5, got {self.activation!r}")
        name = self.activation.strip().lower()
        if name not in SPECIAL:
            from ..activations import get_activation

            try:
                name = get_activation(self.activation.strip()).name
            except ValueError as exc:
                raise ValueError(f"activation {self.activation!r}: {exc}") from None
        object.__setattr__(self, "activation", name)
        object.__setattr__(self, "inputs", _positive_int(self.inputs, "inputs"))
        object.__setattr__(self, "width", _positive_int(self.width, "width"))
        object.__setattr__(self, "sigma_w", _finite(self.sigma_w, "sigma_w", positive=True))
        object.__setattr__(self, "sigma_b", _finite(self.sigma_b, "sigma_b"))

    def with_width(self, width):
        return Ensemble(self.activation, self.inputs, width, self.sigma_w, self.sigma_b)

    def covariance(self, A, B=None):
        """Covariance of the pre-activations u = W0 . x + b0 at the rows of A and B."""
        B = A if B is None else B
        return self.sigma_b**2 + self.sigma_w**2 * (A @ B.T) / self.inputs

    def self_covariance(self, A):
        """s(x, x) for each row of A."""
        return self.sigma_b**2 + self.sigma_w**2 * np.einsum("pd,pd->p", A, A) / self.inputs

    def phi(self, u, s_diag):
        """phi(u) for pre-activations u (..., m) at points with s(x, x) = s_diag (m,)."""
        if self.activation == "relu":
            return np.maximum(u, 0.0)
        if self.activation == "erf":
            from scipy.special import erf

            return erf(u)
        if self.activation == "gauss":
            # exp(u) / sqrt(exp(2 s(x, x))): the normalisation depends on the input only
            return np.exp(u - s_diag)
        return _numeric(self.activation)(u)

    def phi_torch(self, u, s_diag):
        import torch

        if self.activation == "relu":
            return torch.relu(u)
        if self.activation == "erf":
            return torch.erf(u)
        if self.activation == "gauss":
            return torch.exp(u - s_diag)
        values = np.asarray(_numeric(self.activation)(u.cpu().numpy()), dtype=np.float32)
        return torch.from_numpy(values).to(u.device)


_NUMERIC = {}


def _numeric(name):
    """A numpy function of the activation, lambdified from its sympy expression."""
    if name not in _NUMERIC:
        import sympy as sp

        from ..activations import get_activation, x

        act = get_activation(name)
        # the compiler's own sympy functions (relu's step, an overflow-free softplus)
        table = {"Step": lambda a: np.heaviside(a, 0.0), "Softplus": lambda a: np.logaddexp(0.0, a)}
        fn = sp.lambdify(x, act.expr, modules=[table, "scipy", "numpy"])
        _NUMERIC[name] = lambda u, fn=fn: np.broadcast_to(np.asarray(fn(u), dtype=np.float64), np.shape(u))
    return _NUMERIC[name]


def check_ensemble(net):
    if not isinstance(net, Ensemble):
        raise ValueError(f"net must be a fieldtheory.Ensemble, got {type(net).__name__}")
    return net


def check_points(net, X):
    """X as a float64 array (P, inputs) of finite numbers."""
    check_ensemble(net)
    try:
        A = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"X must be an array of numbers of shape (P, {net.inputs})") from None
    if A.ndim == 1 and net.inputs == 1:
        A = A[:, None]
    if A.ndim != 2 or A.shape[1] != net.inputs or A.shape[0] < 1:
        raise ValueError(f"X must have shape (P, {net.inputs}) with P >= 1, got {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError("X must contain only finite numbers")
    return A


def check_n(n, minimum=1):
    n = _positive_int(n, "n", minimum)
    if n > MAX_N:
        raise ValueError(f"n must be at most {MAX_N} (the set-partition sums grow like the Bell numbers), got {n}")
    return n


def check_cutoff(cutoff):
    return _finite(cutoff, "cutoff", positive=True)
