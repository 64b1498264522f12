"""Kelly et al.'s toy (NeurIPS 2020, Figure 1): a neural ODE learns z(1) = z(0) + z(0)^3, without and
with the Taylor regularizer R_K = int_0^1 mean((d^K z/dt^K)^2) dt, K = 2 and 3.

Training integrates with a fixed-step RK4 (the same work for every run, R_K riding along as an
extra state through diagramc.TaylorRegularizedODE); every network is then judged by dopri5 at
fixed tolerances: its number of function evaluations (NFE) and its mean squared error.
``diagramc ode-demo [--quick] [--out DIR]`` writes report.json, report.md, two plots and the
trained networks (state dicts), every file atomically.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..compiler.cache import write_atomic
from .ode import TaylorRegularizedODE


@dataclass(frozen=True)
class DemoConfig:
    hidden: int = 32  # two tanh layers of this width; inputs (z, t)
    radius: float = 2.0  # z(0) on a grid over [-radius, radius]
    points: int = 64
    iterations: int = 1200
    lr: float = 1e-2
    lr_final: float = 1e-3  # reached by a cosine over the last iterations: the fit settles instead of oscillating
    decay_from: float = 0.8  # the fraction of the iterations after which the rate decays
    train_step: float = 0.2  # RK4 step while training
    rtol: float = 1e-8  # dopri5, judging every network
    atol: float = 1e-8
    eval_every: int = 50
    lambdas: tuple = ((2, 0.1), (3, 0.03))  # (K, lambda) of the regularized runs
    seed: int = 0
    threads: int = 1  # torch's intra-op threads while it runs: a batch of 64 through width 32 gains nothing from more


QUICK = DemoConfig(iterations=300, train_step=0.25, eval_every=50)


def make_model(config: DemoConfig) -> torch.nn.Sequential:
    h = config.hidden
    return torch.nn.Sequential(
        torch.nn.Linear(2, h), torch.nn.Tanh(), torch.nn.Linear(h, h), torch.nn.Tanh(), torch.nn.Linear(h, 1)
    ).double()


def data(config: DemoConfig):
    z0 = torch.linspace(-config.radius, config.radius, config.points, dtype=torch.float64)[:, None]
    return z0, z0 + z0**3


class _Counted(torch.nn.Module):
    """dz/dt = model(z, t), counting its evaluations."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, t, z):
        self.calls += 1
        return self.model(torch.cat([z, t.expand(z.shape[0], 1)], 1))


def evaluate(model, config: DemoConfig) -> tuple[int, float]:
    """(NFE, mean squared error of z(1)) under dopri5 at the configured tolerances."""
    from torchdiffeq import odeint

    z0, target = data(config)
    f = _Counted(model)
    with torch.no_grad():
        z1 = odeint(f, z0, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=config.rtol, atol=config.atol,
                    method="dopri5")[-1]
    return f.calls, float(((z1 - target) ** 2).mean())


def regularizer_integral(model, order: int, config: DemoConfig) -> float:
    """R_K of a trained network: int_0^1 mean((d^K z/dt^K)^2) dt over the grid, by dopri5."""
    from torchdiffeq import odeint

    z0, _ = data(config)
    with torch.no_grad():
        _, r = odeint(TaylorRegularizedODE(model, order, time_input=True), (z0, torch.zeros(len(z0), dtype=torch.float64)),
                      torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=config.rtol, atol=config.atol, method="dopri5")
    return float(r[-1].mean())


def train(order, lam: float, config: DemoConfig, log=print):
    """One run from the shared initialisation; returns the model and its NFE/loss history."""
    from torchdiffeq import odeint

    torch.manual_seed(config.seed)
    model = make_model(config)
    z0, target = data(config)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    dynamics = TaylorRegularizedODE(model, order, time_input=True) if order else _Counted(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: _rate(it, config) / config.lr)
    options = dict(step_size=config.train_step)
    history = []
    for it in range(config.iterations + 1):
        if it % config.eval_every == 0 or it == config.iterations:
            nfe, loss = evaluate(model, config)
            history.append({"iteration": it, "nfe": nfe, "loss": loss})
            log(f"  iteration {it:5d}: dopri5 NFE {nfe:4d}, loss {loss:.3e}")
        if it == config.iterations:
            break
        optimizer.zero_grad()
        if order:
            z1, r1 = odeint(dynamics, (z0, torch.zeros(len(z0), dtype=torch.float64)), ts, method="rk4", options=options)
            objective = ((z1[-1] - target) ** 2).mean() + lam * r1[-1].mean()
        else:
            z1 = odeint(dynamics, z0, ts, method="rk4", options=options)
            objective = ((z1[-1] - target) ** 2).mean()
        objective.backward()
        optimizer.step()
        schedule.step()
    return model, history


def _rate(it: int, config: DemoConfig) -> float:
    """The learning rate at an iteration: constant, then a cosine down to lr_final."""
    start = int(config.decay_from * config.iterations)
    if it < start:
        return config.lr
    frac = min(1.0, (it - start) / max(1, config.iterations - start))
    return config.lr_final + 0.5 * (config.lr - config.lr_final) * (1 + math.cos(math.pi * frac))


def _write_atomic(path: Path, write) -> None:
    """write(temporary path), then a rename: readers never see a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; these are ordinary files
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_network(model, path: Path) -> None:
    _write_atomic(path, lambda tmp: torch.save(model.state_dict(), tmp))


def load_network(path, config: DemoConfig):
    model = make_model(config)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def run_ode_demo(out="ode-demo-out", quick: bool = False, config: "DemoConfig | None" = None, log=print) -> dict:
    config = config or (QUICK if quick else DemoConfig())
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(config.threads)))
    try:
        return _run(out, quick, config, log)
    finally:
        torch.set_num_threads(threads)


def _run(out, quick: bool, config: DemoConfig, log) -> dict:
    out = Path(out)
    (out / "networks").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    runs, models = [], {}
    for order, lam in ((None, 0.0), *config.lambdas):
        name = "unregularized" if order is None else f"R{order}"
        log(f"{name}: training {config.iterations} iterations" + (f", lambda {lam}" if order else ""))
        t0 = time.perf_counter()
        model, history = train(order, lam, config, log)
        wall = time.perf_counter() - t0
        nfe, loss = history[-1]["nfe"], history[-1]["loss"]
        network = f"networks/{name}.pt"
        _save_network(model, out / network)
        runs.append({"name": name, "order": order, "lambda": lam, "nfe": nfe, "loss": loss,
                     "R2": regularizer_integral(model, 2, config), "R3": regularizer_integral(model, 3, config),
                     "train_wall_s": round(wall, 2), "network": network, "history": history})
        models[name] = model
    base = runs[0]
    for run in runs[1:]:
        run["nfe_ratio"] = base["nfe"] / run["nfe"]  # above 1: fewer evaluations than unregularized
    report = {
        "problem": "z(1) = z(0) + z(0)^3 (Kelly et al. 2020, Figure 1)",
        "model": f"2 -> {config.hidden} tanh -> {config.hidden} tanh -> 1, inputs (z, t), float64",
        "training": (f"Adam lr {config.lr} (cosine to {config.lr_final} after {config.decay_from:.0%} of the iterations), "
                     f"{config.iterations} iterations, RK4 step {config.train_step}"),
        "judged_by": f"dopri5, rtol {config.rtol}, atol {config.atol}",
        "config": dataclasses.asdict(config),
        "quick": quick,
        "runs": runs,
        "wall_s": round(time.perf_counter() - started, 2),
    }
    report["plots"] = _plots(out, models, report, config)
    write_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    write_atomic(out / "report.md", markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [f"# Neural ODE with the Taylor regularizer: {report['problem']}", "",
             f"Model {report['model']}. Training: {report['training']}. Every network judged by "
             f"{report['judged_by']}: NFE and the mean squared error of z(1) over the training grid.", "",
             "| run | K | lambda | NFE | loss (MSE) | R_2 | R_3 | training wall (s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["runs"]:
        lines.append(f"| {r['name']} | {r['order'] or '-'} | {r['lambda']} | {r['nfe']} | {r['loss']:.3e} | "
                     f"{r['R2']:.3e} | {r['R3']:.3e} | {r['train_wall_s']} |")
    lines.append("")
    base = report["runs"][0]
    for r in report["runs"][1:]:
        lines.append(f"- {r['name']}: {r['nfe']} function evaluations against {base['nfe']} unregularized "
                     f"({r['nfe_ratio']:.2f}x fewer, {100 * (1 - r['nfe'] / base['nfe']):.0f}% saved), loss "
                     f"{r['loss']:.2e} against {base['loss']:.2e}.")
    lines += ["", *(f"![{p}]({p})" for p in report.get("plots", [])), ""]
    return "\n".join(lines)


def _plots(out: Path, models: dict, report: dict, config: DemoConfig) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from torchdiffeq import odeint

    files = []

    def save(fig, name):
        fig.tight_layout()
        _write_atomic(out / name, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        files.append(name)

    z0 = torch.linspace(-config.radius, config.radius, 11, dtype=torch.float64)[:, None]
    ts = torch.linspace(0, 1, 101, dtype=torch.float64)
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.6), sharey=True)
    for ax, (name, model), run in zip(axes, models.items(), report["runs"]):
        with torch.no_grad():
            zs = odeint(_Counted(model), z0, ts, rtol=config.rtol, atol=config.atol, method="dopri5")[:, :, 0]
        ax.plot(ts, zs, color="tab:blue", lw=1)
        ax.plot(torch.ones(len(z0)), z0 + z0**3, "k.", label="target z0 + z0^3")
        ax.set_title(f"{name}: NFE {run['nfe']}")
        ax.set_xlabel("t")
    axes[0].set_ylabel("z(t)")
    axes[0].legend(loc="upper left", fontsize=8)
    save(fig, "trajectories.png")

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in report["runs"]:
        its = [h["iteration"] for h in run["history"]]
        ax[0].plot(its, [h["nfe"] for h in run["history"]], label=run["name"])
        ax[1].semilogy(its, [h["loss"] for h in run["history"]], label=run["name"])
    ax[0].set(xlabel="training iteration", ylabel="dopri5 NFE", title="function evaluations")
    ax[1].set(xlabel="training iteration", ylabel="MSE of z(1)", title="fit")
    ax[0].legend()
    save(fig, "nfe_training.png")
    return files


def summary(report: dict) -> str:
    return markdown(report).split("\n![")[0]
