"""Plan stage: a KernelSpec -> a KernelPlan, every decision that depends only on the request.

The plan is data: the generated module passes its runtime part (``runtime_plan``) to
diagramc.runtime, which builds the index tables from it and follows its choices. The
choices come from the same table arithmetic the runtime uses (diagramc.runtime.tables),
run here at compile time with the backend's cost constants, so they can be printed
(``diagramc compile --plan``) and tested as Python.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

from .printing import activation_code
from ..runtime.tables import TaylorTables
from .spec import KernelSpec


def _backend_class(backend: str):
    """The runtime class whose cost constants (TANGENT_FACTOR, EQUATION_THRESHOLD) the plan uses."""
    if backend == "numpy":
        from ..runtime.taylor_numpy import NumpyTaylorKernel
        return NumpyTaylorKernel
    from ..runtime.taylor_torch import TorchTaylorKernel
    return TorchTaylorKernel


@dataclass(frozen=True)
class KernelPlan:
    """What a Taylor kernel does, decided at compile time."""

    spec: KernelSpec
    vertex_orders: tuple[int, ...]  # k whose vertex weight sigma^(k)/k! is not identically zero
    equation: "tuple[float, float, float] | None"  # sigma' = c0 + c1 sigma + c2 sigma^2, from order 3
    by_points: bool  # order 2 point by point (Jacobians and Gram matrices)
    by_tangent: bool  # the next-to-top order made at the vertices against the line's tangent
    by_equation: bool  # layers from 2 on through the activation's equation, not the powers of Z
    weight_slots: tuple["int | None", ...]  # per vertex weight, its row in the fused loop's stack
    multiply_adds: dict = field(compare=False)  # per point: {"gemm", "elementwise", "total"}
    series_columns: int = 0  # low-order columns carried through the layers
    top_columns: int = 0  # top-order coefficients made at the vertices
    numbers_per_point: int = 0  # the widest layer's series and the Gram matrices: a call's working set per point
    points_per_thread: "int | None" = None  # a call splits its batch over threads, this many points each at least

    def runtime_plan(self) -> dict:
        """The data the generated module hands to the runtime (literals only)."""
        spec, arch = self.spec, self.spec.architecture
        requested = None if spec.full else tuple(
            tuple(i for i, a in enumerate(alpha) for _ in range(a)) for alpha in spec.multi_indices)
        return {
            "inputs": arch.inputs, "outputs": arch.outputs, "layer_sizes": tuple(arch.layer_sizes),
            "activation": arch.activation.name, "order": spec.order, "vertex_orders": self.vertex_orders,
            "requested": requested, "equation": self.equation, "by_points": self.by_points,
            "by_tangent": self.by_tangent, "by_equation": self.by_equation, "weight_slots": self.weight_slots,
            "points_per_thread": self.points_per_thread,
        }

    def to_json(self) -> dict:
        spec = self.spec
        return {
            "kernel": "taylor", "backend": spec.backend, "layer_sizes": list(spec.architecture.layer_sizes),
            "activation": spec.architecture.activation.name, "order": spec.order,
            "multi_indices": len(spec.multi_indices), "vertex_orders": list(self.vertex_orders),
            "series_columns": self.series_columns, "top_columns": self.top_columns,
            "strategy": {"by_points": self.by_points, "by_tangent": self.by_tangent,
                         "by_equation": self.by_equation, "equation": self.equation},
            "multiply_adds_per_point": self.multiply_adds,
            "memory_per_point_bytes": 8 * self.numbers_per_point,
            "threads": {"points_per_thread": self.points_per_thread},
        }

    def explain(self) -> str:
        """The plan as text, for people (diagramc compile --plan)."""
        spec, arch = self.spec, self.spec.architecture
        H = arch.hidden_layers
        lines = [
            f"Taylor kernel, {spec.backend}: MLP {'-'.join(map(str, arch.layer_sizes))} ({arch.activation.name}), "
            f"order {spec.order}, {len(spec.multi_indices)} multi-indices",
            f"  series: {self.series_columns} low-order columns pushed through the layers, "
            f"{self.top_columns} top-order coefficients made at the vertices",
            f"  vertices: sigma^(k) for k in {list(self.vertex_orders) or 'none (every diagram with a vertex vanishes)'}",
        ]
        if self.by_points:
            lines.append("  order 2, point by point: per layer the Jacobian (W sigma' J) and its Gram matrix "
                         "weighted by g sigma''/2 (the only diagram class at order 2)")
        else:
            lines.append("  layer 1: affine, its series is W1's columns; the top order's layer-1 block "
                         "folded into one matrix K from a batch of 8")
            for layer in range(2, H + 1):
                how = ("the activation's equation (sigma' = p(sigma), two truncated products)" if self.by_equation
                       else "the powers of Z weighted by sigma^(k)/k! (vertex sum)")
                lines.append(f"  layer {layer}: series through the activation by {how}")
            lines.append(f"  output layer {H + 1}: linear")
            if self.by_tangent:
                lines.append("  next-to-top order: made at the vertices against the output line's tangent "
                             "(fewer rows pushed than its own columns)")
            lines.append("  top order: Gram matrices of the output line's left factors against Z, "
                         "summed onto their coefficients")
        ma = self.multiply_adds
        lines.append(f"  work per point: {ma['total']:,} multiply-adds ({ma['gemm']:,} in matrix products, "
                     f"{ma['elementwise']:,} elementwise)")
        lines.append(f"  memory per point: {8 * self.numbers_per_point / 1024:,.0f} KiB in float64 "
                     "(series and Gram matrices; a call takes points in chunks of about 1 MB)")
        if self.points_per_thread is None:
            lines.append("  threads: torch's own (its operations use the cores)")
        else:
            lines.append(f"  threads: a call splits its batch over the threads (diagramc.set_num_threads, else the cores) "
                         f"from {self.points_per_thread} points per thread, BLAS on one thread inside each")
        return "\n".join(lines)


@functools.lru_cache(maxsize=64)
def make_plan(spec: KernelSpec) -> KernelPlan:
    """Decide everything about the kernel that depends only on the request."""
    act, order = spec.architecture.activation, spec.order
    code = activation_code(act, order, "scalar" if spec.backend == "numpy" else spec.backend)
    vertex_orders = tuple(k for k in range(2, order + 1) if code.factors[k - 1] is not None)
    slots, nonzero = [], 0
    for f in code.factors:
        slots.append(None if f is None else nonzero)
        nonzero += f is not None
    equation = act.quadratic_equation() if order >= 3 else None
    by_points = order == 2 and 2 in vertex_orders
    draft = KernelPlan(spec, vertex_orders, equation, by_points, False, False, tuple(slots), {})
    cls = _backend_class(spec.backend)
    # the table arithmetic alone (no backend arrays), with the backend's cost constants
    tables_class = type("PlanTables", (TaylorTables,), {
        "TANGENT_FACTOR": cls.TANGENT_FACTOR, "EQUATION_THRESHOLD": cls.EQUATION_THRESHOLD,
        "PARALLEL_WORK": cls.PARALLEL_WORK})
    rp = dict(draft.runtime_plan(), by_tangent=None, by_equation=None)
    tables = tables_class(rp)
    return KernelPlan(spec, vertex_orders, equation, by_points, bool(tables._BY_TANGENT),
                      bool(tables._BY_EQUATION), tuple(slots), dict(tables.MULTIPLY_ADDS),
                      series_columns=tables._LOW, top_columns=tables._SERIES_SIZE - tables._LOW,
                      numbers_per_point=tables._numbers_per_point(), points_per_thread=tables.points_per_thread())


def plan_json(plan: KernelPlan) -> str:
    return json.dumps(plan.to_json(), indent=2)
