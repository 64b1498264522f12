"""The Born-series study: iterative neural-network perturbation theory with diagramc kernels.

This is the application of Kaspschak & Meissner (Phys. Rev. Research 3, 023223, 2021)
built on diagramc's generated Taylor kernels:

1. **Data.** Shallow step potentials ``U = -lambda * s`` on ``N = 64`` steps, ``R = 1``:
   ``s`` from a seeded mixture of shapes (attractive square wells, two-level steps and
   smooth Gaussian bumps, each mixed with independent noise on every step, or pure
   noise; the noise is uniform in [-1, 1]) and ``lambda`` log-uniform in [0.01, 1.5]
   (no bound states; the Born series converges). Targets are the exact scattering
   lengths (``diagramc.born.scattering_length``).
2. **Iteration 1.** An MLP ``N1`` fitted to ``(U, a0)`` with the loss normalised by the
   target's scale at each coupling. Its Taylor coefficients at ``U = 0`` of orders 1 and 2,
   from the generated kernels, are compared with ``born_derivatives``.
3. **Iteration 2.** The leading order is eliminated with the *learned* first order:
   the residual ``a0 - T1(U)`` (``T1`` = N1's Taylor polynomial of order 1 at 0, from the
   generated kernel). A second MLP ``N2`` is made exactly second order at 0 inside its
   training forward pass, ``Q(U) = N2(U) - N2(0) - grad N2(0) . U`` (generated order-1
   torch kernel, differentiable in the parameters), and a linear correction ``c + g . U``
   (iteration 1's leftover linear error) is fitted *exactly* by weighted least squares
   on the whole training set, alternating with the gradient steps on ``N2`` (variable
   projection). Loss normalised by ``lambda^2`` times the residual's scale.
4. **Combination.** The machine-learned second-order Born approximation
   ``T1(U) + c + g . U + Q(U)`` is compared with exact ``a0`` on held-out potentials, next
   to the analytic first- and second-order Born approximations.

``run_demo(out_dir, quick=False, seed=0)`` writes the report, plots and networks;
``summary(report)`` gives the headline lines for a terminal.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..born import born_series, born_derivatives, scattering_length
from ..errors import DiagramcError

__all__ = [
    "DemoConfig",
    "QUICK",
    "FULL",
    "SHAPES",
    "sample_shapes",
    "sample_potentials",
    "make_dataset",
    "weighted_linear_lstsq",
    "run_demo",
    "summary",
]


# ------------------------------------------------------------------ configuration

@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Everything that decides the study's numbers (recorded in report.json)."""

    N: int = 64
    R: float = 1.0
    n_train: int = 60_000
    n_val: int = 5_000
    n_test: int = 5_000
    lambda_min: float = 0.01
    lambda_max: float = 1.5
    noise_low: float = -1.0  # per-step noise is uniform in [noise_low, 1] (mean zero: probes every direction)
    hidden: tuple = (64, 64, 64, 64)
    activation: str = "tanh"
    epochs1: int = 60
    epochs2: int = 100
    batch_size: int = 256
    lr1: float = 2e-3
    lr2: float = 5e-3
    lr_final_factor: float = 0.01  # cosine decay of the learning rate to lr * this
    lstsq_every: int = 1  # epochs between exact least-squares refits of the linear correction
    exact_first_variant: bool = True  # also train iteration 2 on a0 - (exact first Born term)
    no_lstsq_variant: bool = True  # ablation: learned first order removed, no least-squares correction
    threads: int = 1  # small matrices: a second thread gains little and collapses on a shared CPU
    progress: bool = True


QUICK = DemoConfig(n_train=24_000, n_val=2_000, n_test=2_000, hidden=(64, 64, 64), epochs1=40, epochs2=80,
                   exact_first_variant=False, no_lstsq_variant=False)
FULL = DemoConfig()


# ------------------------------------------------------------------ data

SHAPES = ("noise", "well", "step", "bump")


def sample_shapes(n, N, rng, noise_low=0.0):
    """``n`` shapes ``s`` with values in ``[noise_low, 1]`` on ``N`` steps, and their kind names.

    Kinds, equally likely (``r`` in units of ``R``):

    - ``noise``: independent step values, uniform in ``[noise_low, 1]``;
    - ``well``: a square well of depth 1 from 0 to a radius uniform in [0.15, 1];
    - ``step``: two levels, each uniform in [0, 1], switching at a radius in [0.1, 0.9];
    - ``bump``: a sum of 1-3 Gaussians (centres in [0, 1], widths in [0.05, 0.4],
      weights in [0.3, 1]) scaled to maximum 1.

    Every structured shape is mixed with independent noise on each step,
    ``s = (1 - eta) base + eta noise`` with ``eta`` uniform in [0.3, 1] (``eta = 1`` for
    ``noise``), so the data probe every one of the N directions: a smooth
    low-dimensional family leaves the derivatives at 0 undetermined, and noise that is
    symmetric about 0 (``noise_low = -1``, the study's choice) probes the second-order
    couplings between steps far better than one-signed noise.
    """
    r = (np.arange(N) + 0.5) / N  # step midpoints in units of R
    kinds = rng.integers(0, len(SHAPES), size=n)
    noise = rng.uniform(noise_low, 1.0, size=(n, N))
    base = np.empty((n, N))
    # wells
    radius = rng.uniform(0.15, 1.0, size=n)
    well = (r[None, :] < radius[:, None]).astype(float)
    # two-level steps
    lo, hi = rng.uniform(0, 1, size=n), rng.uniform(0, 1, size=n)
    switch = rng.uniform(0.1, 0.9, size=n)
    step = np.where(r[None, :] < switch[:, None], lo[:, None], hi[:, None])
    # bumps
    bump = np.zeros((n, N))
    count = rng.integers(1, 4, size=n)
    for m in range(3):
        c = rng.uniform(0, 1, size=n)
        w = rng.uniform(0.05, 0.4, size=n)
        a = rng.uniform(0.3, 1.0, size=n) * (m < count)
        bump += a[:, None] * np.exp(-0.5 * ((r[None, :] - c[:, None]) / w[:, None]) ** 2)
    bump /= bump.max(axis=1, keepdims=True)
    base[:] = noise
    for k, arr in ((1, well), (2, step), (3, bump)):
        base[kinds == k] = arr[kinds == k]
    eta = np.where(kinds == 0, 1.0, rng.uniform(0.3, 1.0, size=n))
    s = (1 - eta[:, None]) * base + eta[:, None] * noise
    return s, np.array(SHAPES)[kinds]


def sample_potentials(n, N, rng, lambda_min=0.01, lambda_max=1.5, noise_low=0.0):
    """``U = -lambda * s``: shapes from :func:`sample_shapes`, ``lambda`` log-uniform.

    Returns ``(U, lam, kinds)``. Since ``|U| <= lambda``: for ``lambda_max < (pi/2)^2 / R^2``
    no potential binds, and the Born series converges (the Born kernel ``min(r, r') U(r')``
    is dominated by that of the constant well ``|U| = lambda_max``, whose spectral radius
    is ``lambda_max R^2 / (pi/2)^2``: 0.61 for 1.5).
    """
    if not 0 < lambda_min <= lambda_max:
        raise DiagramcError(f"need 0 < lambda_min <= lambda_max; got {lambda_min}, {lambda_max}")
    s, kinds = sample_shapes(n, N, rng, noise_low)
    lam = np.exp(rng.uniform(math.log(lambda_min), math.log(lambda_max), size=n))
    return -lam[:, None] * s, lam, kinds


def make_dataset(cfg: DemoConfig, seed: int = 0):
    """Train / validation / test splits: dicts with U, lam, kind, a0, a1, a2, a3 (numpy)."""
    rng = np.random.default_rng(seed)
    splits = {}
    for name, n in (("train", cfg.n_train), ("val", cfg.n_val), ("test", cfg.n_test)):
        U, lam, kinds = sample_potentials(n, cfg.N, rng, cfg.lambda_min, cfg.lambda_max, cfg.noise_low)
        splits[name] = {
            "U": U,
            "lam": lam,
            "kind": kinds,
            "a0": scattering_length(U, cfg.R),
        }
        terms = born_series(torch.from_numpy(U), cfg.R, 3)
        for k in (1, 2, 3):
            splits[name][f"a{k}"] = terms[k].numpy()
    return splits


# ------------------------------------------------------------------ exact least squares

def weighted_linear_lstsq(X, y, w, intercept=True):
    """Exact minimiser ``(c, g)`` of ``sum_i w_i (y_i - c - g . X_i)^2`` (float64 numpy).

    Solved by a QR factorisation of the row-scaled system (no normal equations), so it
    is accurate even when the weights span many decades. Needs at least as many
    equations as unknowns and a design of full column rank.
    Returns ``(c, g)``; ``c = 0.0`` when ``intercept`` is false.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if X.ndim != 2 or y.shape != (X.shape[0],) or w.shape != (X.shape[0],):
        raise DiagramcError(f"weighted_linear_lstsq: X (n, d), y (n,), w (n,) expected; got "
                            f"{X.shape}, {y.shape}, {w.shape}")
    if np.any(w < 0):
        raise DiagramcError("weighted_linear_lstsq: weights must be non-negative")
    # torch's LAPACK QR (one thread pool for the whole study), float64
    sw = torch.from_numpy(np.sqrt(w))
    Xt = torch.from_numpy(X)
    A = torch.cat([torch.ones(X.shape[0], 1, dtype=torch.float64), Xt], dim=1) if intercept else Xt
    A = A * sw[:, None]
    b = torch.from_numpy(y) * sw
    if A.shape[0] < A.shape[1]:
        raise DiagramcError(f"weighted_linear_lstsq: {A.shape[0]} equations for {A.shape[1]} unknowns")
    Qm, Rm = torch.linalg.qr(A, mode="reduced")
    sol = torch.linalg.solve_triangular(Rm, (Qm.T @ b)[:, None], upper=True)[:, 0].numpy()
    if intercept:
        return float(sol[0]), sol[1:]
    return 0.0, sol


# ------------------------------------------------------------------ networks

class ScaledMLP(torch.nn.Module):
    """``f(U) = s_out * net(U / s_in)``: an MLP trained in normalised units.

    The scales are constants, so ``f`` is itself an MLP: :meth:`physical_params` folds them
    into the first and last layers (differentiably), which is what the generated kernels
    and the saved ``nn.Sequential`` see.
    """

    def __init__(self, layer_sizes, activation, s_in, s_out, generator=None):
        super().__init__()
        acts = {"tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "softplus": torch.nn.Softplus,
                "silu": torch.nn.SiLU}
        if activation not in acts:
            raise DiagramcError(f"demo activation must be one of {sorted(acts)}; got {activation!r}")
        layers = []
        for i, (a, b) in enumerate(zip(layer_sizes[:-1], layer_sizes[1:])):
            layers.append(torch.nn.Linear(a, b, dtype=torch.float64))
            if i < len(layer_sizes) - 2:
                layers.append(acts[activation]())
        self.net = torch.nn.Sequential(*layers)
        self.layer_sizes = tuple(layer_sizes)
        self.activation = activation
        self.s_in = float(s_in)
        self.s_out = float(s_out)

    def forward(self, U):
        return self.s_out * self.net(U / self.s_in)[..., 0]

    def physical_params(self):
        """[W1, b1, ..., WL, bL] of the MLP ``f`` itself (scales folded in)."""
        linears = [m for m in self.net if isinstance(m, torch.nn.Linear)]
        params = []
        for i, lin in enumerate(linears):
            W, b = lin.weight, lin.bias
            if i == 0:
                W = W / self.s_in
            if i == len(linears) - 1:
                W, b = W * self.s_out, b * self.s_out
            params += [W, b]
        return params

    def export(self):
        """An ``nn.Sequential`` computing ``f`` (scales folded), detached."""
        seq = torch.nn.Sequential(*[type(m)() if not isinstance(m, torch.nn.Linear)
                                    else torch.nn.Linear(m.in_features, m.out_features, dtype=torch.float64)
                                    for m in self.net])
        linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            P = self.physical_params()
            for lin, W, b in zip(linears, P[0::2], P[1::2]):
                lin.weight.copy_(W)
                lin.bias.copy_(b)
        return seq


def _kernel(layer_sizes, activation, order, out_dir=None):
    """diagramc's generated torch module for the architecture, all multi-indices up to ``order``."""
    import diagramc

    arch = diagramc.Architecture(layer_sizes=tuple(layer_sizes), activation=activation)
    return diagramc.compile(arch, order, backend="torch", out_dir=out_dir)


def _epoch(opt, cfg, lr, step, steps, batches, loss_of):
    """One pass over the training set: cosine learning rate, Adam steps; (summed loss, step)."""
    total = 0.0
    for idx in batches:
        _cosine_lr(opt, lr, step, steps, cfg.lr_final_factor)
        loss = loss_of(idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        step += 1
    return total, step


def _cosine_lr(opt, lr, step, total, final_factor):
    f = final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    for g in opt.param_groups:
        g["lr"] = lr * f


def _progress(iterable, enabled, desc, total=None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


# ------------------------------------------------------------------ training

def _batches(n, batch_size, gen):
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, batch_size):
        yield perm[i:i + batch_size]


def train_iteration1(cfg: DemoConfig, train, val, gen):
    """Fit ``N1`` to ``(U, a0)``; loss ``mean(((N1(U) - a0) / (lambda c))^2)``.

    Returns ``(model, history)``; ``history`` lists per epoch the training loss and the
    validation error (root mean square of the normalised residual).
    """
    U = torch.from_numpy(train["U"])
    y = torch.from_numpy(train["a0"])
    lam = torch.from_numpy(train["lam"])
    c = float(torch.sqrt(torch.mean((y / lam) ** 2)))
    w = 1.0 / (lam * c) ** 2
    sizes = (cfg.N, *cfg.hidden, 1)
    model = ScaledMLP(sizes, cfg.activation, s_in=float(U.std()), s_out=float(y.std()))
    _init(model, gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr1)
    Uv, yv, lv = (torch.from_numpy(val[k]) for k in ("U", "a0", "lam"))
    steps = cfg.epochs1 * math.ceil(len(U) / cfg.batch_size)
    history, step = [], 0
    bar = _progress(range(cfg.epochs1), cfg.progress, "iteration 1")
    for epoch in bar:
        total, step = _epoch(
            opt, cfg, cfg.lr1, step, steps, _batches(len(U), cfg.batch_size, gen),
            lambda idx: torch.mean(w[idx] * (model(U[idx]) - y[idx]) ** 2),
        )
        with torch.no_grad():
            verr = float(torch.sqrt(torch.mean(((model(Uv) - yv) / (lv * c)) ** 2)))
        history.append({"epoch": epoch + 1, "train_loss": total / len(U), "val_error": verr})
        if cfg.progress:
            bar.set_postfix(loss=f"{total / len(U):.2e}", val=f"{verr:.2e}")
    return model, history


def _init(model, gen):
    """Seeded default-style initialisation (independent of the global RNG)."""
    with torch.no_grad():
        for m in model.net:
            if isinstance(m, torch.nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                m.weight.copy_((torch.rand(m.weight.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)
                m.bias.copy_((torch.rand(m.bias.shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)


def structurally_second_order(model, kernel1, U):
    """``Q(U) = N(U) - N(0) - grad N(0) . U``, with ``N(0)``, ``grad N(0)`` from the generated
    order-1 torch kernel (differentiable in the network's parameters)."""
    t = kernel1.derivatives(model.physical_params(), torch.zeros(1, U.shape[-1], dtype=U.dtype))[0, 0]
    return model(U) - t[0] - U @ t[1:]


def train_iteration2(cfg: DemoConfig, U_np, r_np, lam_np, val, kernel1, gen, linear=True, desc="iteration 2"):
    """Fit ``c + g . U + Q(U)`` to the residual ``r`` (leading order eliminated).

    ``Q`` is exactly second order at 0 in every forward pass. With ``linear``, the
    correction ``(c, g)`` is fitted by exact weighted least squares on the whole training
    set at the start and every ``cfg.lstsq_every`` epochs (and once more at the end),
    alternating with Adam steps on the network (variable projection); without it the
    model is ``Q`` alone. Loss ``mean(((r - model) / (lambda^2 c2))^2)``.
    ``val`` is ``(U, r, lam)`` numpy for the validation error.

    Returns ``(model, (c, g), history)``.
    """
    U = torch.from_numpy(U_np)
    r = torch.from_numpy(r_np)
    lam = torch.from_numpy(lam_np)
    w_shape = 1.0 / lam**4
    if linear:
        c0, g0 = weighted_linear_lstsq(U_np, r_np, w_shape.numpy())
        rest = r - c0 - U @ torch.from_numpy(g0)
    else:
        c0, g0 = 0.0, np.zeros(U.shape[1])
        rest = r
    scale = float(torch.sqrt(torch.mean(rest**2 * w_shape)))
    w = w_shape / scale**2
    sizes = (cfg.N, *cfg.hidden, 1)
    model = ScaledMLP(sizes, cfg.activation, s_in=float(U.std()), s_out=float(rest.std()))
    _init(model, gen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr2)
    lin_c, lin_g = torch.tensor(c0), torch.from_numpy(np.asarray(g0, dtype=np.float64))
    Uv, rv, lv = (torch.from_numpy(a) for a in val)
    steps = cfg.epochs2 * math.ceil(len(U) / cfg.batch_size)
    history, step = [], 0
    bar = _progress(range(cfg.epochs2), cfg.progress, desc)

    def refit():
        with torch.no_grad():
            q = structurally_second_order(model, kernel1, U)
        c, g = weighted_linear_lstsq(U_np, (r - q).numpy(), w.numpy())
        return torch.tensor(c), torch.from_numpy(g)

    for epoch in bar:
        if linear and epoch % cfg.lstsq_every == 0:
            lin_c, lin_g = refit()
        total, step = _epoch(
            opt, cfg, cfg.lr2, step, steps, _batches(len(U), cfg.batch_size, gen),
            lambda idx: torch.mean(
                w[idx] * (lin_c + U[idx] @ lin_g + structurally_second_order(model, kernel1, U[idx]) - r[idx]) ** 2
            ),
        )
        with torch.no_grad():
            pv = lin_c + Uv @ lin_g + structurally_second_order(model, kernel1, Uv)
            verr = float(torch.sqrt(torch.mean((pv - rv) ** 2 / (lv**4 * scale**2))))
        history.append({"epoch": epoch + 1, "train_loss": total / len(U), "val_error": verr})
        if cfg.progress:
            bar.set_postfix(loss=f"{total / len(U):.2e}", val=f"{verr:.2e}")
    if linear:
        lin_c, lin_g = refit()
    return model, (float(lin_c), lin_g.numpy()), history


# ------------------------------------------------------------------ evaluation

def _rel(a, b):
    """Relative L2 error |a - b| / |b|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def derivatives_at_zero(model, kernel):
    """D^alpha f(0) for all multi-indices of ``kernel`` (numpy), from the generated torch kernel."""
    with torch.no_grad():
        x = torch.zeros(1, model.layer_sizes[0], dtype=torch.float64)
        return kernel.derivatives(model.physical_params(), x)[0, 0].numpy().copy()


def second_order_term(D2, U):
    """``sum_{|alpha| = 2} D^alpha U^alpha / alpha!`` for packed second derivatives ``D2``."""
    N = U.shape[-1]
    i, j = np.triu_indices(N)  # the canonical order of order 2
    fact = np.where(i == j, 2.0, 1.0)
    return (U[..., i] * U[..., j]) @ (D2 / fact)


def hessian_matrix(D2, N):
    """The symmetric N x N matrix of packed second derivatives."""
    i, j = np.triu_indices(N)
    H = np.zeros((N, N))
    H[i, j] = D2
    H[j, i] = D2
    return H


def _predict(fn, U_np, batch=8192):
    """fn over the rows of U_np in batches, without gradients."""
    with torch.no_grad():
        U = torch.from_numpy(U_np)
        return torch.cat([fn(U[k:k + batch]) for k in range(0, len(U), batch)]).numpy()


def _q_predict(model, kernel1, U_np):
    return _predict(lambda U: structurally_second_order(model, kernel1, U), U_np)


def _coupling_bins(lam, lo, hi, n=6):
    edges = np.geomspace(lo, hi, n + 1)
    edges[-1] = hi * (1 + 1e-12)
    return edges, [(lam >= a) & (lam < b) for a, b in zip(edges[:-1], edges[1:])]


# ------------------------------------------------------------------ the study

GOALS = {
    "first_order_rel_error_iter1": ("<=", 0.05),
    "second_order_rel_error_iter2": ("<=", 0.15),
    "second_order_term_rel_error_test_iter2": ("<=", 0.05),
}


def run_demo(out_dir, quick=False, seed=0, config: DemoConfig | None = None, progress=None):
    """Run the study, write report.json, report.md, plots and networks to ``out_dir``; return the report.

    ``quick`` selects :data:`QUICK` (a few minutes on 2 CPU cores), else :data:`FULL`;
    ``config`` overrides both. ``seed`` fixes data, initialisation and batching.
    """
    cfg = config if config is not None else (QUICK if quick else FULL)
    if progress is not None:
        cfg = dataclasses.replace(cfg, progress=bool(progress))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.threads)))
    try:
        report = _study(cfg, out, int(seed), bool(quick) and config is None)
    finally:
        torch.set_num_threads(threads)
    return report


def _study(cfg: DemoConfig, out: Path, seed: int, quick: bool):
    t_start = time.time()
    cpu_start = time.process_time()
    timing = {}
    N, R = cfg.N, cfg.R
    sizes = (N, *cfg.hidden, 1)

    # ---- data
    t0 = time.time()
    data = make_dataset(cfg, seed)
    train, val, test = data["train"], data["val"], data["test"]
    timing["data_s"] = time.time() - t0

    # ---- generated kernels (kept next to the report, readable)
    kdir = out / "kernels"
    kernel1 = _kernel(sizes, cfg.activation, 1, kdir)
    kernel2 = _kernel(sizes, cfg.activation, 2, kdir)
    B1 = born_derivatives(N, 1, R)
    B2 = born_derivatives(N, 2, R)
    n1 = 1 + N  # packed columns: order 0 at 0, order 1 at 1..N, order 2 after

    gen = torch.Generator().manual_seed(seed)

    # ---- iteration 1: the leading order
    t0 = time.time()
    model1, hist1 = train_iteration1(cfg, train, val, gen)
    timing["iteration1_s"] = time.time() - t0
    D1net = derivatives_at_zero(model1, kernel2)
    c1, g1, H1 = D1net[0], D1net[1:n1], D1net[n1:]

    def taylor1(U):  # N1's Taylor polynomial of order 1 at 0
        return c1 + U @ g1

    # ---- iteration 2: leading order eliminated with the learned first order
    resid = {name: split["a0"] - taylor1(split["U"]) for name, split in data.items()}
    t0 = time.time()
    model2, (c2, g2), hist2 = train_iteration2(
        cfg, train["U"], resid["train"], train["lam"], (val["U"], resid["val"], val["lam"]), kernel1, gen)
    timing["iteration2_s"] = time.time() - t0
    D2net = derivatives_at_zero(model2, kernel2)
    H2 = D2net[n1:]

    # ---- coefficients at U = 0 against the Born derivatives
    rep = {
        "first_order_rel_error_iter1": _rel(g1, B1),
        "second_order_rel_error_iter1": _rel(H1, B2),
        "second_order_rel_error_iter2": _rel(H2, B2),
        "first_order_rel_error_combined": _rel(g1 + g2, B1),
    }

    # ---- test potentials
    Ut, a0t = test["U"], test["a0"]
    q_test = _q_predict(model2, kernel1, Ut)
    first_ml = taylor1(Ut) + c2 + Ut @ g2
    proxy = first_ml + q_test
    taylor2_ml = first_ml + second_order_term(H2, Ut)
    born1 = test["a1"]
    born2 = test["a1"] + test["a2"]
    net1 = _predict(model1, Ut)
    rep.update({
        "second_order_term_rel_error_test_iter1": _rel(second_order_term(H1, Ut), test["a2"]),
        "second_order_term_rel_error_test_iter2": _rel(second_order_term(H2, Ut), test["a2"]),
        "proxy_rel_error_test": _rel(proxy, a0t),
        "born2_rel_error_test": _rel(born2, a0t),
        "born1_rel_error_test": _rel(born1, a0t),
        "ml_first_order_rel_error_test": _rel(first_ml, a0t),
        "ml_taylor2_rel_error_test": _rel(taylor2_ml, a0t),
        "iteration1_network_rel_error_test": _rel(net1, a0t),
    })
    preds = {"iteration 1 network": net1, "first Born": born1, "ML first order": first_ml,
             "second Born": born2, "ML second order (proxy)": proxy}
    edges, masks = _coupling_bins(test["lam"], cfg.lambda_min, cfg.lambda_max)
    rep["errors_by_coupling"] = [
        {"lambda_low": float(a), "lambda_high": float(b), "count": int(m.sum()),
         **{name: (_rel(p[m], a0t[m]) if m.any() else None) for name, p in preds.items()}}
        for a, b, m in zip(edges[:-1], edges[1:], masks)
    ]

    # ---- variants (full study): exact first Born term removed; no least-squares correction
    variants = {}
    t_variants = time.time()

    def variant(residuals, first_order_on_test, desc, description):
        """Iteration 2 trained on `residuals` as Q(U) alone: its report entry and its second order."""
        t0 = time.time()
        mv, _, hv = train_iteration2(cfg, train["U"], residuals["train"], train["lam"],
                                     (val["U"], residuals["val"], val["lam"]), kernel1, gen,
                                     linear=False, desc=desc)
        Hv = derivatives_at_zero(mv, kernel2)[n1:]
        pv = first_order_on_test() + _q_predict(mv, kernel1, Ut)
        return {
            "description": description,
            "second_order_rel_error": _rel(Hv, B2),
            "second_order_term_rel_error_test": _rel(second_order_term(Hv, Ut), test["a2"]),
            "proxy_rel_error_test": _rel(pv, a0t),
            "val_error": hv[-1]["val_error"],
            "seconds": time.time() - t0,
        }, Hv

    H_exact = None
    if cfg.exact_first_variant:
        res_exact = {name: split["a0"] - split["a1"] for name, split in data.items()}
        variants["exact_first_born"], H_exact = variant(
            res_exact, lambda: test["a1"], "variant: exact first Born",
            "iteration 2 on a0 - a^(1) (exact first Born term), model Q(U) alone")
    if cfg.no_lstsq_variant:
        variants["learned_first_without_lstsq"], _ = variant(
            resid, lambda: taylor1(Ut), "variant: no least squares",
            "iteration 2 on a0 - T1 (learned first order), model Q(U) alone: "
            "iteration 1's leftover linear error is not removed")
    rep["variants"] = variants
    timing["variants_s"] = time.time() - t_variants

    # ---- data summary
    ratio = np.abs(train["a2"] / train["a1"])
    rep_data = {
        "family": "U = -lambda * s on N steps; s = (1 - eta) * base + eta * noise, noise_i uniform in "
                  f"[{cfg.noise_low}, 1]; base in {{noise, square well, two-level step, Gaussian bumps}} "
                  "(equally likely), eta = 1 for 'noise' else uniform in [0.3, 1]; lambda log-uniform in "
                  f"[{cfg.lambda_min}, {cfg.lambda_max}]",
        "N": N, "R": R, "seed": seed,
        "sizes": {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test},
        "shape_counts": {k: int(np.sum(train["kind"] == k)) for k in SHAPES},
        "abs_a2_over_a1": {
            "min": float(ratio.min()), "p01": float(np.percentile(ratio, 1)),
            "median": float(np.median(ratio)), "p99": float(np.percentile(ratio, 99)),
            "max": float(ratio.max()),
            "median_at_lambda_max_decile": float(np.median(ratio[train["lam"] > np.quantile(train["lam"], 0.9)])),
        },
        "abs_a3_over_a2_median": float(np.median(np.abs(train["a3"] / train["a2"]))),
        "a0_range": [float(train["a0"].min()), float(train["a0"].max())],
    }
    report = {
        "title": "Iterative neural-network perturbation theory for the Born series (diagramc demo)",
        "quick": quick,
        "seed": seed,
        **rep,
        "data": rep_data,
        "linear_correction": {"intercept": float(c2), "gradient": [float(v) for v in g2],
                              "size_relative_to_first_Born": float(np.linalg.norm(g2) / np.linalg.norm(B1))},
        "architecture": {"layer_sizes": list(sizes), "activation": cfg.activation, "N": N, "R": R},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "history": {"iteration1": hist1, "iteration2": hist2},
    }
    report["goals"] = {
        **{k: {"value": report[k], "target": f"{op} {v}", "met": bool(report[k] <= v)} for k, (op, v) in GOALS.items()},
        "iteration2_better_than_iteration1": {
            "value": [report["second_order_rel_error_iter2"], report["second_order_rel_error_iter1"]],
            "target": "second-order coefficient and test-term errors of iteration 2 well below iteration 1's",
            "met": bool(report["second_order_rel_error_iter2"] < 0.5 * report["second_order_rel_error_iter1"]
                        and report["second_order_term_rel_error_test_iter2"]
                        < 0.5 * report["second_order_term_rel_error_test_iter1"]),
        },
        "proxy_at_least_as_accurate_as_second_Born": {
            "value": [report["proxy_rel_error_test"], report["born2_rel_error_test"]],
            "target": "proxy_rel_error_test <= born2_rel_error_test",
            "met": bool(report["proxy_rel_error_test"] <= report["born2_rel_error_test"]),
        },
    }

    # ---- files
    _save_network(model1, out / "iteration1.pt")
    _save_network(model2, out / "iteration2.pt")
    (out / "architecture.json").write_text(json.dumps(report["architecture"], indent=2) + "\n")
    timing["evaluation_s"] = time.time() - t_start - sum(timing.values())
    t0 = time.time()
    plots = _plots(out, cfg, B1, B2, g1, g1 + g2, H1, H2, H_exact, test, preds, report)
    timing["plots_s"] = time.time() - t0
    timing["total_s"] = time.time() - t_start
    timing["cpu_s"] = time.process_time() - cpu_start
    timing["threads"] = torch.get_num_threads()
    report["timing"] = timing
    report["files"] = sorted(["report.json", "report.md", "iteration1.pt", "iteration2.pt", "architecture.json",
                              *plots, *(f"kernels/{p.name}" for p in kdir.glob("*.py"))])
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report, plots))
    return report


def _save_network(model, path):
    torch.save(model.export().state_dict(), path)


# ------------------------------------------------------------------ plots and report

def _plots(out, cfg, B1, B2, g1, g_comb, H1, H2, H_exact, test, preds, report):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    N, R = cfg.N, cfg.R
    r = (np.arange(N) + 0.5) * R / N
    files = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)

    # first order: curves over the grid
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(r, B1, "k-", lw=2, label="Born: (r_i^3 - r_{i-1}^3)/3")
    ax[0].plot(r, g1, "o", ms=3, label=f"iteration 1 (rel. error {report['first_order_rel_error_iter1']:.2%})")
    ax[0].plot(r, g_comb, "x", ms=4,
               label=f"iteration 1 + exact LS correction ({_fmt_err(report['first_order_rel_error_combined'])})")
    ax[0].set(xlabel="r (step midpoint)", ylabel="d a0 / d U_i at U = 0", title="First-order coefficients")
    ax[0].legend(fontsize=8)
    ax[1].plot(r, (g1 - B1) / np.abs(B1).max(), "o-", ms=3, label="iteration 1")
    ax[1].plot(r, (g_comb - B1) / np.abs(B1).max(), "x-", ms=3, label="iteration 1 + LS correction")
    ax[1].axhline(0, color="k", lw=0.5)
    ax[1].set(xlabel="r", ylabel="(learned - Born) / max |Born|", title="First-order error")
    ax[1].legend(fontsize=8)
    save(fig, "first_order_coefficients.png")

    # second order: heat maps
    HB, HI1, HI2 = hessian_matrix(B2, N), hessian_matrix(H1, N), hessian_matrix(H2, N)
    mats = [("second Born term: -2 K_ij", HB),
            (f"iteration 1 ({report['second_order_rel_error_iter1']:.0%} off)", HI1),
            (f"iteration 2 ({report['second_order_rel_error_iter2']:.1%} off)", HI2)]
    if H_exact is not None:
        mats.append((f"variant: exact first Born removed "
                     f"({report['variants']['exact_first_born']['second_order_rel_error']:.1%} off)",
                     hessian_matrix(H_exact, N)))
    mats.append(("iteration 2 - Born", hessian_matrix(H2 - B2, N)))
    vmax = np.abs(B2).max()
    fig, ax = plt.subplots(1, len(mats), figsize=(3.3 * len(mats) + 1.0, 3.6), layout="constrained")
    for a, (title, M) in zip(ax, mats):
        im = a.imshow(M, cmap="RdBu_r", vmin=-vmax, vmax=vmax, origin="upper",
                      extent=(0, R, R, 0))
        a.set_title(title, fontsize=9)
        a.set_xlabel("r_j")
        a.set_ylabel("r_i")
    fig.colorbar(im, ax=ax, shrink=0.9, label="d²a0/dU_i dU_j at U = 0 (clipped)")
    fig.savefig(out / "second_order_heatmaps.png", dpi=110)
    plt.close(fig)
    files.append("second_order_heatmaps.png")

    # second order: curves over the grid (rows of the matrix and its diagonal)
    rows = [N // 4, N // 2, 3 * N // 4]
    fig, ax = plt.subplots(1, len(rows) + 1, figsize=(15, 3.8), sharey=False)
    for a, i in zip(ax, rows):
        a.plot(r, HB[i], "k-", lw=2, label="Born", zorder=3)
        a.plot(r, HI2[i], "o", ms=4, mfc="none", label="iteration 2")
        a.plot(r, HI1[i], ".", ms=3, alpha=0.6, label="iteration 1")
        a.set(title=f"row i = {i + 1} (r_i = {r[i]:.2f})", xlabel="r_j")
    a = ax[-1]
    a.plot(r, np.diag(HB), "k-", lw=2, label="Born", zorder=3)
    a.plot(r, np.diag(HI2), "o", ms=4, mfc="none", label="iteration 2")
    a.plot(r, np.diag(HI1), ".", ms=3, alpha=0.6, label="iteration 1")
    a.set(title="diagonal d^2 a0 / dU_i^2", xlabel="r_i")
    span = 2.5 * np.abs(B2).max()
    for a in ax:
        a.set_ylim(-span, 0.5 * span)
        a.axhline(0, color="k", lw=0.4)
    ax[0].set_ylabel("second derivative at U = 0 (clipped)")
    ax[0].legend(fontsize=8)
    save(fig, "second_order_coefficients.png")

    # predicted vs exact a0 on the test set
    a0 = test["a0"]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    lo, hi = a0.min(), a0.max()
    for name, key in (("first Born", "first Born"), ("second Born", "second Born"),
                      ("ML second order", "ML second order (proxy)")):
        ax[0].plot(a0, preds[key], ".", ms=2, alpha=0.5, label=name)
        ax[1].plot(a0, preds[key] - a0, ".", ms=2, alpha=0.5, label=name)
    ax[0].plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax[0].set(xlabel="exact a0", ylabel="predicted a0", title="Test potentials")
    ax[1].axhline(0, color="k", lw=0.8)
    ax[1].set(xlabel="exact a0", ylabel="predicted - exact", title="Errors on test potentials")
    for a in ax:
        a.legend(fontsize=8, markerscale=4)
    save(fig, "predicted_vs_exact.png")

    # errors by iteration
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.6))
    bars = [
        ("1st order coeff.\niter 1", report["first_order_rel_error_iter1"]),
        ("1st order coeff.\niter 1 + LS", report["first_order_rel_error_combined"]),
        ("2nd order coeff.\niter 1", report["second_order_rel_error_iter1"]),
        ("2nd order coeff.\niter 2", report["second_order_rel_error_iter2"]),
        ("2nd term on test\niter 1", report["second_order_term_rel_error_test_iter1"]),
        ("2nd term on test\niter 2", report["second_order_term_rel_error_test_iter2"]),
        ("a0 test:\nfirst Born", report["born1_rel_error_test"]),
        ("a0 test:\nsecond Born", report["born2_rel_error_test"]),
        ("a0 test:\nML 2nd order", report["proxy_rel_error_test"]),
    ]
    colors = ["C0", "C0", "C1", "C1", "C2", "C2", "C7", "C7", "C3"]
    ypos = np.arange(len(bars))[::-1]
    ax[0].barh(ypos, [v for _, v in bars], color=colors)
    ax[0].set_yticks(ypos, [k.replace("\n", " ") for k, _ in bars], fontsize=8)
    ax[0].set_xscale("log")
    ax[0].set_xlabel("relative L2 error")
    ax[0].set_title("Errors by iteration")
    for y, (_, v) in zip(ypos, bars):
        ax[0].text(v, y, f" {_fmt_err(v)}", ha="left", va="center", fontsize=8)
    ax[0].set_xlim(right=max(v for _, v in bars) * 30)
    mids = [np.sqrt(b["lambda_low"] * b["lambda_high"]) for b in report["errors_by_coupling"]]
    for name in preds:
        ax[1].plot(mids, [b[name] for b in report["errors_by_coupling"]], "o-", label=name)
    ax[1].set(xscale="log", yscale="log", xlabel="coupling lambda", ylabel="relative L2 error of a0 in the bin",
              title="Test error by coupling")
    ax[1].legend(fontsize=8)
    save(fig, "errors_by_iteration.png")

    # training histories
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, hist in report["history"].items():
        ax.plot([h["epoch"] for h in hist], [h["val_error"] for h in hist], label=name)
    ax.set(yscale="log", xlabel="epoch", ylabel="validation error (RMS, relative to target scale)", title="Training")
    ax.legend()
    save(fig, "training.png")
    return files


def _fmt_err(v):
    """A relative error for people: 3.1%, 0.012%, 4.5e-06, 327%."""
    if v >= 10:
        return f"{v:.3g}"
    if v >= 1:
        return f"{v:.0%}"
    if v >= 0.1:
        return f"{v:.1%}"
    if v >= 1e-4:
        return f"{v:.2%}"
    return f"{v:.1e}"


def _markdown(rep, plots):
    d = rep["data"]
    ra = d["abs_a2_over_a1"]
    lines = [
        f"# {rep['title']}",
        "",
        f"{'Quick' if rep['quick'] else 'Full'} study, seed {rep['seed']}, {rep['timing']['total_s']:.0f} s "
        f"({rep['timing']['cpu_s']:.0f} s CPU, {rep['timing']['threads']} thread(s)). "
        f"Network {'-'.join(map(str, rep['architecture']['layer_sizes']))} ({rep['architecture']['activation']}), "
        f"float64. Coefficients at U = 0 come from diagramc's generated torch kernels (`kernels/`).",
        "",
        "## Data",
        "",
        f"- {d['family']}.",
        f"- N = {d['N']}, R = {d['R']}; train / validation / test = {d['sizes']['train']} / {d['sizes']['val']} / "
        f"{d['sizes']['test']}; shapes in training: {d['shape_counts']}.",
        f"- |a^(2)/a^(1)| over the training set: min {ra['min']:.2g}, 1% {ra['p01']:.2g}, median {ra['median']:.2g}, "
        f"99% {ra['p99']:.2g}, max {ra['max']:.2g} (median {ra['median_at_lambda_max_decile']:.2g} in the "
        f"strongest-coupling decile; the largest ratios belong to potentials whose first Born term nearly "
        f"cancels); median |a^(3)/a^(2)| {d['abs_a3_over_a2_median']:.2g}.",
        "- Why symmetric noise: every step varies independently and with both signs, so the data probe all "
        "C(N+1, 2) second-order couplings; with one-signed noise (`noise_low = 0`, all potentials attractive) "
        "the common mode dominates and the second order at 0 is far less determined by the same amount of data. "
        "Every |U| <= lambda_max = 1.5 < (pi/2)^2: no bound states, the Born series converges.",
        "",
        "## Method",
        "",
        "1. Iteration 1: MLP N1 on (U, a0), loss normalised by the coupling (lambda).",
        "2. Iteration 2: residual a0 - T1(U), T1 = N1(0) + grad N1(0).U from the generated order-1 kernel "
        "(the learned first order, not the formula). Model c + g.U + Q(U), Q = N2(U) - N2(0) - grad N2(0).U "
        "computed in every training forward pass with the generated order-1 torch kernel; (c, g) fitted by exact "
        "weighted least squares on the whole training set each epoch (variable projection), loss normalised by "
        "lambda^2 times the residual's scale.",
        "3. ML second-order Born approximation: T1(U) + c + g.U + Q(U).",
        "",
        "## Results",
        "",
        "| quantity | value | goal |",
        "| --- | --- | --- |",
        f"| first-order coefficients, iteration 1 | {_fmt_err(rep['first_order_rel_error_iter1'])} | <= 5% |",
        f"| first-order coefficients, iteration 1 + LS correction | {_fmt_err(rep['first_order_rel_error_combined'])} | |",
        f"| second-order coefficients, iteration 1 | {_fmt_err(rep['second_order_rel_error_iter1'])} | |",
        f"| second-order coefficients, iteration 2 | {_fmt_err(rep['second_order_rel_error_iter2'])} | <= 15% |",
        f"| second-order term on test potentials, iteration 1 | "
        f"{_fmt_err(rep['second_order_term_rel_error_test_iter1'])} | |",
        f"| second-order term on test potentials, iteration 2 | "
        f"{_fmt_err(rep['second_order_term_rel_error_test_iter2'])} | <= 5% |",
        "",
        "Relative L2 errors; coefficients over the packed vector of distinct multi-indices of that order, against "
        "`born_derivatives`.",
        "",
        "| a0 on test potentials | relative L2 error |",
        "| --- | --- |",
        f"| iteration 1 network N1 | {_fmt_err(rep['iteration1_network_rel_error_test'])} |",
        f"| analytic first-order Born | {_fmt_err(rep['born1_rel_error_test'])} |",
        f"| ML first order (T1 + c + g.U) | {_fmt_err(rep['ml_first_order_rel_error_test'])} |",
        f"| analytic second-order Born | {_fmt_err(rep['born2_rel_error_test'])} |",
        f"| **ML second-order approximation** (T1 + c + g.U + Q) | **{_fmt_err(rep['proxy_rel_error_test'])}** |",
        f"| ML second-order Taylor polynomial | {_fmt_err(rep['ml_taylor2_rel_error_test'])} |",
        "",
        "By coupling (relative L2 error of a0 within each bin):",
        "",
        "| lambda | n | " + " | ".join(k for k in rep["errors_by_coupling"][0] if k not in
                                          ("lambda_low", "lambda_high", "count")) + " |",
        "| --- | --- |" + " --- |" * (len(rep["errors_by_coupling"][0]) - 3),
    ]
    for b in rep["errors_by_coupling"]:
        vals = [v for k, v in b.items() if k not in ("lambda_low", "lambda_high", "count")]
        lines.append(f"| {b['lambda_low']:.3g}-{b['lambda_high']:.3g} | {b['count']} | "
                     + " | ".join("-" if v is None else _fmt_err(v) for v in vals) + " |")
    if rep["variants"]:
        lines += ["", "## Variants", "", "| variant | 2nd-order coeff. | 2nd term on test | proxy on test |",
                  "| --- | --- | --- | --- |"]
        for name, v in rep["variants"].items():
            lines.append(f"| {v['description']} | {_fmt_err(v['second_order_rel_error'])} | "
                         f"{_fmt_err(v['second_order_term_rel_error_test'])} | {_fmt_err(v['proxy_rel_error_test'])} |")
    lines += ["", "## Goals", ""]
    for name, g in rep["goals"].items():
        lines.append(f"- {'met' if g['met'] else 'NOT met'}: {name} ({g['target']})")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    lines += ["", "## Files", "", "`iteration1.pt`, `iteration2.pt`: state dicts of `nn.Sequential` (physical units: "
              "input U, output in units of R); `architecture.json`; the least-squares correction (c, g) is in "
              "`report.json` under `linear_correction`.", ""]
    return "\n".join(lines)


def summary(report) -> str:
    """A few lines for the command line: the headline numbers and where the report is."""
    g = report["goals"]
    lines = [
        f"first-order coefficients, iteration 1:  {_fmt_err(report['first_order_rel_error_iter1'])} off Born",
        f"second-order coefficients, iteration 1: {_fmt_err(report['second_order_rel_error_iter1'])} off Born",
        f"second-order coefficients, iteration 2: {_fmt_err(report['second_order_rel_error_iter2'])} off Born "
        f"(second-order term on test potentials {_fmt_err(report['second_order_term_rel_error_test_iter2'])})",
        f"a0 on test potentials: ML second order {_fmt_err(report['proxy_rel_error_test'])}, "
        f"analytic second-order Born {_fmt_err(report['born2_rel_error_test'])}, "
        f"first-order Born {_fmt_err(report['born1_rel_error_test'])}",
        f"goals met: {sum(v['met'] for v in g.values())}/{len(g)}"
        + "".join(f"; NOT met: {k}" for k, v in g.items() if not v["met"]),
    ]
    return "\n".join(lines)
