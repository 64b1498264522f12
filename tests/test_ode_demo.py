"""diagramc ode-demo at a tiny size: its report's numbers recomputed from the saved networks."""
from __future__ import annotations

import json

import pytest
import torch

from diagramc.cli import build_parser
from diagramc.applications.ode_demo import DemoConfig, load_network, run_ode_demo

torchdiffeq = pytest.importorskip("torchdiffeq")


def test_report_numbers_come_from_the_saved_networks(tmp_path):
    config = DemoConfig(hidden=6, points=12, iterations=4, eval_every=2, lambdas=((2, 0.1), (3, 0.1)))
    report = run_ode_demo(tmp_path, config=config, log=lambda *a: None)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    for name in ("report.md", "trajectories.png", "nfe_training.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert [r["name"] for r in report["runs"]] == ["unregularized", "R2", "R3"]
    z0 = torch.linspace(-config.radius, config.radius, config.points, dtype=torch.float64)[:, None]
    for run in report["runs"]:
        model = load_network(tmp_path / run["network"], config)
        calls = []

        def f(t, z):
            calls.append(t)
            return model(torch.cat([z, t.expand(z.shape[0], 1)], 1))

        with torch.no_grad():
            z1 = torchdiffeq.odeint(f, z0, torch.tensor([0.0, 1.0], dtype=torch.float64),
                                    rtol=config.rtol, atol=config.atol, method="dopri5")[-1]
        assert run["nfe"] == len(calls) == run["history"][-1]["nfe"]
        assert run["loss"] == pytest.approx(float(((z1 - z0 - z0**3) ** 2).mean()), rel=1e-12)
        if run["order"]:
            assert run["nfe_ratio"] == pytest.approx(report["runs"][0]["nfe"] / run["nfe"])
    assert "fewer" in (tmp_path / "report.md").read_text()


def test_cli_knows_ode_demo():
    args = build_parser().parse_args(["ode-demo", "--quick", "--out", "somewhere"])
    assert (args.command, args.quick, args.out) == ("ode-demo", True, "somewhere")
