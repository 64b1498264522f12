"""Smoke test of the benchmark: one small cell, few repetitions, JAX anchors only where installed."""
import importlib.util
import json
import math
import os
import threading

import numpy as np
import pytest

from diagramc import bench
from diagramc.combinatorics import multi_index as mi

HAS_JAX = importlib.util.find_spec("jax") is not None
AFFINITY = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None


def test_bench_smoke(tmp_path):
    # one torch thread: on a shared 2-core machine more threads only add waiting at barriers
    report = bench.run_bench(tmp_path, quick=True, cells=[(2, 2, 4)], threads=1)
    stored = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").stat().st_size > 0
    for key in ("machine", "settings", "matmul", "cells", "agree"):
        assert key in stored
    assert stored["matmul"]["peak_gflops"] > 0
    (cell,) = stored["cells"]
    assert (cell["d"], cell["order"], cell["batch"], cell["multi_indices"]) == (2, 2, 4, 6)
    methods = cell["methods"]
    for name in ("diagramc_torch", "diagramc_numpy", "torch_func_jacfwd"):
        assert methods[name]["status"] == "ok", methods[name]
        assert methods[name]["median_s"] > 0
    assert methods["diagramc_numpy"]["fused_loops"] == (importlib.util.find_spec("numba") is not None)
    later = methods["diagramc_numpy"]["cold_compile"]["later_process"]  # the kernel again, in a fresh process
    assert later["compile_s"] > 0 and later["first_call_s"] > 0
    assert "in a later process" in bench.format_table(report)
    assert not methods["diagramc_torch"]["fused_loops"]
    for name in ("diagramc_torch", "diagramc_numpy"):
        assert methods[name]["compile_s"] > 0
        assert methods[name]["multiply_adds_per_sample"]["total"] > 0
        memory = methods[name]["memory"]
        assert memory["output_bytes"] == 4 * 1 * 6 * 8 and memory["peak_bytes"] >= memory["output_bytes"]
        assert memory["ratio"] > 0
    jax_methods = ("jax_jacfwd_jit", "jax_jet_interp", "jax_hessian")
    for name in jax_methods:
        if HAS_JAX:
            assert methods[name]["status"] == "ok", methods[name]
            assert methods[name]["compile_s"] > 0
        else:
            assert methods[name]["status"] == "unavailable"
    compared = {"diagramc_numpy", "torch_func_jacfwd"} | (set(jax_methods) if HAS_JAX else set())
    assert set(cell["agreement"]) == compared
    assert cell["agree"] and stored["agree"] and report["agree"]
    if hasattr(os, "sched_getaffinity"):  # pinned to one core for the run, and unpinned after it
        assert len(stored["settings"]["pinned_cores"]) == 1
        assert os.sched_getaffinity(0) == AFFINITY
    assert set(cell["ratios_anchor_over_ours"]) == compared - {"diagramc_numpy"}
    # every method here is fast: all took part in the interleaved rounds, and the ratio is
    # the median of the within-round ratios
    rounds = bench.Settings.make(True).rounds
    assert cell["paired_rounds"] == rounds
    assert all(len(methods[m]["interleaved_s"]) == rounds for m in compared | {"diagramc_torch"})
    anchor, ours = methods[cell["best_anchor"]]["interleaved_s"], methods[cell["best_ours"]]["interleaved_s"]
    assert cell["best_anchor_over_best_ours"] == pytest.approx(float(np.median(np.divide(anchor, ours))))
    fastest = [min(methods[cell[k]]["times_s"] + methods[cell[k]]["interleaved_s"]) for k in ("best_anchor", "best_ours")]
    assert cell["best_anchor_over_best_ours_of_minima"] == pytest.approx(fastest[0] / fastest[1])


def test_interleaved_rounds_rotate_the_order():
    seen = []
    times, first = bench.measure.interleaved_rounds({name: (lambda name=name: seen.append(name)) for name in "abc"}, 4, {})
    assert seen == list("abc" "bca" "cab" "abc")
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4, "c": 4} == {n: len(t) for n, t in first.items()}


def test_interleaved_bursts_count_their_median(monkeypatch):
    """A method runs its burst in its turn; the round counts the median of the burst's calls after
    the first, and the first apart: here b's calls take 0.5, 0.1, 0.3, 0.1 s (a fake clock) per
    burst: median 0.1, first 0.5 (a cold call, not counted in the steady state)."""
    clock = iter(np.cumsum([0.0] + [0.5, 0.0, 0.1, 0.0, 0.3, 0.0, 0.1, 0.0] * 2))  # call, gap, call, gap, ...
    monkeypatch.setattr(bench.measure.time, "perf_counter", lambda: float(next(clock)))
    times, first = bench.measure.interleaved_rounds({"b": lambda: None}, 2, {"b": 4})
    monkeypatch.undo()
    assert times["b"] == pytest.approx([0.1, 0.1]) and first["b"] == pytest.approx([0.5, 0.5])
    settings = bench.Settings.make(True)
    assert bench.measure.burst_size(1e-4, settings) == settings.max_burst and bench.measure.burst_size(settings.round_max_s, settings) == 1
    assert bench.measure.burst_size(settings.round_max_s / 2, settings) == 2  # two where two fit: one is a cold call
    assert bench.measure.burst_size(settings.burst_s / 4, settings) == 4


@pytest.mark.parametrize("d, n", [(2, 4), (3, 3), (4, 2)])
def test_jet_interpolation_recovers_polynomials(d, n):
    """The Griewank-Utke-Walther coefficients invert c_k(j) = sum_i (D^i / i!) j^i for every k <= n."""
    rng = np.random.default_rng(0)
    directions = mi.of_order(d, n)
    for k in range(1, n + 1):
        alphas = mi.of_order(d, k)
        derivs = rng.standard_normal(len(alphas))
        values = np.array([sum(D / mi.factorial(a) * math.prod(s**e for s, e in zip(j, a))
                               for D, a in zip(derivs, alphas)) for j in directions])
        rows, cols, gamma = bench.interpolation_coefficients(d, n, k)
        recovered = np.zeros(len(alphas))
        np.add.at(recovered, rows, gamma * values[cols])
        np.testing.assert_allclose(recovered, derivs, rtol=1e-12, atol=1e-12)


def test_pack_dense_canonical_order():
    d = 3
    t2 = np.arange(9.0).reshape(1, 3, 3)
    packed = bench.pack_dense([np.zeros(1), np.zeros((1, 3)), t2], d)
    # order 2 of d=3 in canonical order: (0,0) (0,1) (0,2) (1,1) (1,2) (2,2)
    np.testing.assert_array_equal(packed[0, 4:], [0, 1, 2, 4, 5, 8])


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_call_memory_tiny_cell(tmp_path, backend):
    """Peak of one call on a tiny cell: at least the output it returns, and a stated ratio to output + weights."""
    cell = bench.Cell(2, 2, 8)
    module = bench.compile_cell(cell, backend, tmp_path)
    params, x = bench.ours.our_inputs(cell, backend, "cpu")
    module.derivatives(params, x)  # warm
    mem = bench.call_memory(module, params, x, backend)
    assert mem["output_bytes"] == cell.batch * 1 * 6 * 8 == mem["returned_bytes"]
    assert mem["weights_bytes"] == 8 * sum(np.asarray(p).size for p in params)
    assert mem["output_bytes"] <= mem["peak_bytes"] < 100 * (mem["output_bytes"] + mem["weights_bytes"])
    assert mem["ratio"] == pytest.approx(mem["peak_bytes"] / (mem["output_bytes"] + mem["weights_bytes"]))


def test_peak_measurements_see_a_known_allocation():
    """Both meters report a 8 MB temporary that is freed before the call returns."""
    import torch

    def numpy_call():
        a = np.ones(1_000_000)
        return float((a * 2).sum())

    def torch_call():
        a = torch.ones(1_000_000, dtype=torch.float64)
        return float((a * 2).sum())

    for measure, call in ((bench.measure._numpy_call_peak, numpy_call), (bench.measure._torch_call_peak, torch_call)):
        _, peak = measure(call)
        assert 16e6 <= peak < 17e6, (measure.__name__, peak)


def test_memory_check_subprocess_tiny(tmp_path):
    report = bench.memory_check(d=2, order=2, backend="numpy", batches=[1, 4], timeout=120, out_dir=tmp_path)
    assert report["status"] == "ok", report
    assert report["compile_s"] >= 0 and report["import_s"] > 0
    assert [b["batch"] for b in report["batches"]] == [1, 4]
    for b in report["batches"]:
        assert b["call_s"] > 0 and b["memory"]["peak_bytes"] >= b["memory"]["output_bytes"]
    assert json.loads((tmp_path / "memory_check.json").read_text())["status"] == "ok"


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_pinning_covers_threads_started_before_and_after_and_is_undone():
    """_pinned pins every thread of the process, those already running (as JAX's pool would
    be) and those started inside, then gives each its cores back."""
    before = os.sched_getaffinity(0)
    seen, go = {}, threading.Event()

    def worker(name):
        go.wait()
        seen[name] = os.sched_getaffinity(0)

    early = threading.Thread(target=worker, args=("early",))
    early.start()
    with bench.driver._pinned(1) as cores:
        assert cores == sorted(before)[:1] and os.sched_getaffinity(0) == set(cores)
        late = threading.Thread(target=worker, args=("late",))
        late.start()
        go.set()
        early.join()
        late.join()
    assert seen == {"early": set(cores), "late": set(cores)}
    assert os.sched_getaffinity(0) == before
    with bench.driver._pinned(None) as cores:
        assert cores is None and os.sched_getaffinity(0) == before
