"""diagramc.applications.demo: data family, exact least squares, the structurally second-order model, a smoke run."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from diagramc.born import born_derivatives, born_term, scattering_length
from diagramc.applications.demo import (
    QUICK,
    SHAPES,
    ScaledMLP,
    _kernel,
    derivatives_at_zero,
    hessian_matrix,
    make_dataset,
    run_demo,
    sample_potentials,
    sample_shapes,
    second_order_term,
    structurally_second_order,
    train_iteration1,
    train_iteration2,
    weighted_linear_lstsq,
)
from diagramc.errors import DiagramcError

TINY = dataclasses.replace(
    QUICK, N=8, n_train=240, n_val=60, n_test=80, hidden=(8, 8), epochs1=2, epochs2=2,
    exact_first_variant=True, no_lstsq_variant=True, progress=False, threads=1,
)

REPORT_KEYS = {
    "first_order_rel_error_iter1", "second_order_rel_error_iter1", "second_order_rel_error_iter2",
    "first_order_rel_error_combined", "second_order_term_rel_error_test_iter1",
    "second_order_term_rel_error_test_iter2", "proxy_rel_error_test", "born2_rel_error_test",
    "born1_rel_error_test", "errors_by_coupling", "variants", "data", "goals", "architecture", "config",
    "linear_correction", "history", "timing", "files",
}


# ---------------------------------------------------------------- data

def test_shapes_range_kinds_and_seeding():
    s, kinds = sample_shapes(4000, 64, np.random.default_rng(0), noise_low=-1.0)
    assert s.shape == (4000, 64) and kinds.shape == (4000,)
    assert s.min() >= -1.0 and s.max() <= 1.0
    assert set(kinds) == set(SHAPES)
    counts = [np.sum(kinds == k) for k in SHAPES]
    assert min(counts) > 800  # equally likely
    s2, kinds2 = sample_shapes(4000, 64, np.random.default_rng(0), noise_low=-1.0)
    assert np.array_equal(s, s2) and np.array_equal(kinds, kinds2)
    s3, _ = sample_shapes(4000, 64, np.random.default_rng(1), noise_low=-1.0)
    assert not np.array_equal(s, s3)
    # attractive-only family when asked: s in [0, 1]
    s4, _ = sample_shapes(500, 16, np.random.default_rng(0), noise_low=0.0)
    assert s4.min() >= 0.0
    # every step varies independently (the data probe all N directions)
    assert np.all(s.std(axis=0) > 0.3)


def test_potentials_and_couplings():
    U, lam, kinds = sample_potentials(3000, 16, np.random.default_rng(2), 0.01, 1.5, noise_low=-1.0)
    assert U.shape == (3000, 16) and lam.shape == (3000,)
    assert lam.min() >= 0.01 and lam.max() <= 1.5
    # log-uniform: about half the couplings below the geometric mean
    assert abs(np.mean(lam < np.sqrt(0.015)) - 0.5) < 0.05
    assert np.all(np.abs(U) <= lam[:, None] + 1e-15)
    with pytest.raises(DiagramcError):
        sample_potentials(10, 16, np.random.default_rng(0), 1.0, 0.5)


def test_dataset_targets_are_exact():
    cfg = dataclasses.replace(TINY, n_train=50, n_val=10, n_test=20)
    data = make_dataset(cfg, seed=3)
    assert [len(data[k]["U"]) for k in ("train", "val", "test")] == [50, 10, 20]
    te = data["test"]
    np.testing.assert_allclose(te["a0"], scattering_length(te["U"]), rtol=1e-14)
    for k in (1, 2, 3):
        np.testing.assert_allclose(te[f"a{k}"], born_term(te["U"], k), rtol=1e-12)
    # Born series converges in this regime: a1 + a2 + a3 is closer than a1 + a2
    e2 = np.abs(te["a1"] + te["a2"] - te["a0"])
    e3 = np.abs(te["a1"] + te["a2"] + te["a3"] - te["a0"])
    assert np.linalg.norm(e3) < 0.5 * np.linalg.norm(e2)
    again = make_dataset(cfg, seed=3)
    assert np.array_equal(again["train"]["U"], data["train"]["U"])


# ---------------------------------------------------------------- exact least squares

def test_lstsq_recovers_exact_linear_part():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6))
    g = rng.normal(size=6)
    w = 10.0 ** rng.uniform(-4, 8, size=400)  # weights over 12 decades, as 1/lambda^4 gives
    c, gg = weighted_linear_lstsq(X, 0.7 + X @ g, w)
    assert c == pytest.approx(0.7, abs=1e-12)
    np.testing.assert_allclose(gg, g, atol=1e-12)


def test_lstsq_is_the_weighted_minimiser():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 4))
    y = rng.normal(size=300)
    w = rng.uniform(0, 3, size=300)
    c, g = weighted_linear_lstsq(X, y, w)
    A = np.c_[np.ones(300), X]
    ref = np.linalg.solve((A * w[:, None]).T @ A, (A * w[:, None]).T @ y)
    np.testing.assert_allclose(np.r_[c, g], ref, rtol=1e-10, atol=1e-12)
    # the weighted residual is orthogonal to the design (normal equations hold)
    res = y - c - X @ g
    np.testing.assert_allclose(A.T @ (w * res), 0, atol=1e-10)
    # zero weights drop rows; no intercept
    w0 = w.copy()
    w0[:100] = 0
    c1, g1 = weighted_linear_lstsq(X, y, w0)
    c2, g2 = weighted_linear_lstsq(X[100:], y[100:], w[100:])
    np.testing.assert_allclose(np.r_[c1, g1], np.r_[c2, g2], rtol=1e-10, atol=1e-12)
    c3, g3 = weighted_linear_lstsq(X, X @ [1.0, 2.0, 3.0, 4.0], w, intercept=False)
    assert c3 == 0.0
    np.testing.assert_allclose(g3, [1, 2, 3, 4], atol=1e-12)


def test_lstsq_errors():
    with pytest.raises(DiagramcError):
        weighted_linear_lstsq(np.zeros((5, 2)), np.zeros(4), np.ones(5))
    with pytest.raises(DiagramcError):
        weighted_linear_lstsq(np.zeros((5, 2)), np.zeros(5), -np.ones(5))
    with pytest.raises(DiagramcError):
        weighted_linear_lstsq(np.zeros((2, 4)), np.zeros(2), np.ones(2))


def test_second_order_term_and_matrix_match_born():
    rng = np.random.default_rng(4)
    U = rng.normal(size=(5, 12))
    D2 = born_derivatives(12, 2)
    np.testing.assert_allclose(second_order_term(D2, U), born_term(U, 2), rtol=1e-12)
    H = hessian_matrix(D2, 12)
    np.testing.assert_allclose(0.5 * np.einsum("bi,ij,bj->b", U, H, U), born_term(U, 2), rtol=1e-12)


# ---------------------------------------------------------------- networks and kernels

def _net(seed=0, sizes=(6, 7, 5, 1)):
    torch.manual_seed(seed)
    m = ScaledMLP(sizes, "tanh", s_in=0.3, s_out=0.05)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.7)
    return m


def test_export_and_physical_params_are_the_same_function():
    m = _net()
    U = torch.randn(9, 6, dtype=torch.float64)
    seq = m.export()
    with torch.no_grad():
        np.testing.assert_allclose(seq(U)[:, 0].numpy(), m(U).numpy(), rtol=1e-13)
    # the generated kernel on the folded parameters gives the derivatives of f itself
    k2 = _kernel(m.layer_sizes, "tanh", 2)
    D = derivatives_at_zero(m, k2)
    f = lambda x: m(x[None])[0]  # noqa: E731
    x0 = torch.zeros(6, dtype=torch.float64)
    g = torch.func.jacrev(f)(x0).detach().numpy()
    H = torch.func.hessian(f)(x0).detach().numpy()
    np.testing.assert_allclose(D[0], float(f(x0)), rtol=1e-13)
    np.testing.assert_allclose(D[1:7], g, rtol=1e-12)
    i, j = np.triu_indices(6)
    np.testing.assert_allclose(D[7:], H[i, j], rtol=1e-11, atol=1e-15)


def test_structurally_second_order_vanishes_to_first_order_and_keeps_the_hessian():
    m = _net(1)
    k1 = _kernel(m.layer_sizes, "tanh", 1)
    q = lambda x: structurally_second_order(m, k1, x[None])[0]  # noqa: E731
    x0 = torch.zeros(6, dtype=torch.float64)
    assert abs(float(q(x0))) < 1e-15
    assert np.abs(torch.func.jacrev(q)(x0).detach().numpy()).max() < 1e-14
    Hq = torch.func.hessian(q)(x0).detach().numpy()
    Hm = torch.func.hessian(lambda x: m(x[None])[0])(x0).detach().numpy()
    np.testing.assert_allclose(Hq, Hm, rtol=1e-12, atol=1e-15)
    # differentiable in the parameters (it is used inside the training loop)
    structurally_second_order(m, k1, torch.randn(4, 6, dtype=torch.float64)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


# ---------------------------------------------------------------- smoke run

def test_run_demo_smoke(tmp_path):
    rep = run_demo(tmp_path, seed=0, config=TINY)
    assert REPORT_KEYS <= set(rep)
    for name in ("report.json", "report.md", "iteration1.pt", "iteration2.pt", "architecture.json",
                 "first_order_coefficients.png", "second_order_heatmaps.png", "second_order_coefficients.png",
                 "predicted_vs_exact.png", "errors_by_iteration.png"):
        assert (tmp_path / name).is_file(), name
        assert name in rep["files"]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert REPORT_KEYS <= set(on_disk)
    for key in ("first_order_rel_error_iter1", "second_order_rel_error_iter1", "second_order_rel_error_iter2",
                "proxy_rel_error_test", "born2_rel_error_test"):
        assert isinstance(on_disk[key], float) and np.isfinite(on_disk[key])
    assert on_disk["born2_rel_error_test"] < on_disk["born1_rel_error_test"]
    assert set(on_disk["variants"]) == {"exact_first_born", "learned_first_without_lstsq"}
    arch = json.loads((tmp_path / "architecture.json").read_text())
    assert arch == {"layer_sizes": [8, 8, 8, 1], "activation": "tanh", "N": 8, "R": 1.0}
    # the saved state dicts load into nn.Sequential models of that architecture
    for name in ("iteration1.pt", "iteration2.pt"):
        state = torch.load(tmp_path / name)
        seq = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                                  torch.nn.Linear(8, 1)).double()
        seq.load_state_dict(state)
    # the first saved network reproduces the report's iteration-1 first-order error through diagramc
    import diagramc

    seq1 = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 1)).double()
    seq1.load_state_dict(torch.load(tmp_path / "iteration1.pt"))
    mod = diagramc.compile(diagramc.Architecture((8, 8, 8, 1), "tanh"), 1, backend="torch")
    g = mod.derivatives(diagramc.params_from_torch(seq1), torch.zeros(1, 8, dtype=torch.float64))[0, 0, 1:]
    B1 = born_derivatives(8, 1)
    err = np.linalg.norm(g.detach().numpy() - B1) / np.linalg.norm(B1)
    assert err == pytest.approx(on_disk["first_order_rel_error_iter1"], rel=1e-9)
    md = (tmp_path / "report.md").read_text()
    assert "second-order Born" in md and "![" in md


def test_training_is_reproducible():
    cfg = dataclasses.replace(TINY, epochs1=1, epochs2=2)
    data = make_dataset(cfg, seed=5)
    k1 = _kernel((8, 8, 8, 1), "tanh", 1)

    def once():
        gen = torch.Generator().manual_seed(5)
        m1, _ = train_iteration1(cfg, data["train"], data["val"], gen)
        tr, va = data["train"], data["val"]
        m2, (c, g), _ = train_iteration2(cfg, tr["U"], tr["a0"] - tr["a1"], tr["lam"],
                                         (va["U"], va["a0"] - va["a1"], va["lam"]), k1, gen)
        return [p.detach().clone() for p in (*m1.parameters(), *m2.parameters())] + [torch.tensor(c),
                                                                                       torch.from_numpy(g)]

    for a, b in zip(once(), once()):
        assert torch.equal(a, b)
