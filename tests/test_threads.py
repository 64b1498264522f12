"""A NumPy kernel call on threads: the count's sources, the parts, and the same numbers as on one."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch

import diagramc
from diagramc.runtime import threads

from .reference import random_params, reference_derivatives


@pytest.fixture(autouse=True)
def _no_setting(monkeypatch):
    for name in threads._ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    threads.set_num_threads(None)
    yield
    threads.set_num_threads(None)


def test_count_follows_setting_then_environment_then_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    assert threads.get_num_threads() == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.get_num_threads() == 3
    monkeypatch.setenv("NUMBA_NUM_THREADS", "2")  # before OMP's
    assert threads.get_num_threads() == 2
    monkeypatch.setenv("DIAGRAMC_NUM_THREADS", "64")  # never more than the cores
    assert threads.get_num_threads() == 6
    threads.set_num_threads(4)
    assert threads.get_num_threads() == 4
    threads.set_num_threads(None)
    assert threads.get_num_threads() == 6


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "2"])
def test_set_num_threads_refuses_what_is_not_a_count(bad):
    with pytest.raises(ValueError, match="expected a positive int or None"):
        threads.set_num_threads(bad)


def test_run_parts_keeps_order_uses_threads_and_one_blas_thread():
    from threadpoolctl import threadpool_info

    np.ones((64, 64)) @ np.ones((64, 64))  # NumPy's BLAS loaded

    def part(i):
        blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        return i, threading.get_ident(), blas

    got = threads.run_parts(part, range(4), 4)
    assert [i for i, _, _ in got] == [0, 1, 2, 3]
    assert got[0][1] == threading.get_ident() and len({ident for _, ident, _ in got}) > 1
    assert all(blas == [1] * len(blas) for _, _, blas in got)
    assert threads.run_parts(lambda i: i * i, [3], 4) == [9]  # one part: no pool


def test_run_shared_keeps_order_and_gives_each_part_once():
    seen = []

    def part(i):
        seen.append(i)
        return i * i, threading.get_ident()

    got = threads.run_shared(part, range(20), 3)
    assert [value for value, _ in got] == [i * i for i in range(20)] and sorted(seen) == list(range(20))
    assert threads.run_shared(lambda i: -i, [4], 3) == [-4]


def test_run_shared_raises_a_parts_error_after_all_parts():
    done = []

    def part(i):
        if i == 5:
            raise ArithmeticError("part 5")
        done.append(i)

    with pytest.raises(ArithmeticError, match="part 5"):
        threads.run_shared(part, range(8), 2)
    assert sorted(done) == [0, 1, 2, 3, 4, 6, 7]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2
                    or threads._current_cpu() is None, reason="needs two cores and sched_getcpu")
def test_a_worker_leaves_the_callers_core_and_gets_its_mask_back():
    def worker():
        before, here = os.sched_getaffinity(0), threads._current_cpu()
        moved = threads._leave_cpu(here)
        now = threads._current_cpu()
        os.sched_setaffinity(0, moved)
        return before, here, moved, now, threads._leave_cpu(None)

    result = []
    thread = threading.Thread(target=lambda: result.append(worker()))
    thread.start()
    thread.join()
    before, here, moved, now, none = result[0]
    assert moved == before and now != here and none is None


def test_an_error_in_a_part_reaches_the_caller():
    def part(i):
        if i == 2:
            raise ArithmeticError("part 2")
        return i

    with pytest.raises(ArithmeticError, match="part 2"):
        threads.run_parts(part, range(3), 3)


@pytest.mark.parametrize("activation,order,sizes,batch", [
    ("tanh", 2, (5, 9, 7, 2), 23),        # order 2 point by point
    ("sin", 3, (3, 6, 8, 5, 1), 17),
    ("softplus", 4, (2, 7, 5, 3), 11),
    ("tanh", 5, (3, 4, 6, 2), 9),
    ("sigmoid", 6, (1, 5, 4, 3, 1), 14),  # by the equation, no tangent
])
@pytest.mark.parametrize("prange", [True, False], ids=["numba-prange", "python-threads"])
def test_split_call_matches_jacfwd_and_one_thread(activation, order, sizes, batch, prange, tmp_path, monkeypatch):
    """Parts of uneven sizes (a batch not divisible by the threads) and chunks of 4 points
    (from order 3 all of a part's chunks in one compiled call), the parts under numba's prange
    or on Python's threads: the same numbers as one thread, bit for bit, and as nested jacfwd."""
    from diagramc.runtime import numpy_loops

    fast = prange and numpy_loops.fast_parallel_loops()
    if prange and not fast:
        pytest.skip("numba's threading layer here is neither OpenMP nor TBB")
    monkeypatch.setattr(numpy_loops, "fast_parallel_loops", lambda: fast)
    arch = diagramc.Architecture(layer_sizes=sizes, activation=activation)
    module = diagramc.compile(arch, order, backend="numpy", out_dir=tmp_path)
    params = random_params(sizes, torch.Generator().manual_seed(order))
    x = torch.randn(batch, sizes[0], generator=torch.Generator().manual_seed(batch), dtype=torch.float64)
    kernel = module._KERNEL
    assert (kernel._TABLES.get("compiled_chunks") is not None) == (order >= 3)
    kernel._POINTS_PER_THREAD = 1  # split even these small calls
    kernel._CHUNK = 4
    threads.set_num_threads(1)
    alone = module.derivatives([p.numpy() for p in params], x.numpy())
    threads.set_num_threads(3)
    parts = kernel._parts(batch)  # contiguous, PARTS_PER_THREAD a thread where the batch allows
    assert len(parts) == max(3, min(3 * kernel.PARTS_PER_THREAD, batch // kernel.POINTS_PER_PART))
    assert parts[0].start == 0 and parts[-1].stop == batch
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    split = module.derivatives([p.numpy() for p in params], x.numpy())
    np.testing.assert_array_equal(split, alone)
    want = reference_derivatives(params, x, activation, module.MULTI_INDICES)
    torch.testing.assert_close(torch.as_tensor(split), want, rtol=1e-10, atol=1e-10 * float(want.abs().max()))


def test_plan_records_the_split_rule():
    """A NumPy call splits its batch over threads, 1e6 multiply-adds a thread at least, point by
    point at order 2 and in compiled chunks from order 3, not at order 1; torch's does not (its
    own threads)."""
    from diagramc.compiler.plan import make_plan
    from diagramc.compiler.spec import KernelSpec

    def plan(d, order, backend="numpy"):
        arch = diagramc.Architecture(layer_sizes=(d, 64, 64, 64, 1), activation="tanh")
        return make_plan(KernelSpec.create(arch, order, backend, strategy="products" if order >= 3 else None))

    for split in (plan(2, 8), plan(2, 5), plan(64, 2), plan(2, 4), plan(3, 5), plan(4, 5), plan(4, 4), plan(16, 3)):
        assert split.points_per_thread == -(-10**6 // split.multiply_adds["total"])
        assert split.runtime_plan()["points_per_thread"] == split.points_per_thread
        assert "points per thread" in split.explain()
    whole = plan(3, 1)  # order 1: chunks driven from Python
    assert whole.points_per_thread is None and "queue for the GIL" in whole.explain()
    assert plan(2, 8, "torch").points_per_thread is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2
                    or threads._current_cpu() is None, reason="needs two cores and sched_getcpu")
def test_numbas_workers_are_kept_off_the_callers_core(monkeypatch):
    """numba's OpenMP threads, found by their ids at the threading layer's start, are moved off
    the calling thread's core before a prange call, and again when that core changes."""
    from diagramc.runtime import numpy_loops

    if not numpy_loops.fast_parallel_loops():
        pytest.skip("numba's threading layer here is neither OpenMP nor TBB")
    workers = numpy_loops._PARALLEL["workers"]
    tasks = {int(t) for t in os.listdir("/proc/self/task")}
    assert workers and set(workers) <= tasks and threading.get_native_id() not in workers
    allowed = os.sched_getaffinity(0)
    for cpu in sorted(allowed)[:2]:  # this thread on one core, then on another
        monkeypatch.setattr(threads, "_current_cpu", lambda cpu=cpu: cpu)
        numpy_loops.workers_off_this_core()
        assert numpy_loops._PARALLEL["off"] == cpu
        assert all(os.sched_getaffinity(w) == allowed - {cpu} for w in workers)


def test_numba_thread_count_read_directly_follows_numba():
    """numpy_loops.numba_threads, numba's C getter read without its wrapper, says what
    numba.get_num_threads says, before the threading layer starts and after set_num_threads."""
    import numba

    from diagramc.runtime import numpy_loops

    assert numpy_loops.numba_threads() == numba.get_num_threads()
    numpy_loops.fast_parallel_loops()
    before = numba.get_num_threads()
    try:
        for count in (1, before):
            numba.set_num_threads(count)
            assert numpy_loops.numba_threads() == numba.get_num_threads() == count
    finally:
        numba.set_num_threads(before)
