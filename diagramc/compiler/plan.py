"""Plan stage: a KernelSpec -> a KernelPlan, every decision that depends only on the request.

The plan is data: the generated module passes its runtime part (``runtime_plan``) to
diagramc.runtime, which builds the index tables from it and follows its choices. The
choices come from the same table arithmetic the runtime uses (diagramc.runtime.tables),
run here at compile time with the backend's cost constants, so they can be printed
(``diagramc compile --plan``) and tested as Python.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass, field

from .printing import activation_code
from ..runtime import taylor_directions
from ..runtime.taylor_directions import pushed_counts
from ..runtime.interpolation import growth as interpolation_growth
from ..runtime.tables import TaylorTables
from .spec import KernelSpec


# The directions plan only where interpolation amplifies rounding errors less than this (see
# runtime.interpolation.growth): float64 results then keep about 10 digits of each order's largest derivative.
MAX_INTERPOLATION_GROWTH = 1e6
# Directions considered at most: their exact interpolation coefficients are made in seconds.
MAX_DIRECTIONS = 2000


def _backend_class(backend: str):
    """The runtime class whose cost constants (TANGENT_FACTOR, EQUATION_THRESHOLD, DIRECTIONS_FACTOR) the plan uses."""
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
    by_directions: bool = False  # univariate series along C(d+n-1, n) directions, then exact interpolation
    rule: "tuple | None" = None  # by directions: the activation's series rule (runtime.jet_series)
    directions: int = 0  # C(d+n-1, n)
    # why: the multiply-adds per point of each way, the backend's factor, the interpolation's growth
    choice: dict = field(default_factory=dict, compare=False)

    def runtime_plan(self) -> dict:
        """The data the generated module hands to the runtime (literals only)."""
        spec, arch = self.spec, self.spec.architecture
        if self.by_directions:
            return {
                "inputs": arch.inputs, "outputs": arch.outputs, "layer_sizes": tuple(arch.layer_sizes),
                "activation": arch.activation.name, "order": spec.order, "by_directions": True,
                "rule": self.rule, "weight_slots": self.weight_slots,
            }
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
            "algorithm": "directions" if self.by_directions else "products",
            **({"directions": {"count": self.directions, "rule": list(self.rule)}} if self.by_directions else {}),
            "choice": self.choice,
        }

    def explain(self) -> str:
        """The plan as text, for people (diagramc compile --plan)."""
        spec, arch = self.spec, self.spec.architecture
        H = arch.hidden_layers
        lines = [
            f"Taylor kernel, {spec.backend}: MLP {'-'.join(map(str, arch.layer_sizes))} ({arch.activation.name}), "
            f"order {spec.order}, {len(spec.multi_indices)} multi-indices",
        ]
        if self.by_directions:
            return "\n".join(lines + self._explain_directions())
        lines += [
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
                     "(series and Gram matrices; a call takes points in cache-sized chunks, 0.5-1 MB)")
        if self.points_per_thread is None and spec.backend != "numpy":
            lines.append("  threads: torch's own (its operations use the cores)")
        elif self.points_per_thread is None:
            lines.append("  threads: one a call, BLAS on the call's threads (a chunk driven from Python would "
                         "queue for the GIL on two)")
        else:
            lines.append(f"  threads: a call splits its batch over the threads (diagramc.set_num_threads, else the cores) "
                         f"from {self.points_per_thread} points per thread, BLAS on one thread inside each")
        return "\n".join(lines + self._explain_choice())

    def _explain_directions(self) -> list:
        n, H = self.spec.order, self.spec.architecture.hidden_layers
        ma = self.multiply_adds
        return [
            f"  by directions: univariate Taylor series of f along the {self.directions} directions "
            f"(the order-{n} multi-indices as vectors), then every D^alpha f by exact interpolation",
            "  layer 1: affine along x + t j, so sigma's coefficients there are sigma^(k)(z)/k! (W1 j)^k",
            f"  layers 2..{H + 1}: coefficients 1..{n - 1} through the weights, one matrix product: "
            f"order k at {list(pushed_counts(self.spec.architecture.inputs, n))} directions (k = 1..{n - 1}), "
            "the other directions' from theirs by an exact linear map (a homogeneous polynomial of degree k "
            "in the direction)",
            f"  activation: its series by the rule {self.rule[0]!r} along every direction "
            "(the value once per point, shared)",
            f"  top coefficient {n}: each layer's against the output line df/dh (one reverse sweep), "
            "never through a weight matrix",
            "  interpolation: per order k, a fixed (directions x multi-indices) matrix of exact rationals "
            "(Griewank, Utke & Walther 2000), rounded once",
            f"  work per point: {ma['total']:,} multiply-adds ({ma['gemm']:,} in matrix products, "
            f"{ma['elementwise']:,} elementwise)",
        ] + self._explain_choice()

    def _explain_choice(self) -> list:
        c = self.choice
        if not c:
            return []
        if "asked" in c:
            return [f"  algorithm: {c['asked']}, as asked (--strategy)"]
        if "products_only" in c:
            return [f"  algorithm: products ({c['products_only']})"]
        chosen = "directions" if self.by_directions else "products"
        if c["growth"] is not None and c["growth"] > MAX_INTERPOLATION_GROWTH:
            return [f"  algorithm: products: interpolating from directions would amplify rounding errors "
                    f"{c['growth']:.1e} times (above {MAX_INTERPOLATION_GROWTH:.0e})"]
        return [f"  algorithm: {chosen}: directions cost {c['factor']} x {c['directions']:,} = "
                f"{c['factor'] * c['directions']:,.0f} against the products' {c['products']:,} multiply-adds per point "
                f"(DIRECTIONS_FACTOR of the {self.spec.backend} backend"
                + ("" if c["growth"] is None else f"; interpolation growth {c['growth']:.1e}") + ")"]


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
    if spec.strategy == "directions":  # the products' tables are not built for a kernel asked to go by directions
        return _directions_plan(spec, vertex_orders, equation, tuple(slots), {"asked": "directions"})
    tables = tables_class(rp)
    products = KernelPlan(spec, vertex_orders, equation, by_points, bool(tables._BY_TANGENT),
                          bool(tables._BY_EQUATION), tuple(slots), dict(tables.MULTIPLY_ADDS),
                          series_columns=tables._LOW, top_columns=tables._SERIES_SIZE - tables._LOW,
                          numbers_per_point=tables._numbers_per_point(), points_per_thread=tables.points_per_thread(by_points))
    if spec.strategy == "products":
        return dataclasses.replace(products, choice={"asked": "products"})
    why = _directions_excluded(spec, vertex_orders)
    if why is not None:
        return dataclasses.replace(products, choice={"products_only": why})
    directions = _directions_plan(spec, vertex_orders, equation, tuple(slots), {})
    choice = {"products": products.multiply_adds["total"], "directions": directions.multiply_adds["total"],
              "factor": cls.DIRECTIONS_FACTOR, "growth": None}
    if cls.DIRECTIONS_FACTOR * choice["directions"] >= choice["products"]:
        return dataclasses.replace(products, choice=choice)
    # only now the exact coefficients (seconds for hundreds of directions)
    choice["growth"] = interpolation_growth(spec.architecture.inputs, spec.order)
    return dataclasses.replace(directions if choice["growth"] <= MAX_INTERPOLATION_GROWTH else products, choice=choice)


def _directions_excluded(spec: KernelSpec, vertex_orders) -> "str | None":
    """Why the directions plan is not considered for a request, or None."""
    if not spec.full:
        return "a subset of multi-indices: the directions make them all"
    if spec.order < 3:
        return "order below 3: the products plan's matrix products are the whole work"
    if not vertex_orders or spec.architecture.hidden_layers == 0:
        return "no vertex weight: every coefficient above order 1 vanishes"
    if math.comb(spec.architecture.inputs + spec.order - 1, spec.order) > MAX_DIRECTIONS:
        return f"more than {MAX_DIRECTIONS:,} directions"
    return None


def _directions_plan(spec: KernelSpec, vertex_orders, equation, slots, choice) -> KernelPlan:
    """The plan by directions: the activation's series rule and the work counts."""
    from .jets import series_rule

    arch = spec.architecture
    act = arch.activation
    if act.is_custom:  # the vertex sum, or its quadratic equation (series_rule's simplify can take minutes)
        quadratic = act.quadratic_equation()
        rule = ("vertex", ()) if quadratic is None else ("quadratic", quadratic)
    else:
        rule = series_rule(act)
    work = taylor_directions.multiply_adds(tuple(arch.layer_sizes), spec.order, rule)
    count = math.comb(arch.inputs + spec.order - 1, spec.order)
    # per point: the widest layer's coefficients along every direction, S, Q and the incoming ones
    numbers = 3 * spec.order * count * max(arch.layer_sizes[1:-1])
    return KernelPlan(spec, vertex_orders, equation, False, False, False, slots, work, numbers_per_point=numbers,
                      by_directions=True, rule=(rule[0], tuple(rule[1])), directions=count, choice=choice)


def plan_json(plan: KernelPlan) -> str:
    return json.dumps(plan.to_json(), indent=2)
