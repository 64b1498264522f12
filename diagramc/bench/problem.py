"""The benchmark's problem: cells, settings, the MLP and its inputs, packing and errors."""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from ..combinatorics import multi_index as mi



HIDDEN = (64, 64, 64)
ACTIVATION = "tanh"
SEED = 20240531
#: relative error (per order, L2 over the packed vector) below which two methods agree
AGREEMENT_TOL = 1e-7


@dataclasses.dataclass(frozen=True)
class Cell:
    d: int
    order: int
    batch: int = 256

    @property
    def label(self) -> str:
        return f"d={self.d} n={self.order} b={self.batch}"


DEFAULT_CELLS = (
    Cell(4, 4),
    Cell(4, 5),
    Cell(8, 4),
    Cell(16, 3, 64),
    Cell(64, 2),
    Cell(2, 8),
    Cell(64, 2, 1),
)

OURS = ("diagramc_torch", "diagramc_torch_graph", "diagramc_torch_compile", "diagramc_numpy")
ANCHORS = ("torch_func_jacfwd", "jax_jacfwd_jit", "jax_jet_interp", "jax_hessian")
SHORT_NAMES = {
    "diagramc_torch": "ours torch",
    "diagramc_torch_graph": "ours torch CUDA graph",
    "diagramc_torch_compile": "ours torch.compile",
    "diagramc_numpy": "ours numpy",
    "torch_func_jacfwd": "torch.func jacfwd",
    "jax_jacfwd_jit": "JAX jacfwd jit",
    "jax_jet_interp": "JAX jet+interp",
    "jax_hessian": "jax.hessian",
}


@dataclasses.dataclass
class Settings:
    """How hard to time; the quick mode uses fewer repetitions and skips the costliest anchors."""

    quick: bool
    min_time: float  # seconds of repetitions aimed at per method
    max_reps: int
    min_reps: int
    budget: float  # seconds at most spent repeating one slow method
    eager_limit: float  # a torch.func run expected above this is estimated, not run in full
    eager_max_work: float  # torch.func is skipped above batch * (d+1)^n (its tangent columns)
    jax_jacfwd_max_order: int  # nested jacfwd compiles for minutes at high order
    jax_jacfwd_max_entries: float  # and is skipped above batch * d^n dense entries
    cold_compile_subprocess: bool
    rounds: int  # interleaved rounds: every fast method once per round, in turn
    round_max_s: float  # a method slower than this per call sits the rounds out
    burst_s: float = 0.01  # in its turn a method runs calls for about this long (its steady state)
    max_burst: int = 25
    pause_s: float = 0.05  # idle before each method's turn in the rounds: the last one's threads at rest

    @classmethod
    def make(cls, quick: bool) -> "Settings":
        if quick:
            return cls(True, 0.3, 7, 3, 5.0, 5.0, 2e5, 5, 3e5, False, 9, 0.5)
        return cls(False, 2.0, 50, 5, 30.0, 60.0, math.inf, 99, math.inf, True, 25, 3.0)


# ----------------------------------------------------------------------------- the problem


def make_problem(cell: Cell, seed: int = SEED):
    """Weights scaled like ``nn.Linear`` init (uniform in +-1/sqrt(fan_in)) and non-zero x."""
    rng = np.random.default_rng([seed, cell.d])
    sizes = (cell.d, *HIDDEN, 1)
    params = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / math.sqrt(n_in)
        params.append(rng.uniform(-bound, bound, (n_out, n_in)))
        params.append(rng.uniform(-bound, bound, (n_out,)))
    x = rng.uniform(0.1, 1.0, (cell.batch, cell.d)) * rng.choice([-1.0, 1.0], (cell.batch, cell.d))
    return params, x


def dense_columns(d: int, k: int) -> np.ndarray:
    """Flat positions in a dense (d,)*k tensor of the order-k multi-indices, canonical order."""
    if k == 0:
        return np.zeros(1, dtype=np.intp)
    combos = list(itertools.combinations_with_replacement(range(d), k))
    return np.ravel_multi_index(tuple(np.array(combos).T), (d,) * k)


def pack_dense(tensors, d: int) -> np.ndarray:
    """Dense derivative tensors [f (b,), Df (b,d), D2f (b,d,d), ...] -> (b, N) canonical order."""
    out = []
    for k, t in enumerate(tensors):
        t = np.asarray(t).reshape(len(t), -1)
        out.append(t[:, dense_columns(d, k)])
    return np.concatenate(out, axis=1)


def rel_errors(value: np.ndarray, reference: np.ndarray, d: int, order: int) -> dict[int, float]:
    """Relative L2 error of each order's block of a packed (b, N) array."""
    errors, start = {}, 0
    for k in range(order + 1):
        size = mi.count_of_order(d, k)
        ref = reference[:, start : start + size]
        diff = np.linalg.norm(value[:, start : start + size] - ref)
        errors[k] = float(diff / max(np.linalg.norm(ref), np.finfo(float).tiny))
        start += size
    return errors
