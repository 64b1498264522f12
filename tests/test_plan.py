"""The plan stage: decisions made at compile time, as data, printable; the module follows them."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import diagramc
from diagramc.compiler.plan import make_plan
from diagramc.compiler.spec import KernelSpec

PAPER = diagramc.Architecture((64, 64, 64, 64, 1), "tanh")


def _plan(arch, order, backend="numpy", multi_indices=None):
    return make_plan(KernelSpec.create(arch, order, backend, multi_indices))


@pytest.mark.parametrize(
    "sizes,activation,order,backend,by_points,by_tangent,by_equation",
    [((64, 64, 64, 64, 1), "tanh", 2, "numpy", True, False, False),
     ((64, 64, 64, 64, 1), "tanh", 3, "numpy", False, True, False),
     ((64, 64, 64, 64, 1), "tanh", 3, "torch", False, True, False),
     ((2, 64, 64, 64, 1), "tanh", 8, "numpy", False, True, True),
     ((2, 64, 64, 64, 1), "tanh", 8, "torch", False, False, True),  # 12 x 2 rows against 8
     ((4, 64, 64, 64, 1), "tanh", 4, "torch", False, False, False),  # 12 x the tangent's rows are too many
     ((4, 64, 64, 64, 1), "sin", 5, "numpy", False, True, False),  # sin has no quadratic equation
     ((3, 8, 1), "relu", 3, "numpy", False, False, False)])  # no vertices at all
def test_choices(sizes, activation, order, backend, by_points, by_tangent, by_equation):
    """The products plan's choices (the directions plan, where it is cheaper, is test_directions')."""
    plan = make_plan(KernelSpec.create(diagramc.Architecture(sizes, activation), order, backend, strategy="products"))
    assert (plan.by_points, plan.by_tangent, plan.by_equation) == (by_points, by_tangent, by_equation)


def test_the_module_is_built_from_its_plan(tmp_path):
    """What the compiler decided is what the module's runtime runs."""
    arch = diagramc.Architecture((3, 16, 16, 1), "sigmoid")
    for backend in ("numpy", "torch"):
        plan = _plan(arch, 6, backend)
        mod = diagramc.compile(arch, 6, backend, out_dir=tmp_path)
        assert mod.PLAN == plan.runtime_plan()
        if plan.by_directions:  # the other algorithm (test_directions)
            assert type(mod._KERNEL).__name__.endswith("DirectionsKernel")
            continue
        assert (mod._KERNEL._BY_TANGENT, mod._KERNEL._BY_EQUATION) == (plan.by_tangent, plan.by_equation)


def test_relu_plan_says_its_vertices_vanish():
    plan = _plan(diagramc.Architecture((3, 8, 1), "relu"), 3)
    assert plan.vertex_orders == () and "vanish" in plan.explain()


def test_plan_counts_work_and_memory():
    plan = _plan(PAPER, 3)
    data = plan.to_json()
    assert data["multi_indices"] == 1 + 64 + 2080 + 45760 and data["top_columns"] == 45760
    assert data["multiply_adds_per_point"]["total"] == (data["multiply_adds_per_point"]["gemm"]
                                                        + data["multiply_adds_per_point"]["elementwise"])
    assert data["memory_per_point_bytes"] > 8 * data["series_columns"] * 64
    text = plan.explain()
    for layer in ("layer 1", "layer 2", "layer 3", "output layer 4"):
        assert layer in text


def test_cli_prints_the_plan_and_writes_nothing(tmp_path):
    base = [sys.executable, "-m", "diagramc", "compile", "--order", "4", "--layer-sizes", "3,8,8,1",
            "--activation", "tanh", "-o", str(tmp_path)]
    text = subprocess.run(base + ["--plan"], capture_output=True, text=True, check=True).stdout
    assert text.startswith("Taylor kernel, numpy: MLP 3-8-8-1 (tanh), order 4")
    data = json.loads(subprocess.run(base + ["--plan", "--json"], capture_output=True, text=True, check=True).stdout)
    assert data["strategy"]["by_equation"] is True and data["order"] == 4
    assert list(tmp_path.iterdir()) == []
