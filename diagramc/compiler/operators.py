"""Differential operators compiled: ``sum_alpha c_alpha D^alpha f`` of an MLP (CONTRACT.md section 9).

    request (OperatorSpec: the operator canonicalised) -> plan (OperatorPlan: which rows each
    layer carries, chosen by counting multiply-adds) -> template -> cache -> import by path

The kernel carries, per layer, the value, the Taylor coefficients the operator needs below
its top (the downward closure of its multi-indices, less the maximal ones), and the top
itself *collapsed*: one row per group holding ``sum_gamma c_gamma D^gamma z``, never the
separate top-order entries. For the Laplacian that is the forward Laplacian (value,
Jacobian rows, one summed row: never a Hessian); for divergence the forward Jacobian. Where
it pays, the series' highest order is collapsed too, one row per first-order partner.
The row algebra lives in ``diagramc.runtime.operator_tables``.
"""
from __future__ import annotations

import functools
import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..combinatorics import multi_index as mi
from ..errors import DiagramcError
from ..network import Architecture, params_from_torch
from ..runtime.operator_tables import Tables, biharmonic_rows, named_operator
from . import cache
from .codegen import module_context, render_template
from .printing import activation_code
from .spec import MAX_ORDER, ModuleSpec, check_request

NAMED = ("laplacian", "biharmonic", "divergence")
# Terms a compiled operator may have: tables are built at import from them.
MAX_TERMS = 100_000


@dataclass(frozen=True)
class OperatorSpec(ModuleSpec):
    """Everything an operator module depends on, and nothing else."""

    architecture: Architecture
    backend: str
    name: "str | None"  # a named operator, or None for a mapping
    dims: "tuple[int, ...] | None"
    terms: tuple  # OPERATOR: ((alpha, c), ...) or (((output, alpha), c), ...), canonical order of alpha
    mixing: bool

    @classmethod
    def create(cls, architecture, operator, backend="numpy", dims=None) -> "OperatorSpec":
        check_request(architecture, backend)
        name, dims, terms, mixing = parse_operator(operator, architecture, dims)
        return cls(architecture, backend, name, dims, terms, mixing)

    @property
    def order(self) -> int:
        return max(sum(_alpha(key)) for key, _ in self.terms)

    def description(self) -> dict:
        described = ({"operator": self.name, "dims": None if self.dims is None else list(self.dims)} if self.name
                     else {"operator": [[_key_json(k), c] for k, c in self.terms], "mixing": self.mixing})
        return {"kind": "operator", "backend": self.backend, "layer_sizes": list(self.architecture.layer_sizes),
                "activation": self.architecture.activation.name, **described}

    def module_name(self) -> str:
        act = self.file_label(self.architecture.activation)
        return (f"operator_{self.name or 'custom'}_{act}_d{self.architecture.inputs}"
                f"_h{self.architecture.hidden_layers}_{self.backend}_{self.digest[:12]}")

    def command(self, out_dir: str) -> str:
        """The exact command line that regenerates this module into out_dir."""
        words = ["diagramc", "compile"]
        if self.name:
            words += ["--operator", self.name]
            if self.dims is not None:
                words += ["--dims", ",".join(map(str, self.dims))]
        else:
            for key, c in self.terms:
                alpha = ",".join(map(str, _alpha(key)))
                words += ["--operator-term", (f"{key[0]}:" if self.mixing else "") + f"{alpha}:{c!r}"]
        words += ["--layer-sizes", ",".join(map(str, self.architecture.layer_sizes)),
                  "--activation", self.architecture.activation.name, "--backend", self.backend, "-o", out_dir]
        return shlex.join(words)


def _alpha(key):
    """The multi-index of a term's key, alpha or (output, alpha)."""
    return key[1] if _is_pair(key) else key


def _key_json(key):
    return [key[0], list(key[1])] if _is_pair(key) else list(key)


def _is_pair(key) -> bool:
    return len(key) == 2 and isinstance(key[1], tuple)


def parse_operator(operator, arch: Architecture, dims=None):
    """(name or None, dims, OPERATOR in canonical order, mixing) of a user's operator."""
    d, m = arch.inputs, arch.outputs
    if isinstance(operator, str):
        if operator not in NAMED:
            raise DiagramcError(f"unknown operator {operator!r}: expected one of {', '.join(NAMED)}, or a mapping "
                                "{multi_index: coefficient}")
        if operator == "divergence":
            if dims is not None:
                raise DiagramcError("dims restricts laplacian and biharmonic; divergence takes every input")
            if m != d:
                raise DiagramcError(f"divergence needs OUTPUTS == INPUTS; the network has {d} inputs and {m} outputs")
        elif dims is not None:
            dims = _dims(dims, d)
        return operator, dims, named_operator(operator, d, m, dims), operator == "divergence"
    if dims is not None:
        raise DiagramcError("dims restricts laplacian and biharmonic; write a mapping's terms for the inputs you mean")
    try:
        items = list(operator.items())
    except AttributeError:
        raise DiagramcError(f"operator must be a name ({', '.join(NAMED)}) or a mapping {{multi_index: coefficient}}, "
                            f"got {type(operator).__name__}") from None
    if not items:
        raise DiagramcError("the operator mapping is empty: give at least one {multi_index: coefficient}")
    if len(items) > MAX_TERMS:
        raise DiagramcError(f"the operator has {len(items)} terms, above the limit of {MAX_TERMS}")
    pairs = [_is_output_key(k) for k, _ in items]
    if any(pairs) and not all(pairs):
        raise DiagramcError("the operator mixes keys (output, multi_index) with plain multi-indices; use one kind")
    mixing = all(pairs)
    summed = {}
    for key, c in items:
        try:
            c = float(c)
        except (TypeError, ValueError):
            raise DiagramcError(f"coefficient {c!r} of term {key!r} is not a real number") from None
        if not math.isfinite(c):
            raise DiagramcError(f"coefficient {c!r} of term {key!r} is not finite")
        if mixing:
            output, alpha = key
            if isinstance(output, bool) or not isinstance(output, int) or not 0 <= output < m:
                raise DiagramcError(f"output {output!r} of term {key!r} is out of range: the network has {m} outputs "
                                    f"(0..{m - 1})")
            key = (output, mi.validate(alpha, d))
        else:
            key = mi.validate(key, d)
        if sum(_alpha(key)) > MAX_ORDER:
            raise DiagramcError(f"term {key!r} has order {sum(_alpha(key))}, above the supported maximum {MAX_ORDER}")
        summed[key] = summed.get(key, 0.0) + c
    terms = tuple(sorted(summed.items(), key=lambda kc: (mi.canonical_key(_alpha(kc[0])),
                                                          kc[0][0] if mixing else 0)))
    return None, None, terms, mixing


def _is_output_key(key) -> bool:
    """(output, multi_index): an int and a sequence; a multi-index is a sequence of ints."""
    return (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], int)
            and isinstance(key[1], (tuple, list)))


def _dims(dims, d: int) -> tuple[int, ...]:
    try:
        dims = tuple(int(i) for i in dims)
    except (TypeError, ValueError):
        raise DiagramcError(f"dims {dims!r} must be a sequence of input indices") from None
    if not dims or len(set(dims)) != len(dims) or any(not 0 <= i < d for i in dims):
        raise DiagramcError(f"dims {dims!r} must be distinct input indices in 0..{d - 1}")
    return tuple(sorted(dims))


@dataclass(frozen=True)
class OperatorPlan:
    """What the kernel does per layer and why: the cheaper of the candidates by multiply-adds per point."""

    kind: str  # "forward-laplacian" (series of first order only) or "taylor-series"
    collapse: bool  # the top summed into one row per group before it is stored
    twice: bool  # the series' highest order collapsed too, one row per (group, first-order entry)
    rows: int  # rows per layer: value, series, collapsed
    series: tuple  # carried multi-indices (the value first)
    top: tuple  # collapsed multi-indices
    groups: int
    multiply_adds: int  # per point
    candidates: tuple  # (name, rows, multiply-adds per point)
    why: str
    kernel: str = "layers"  # "layers", or fused numba loops: "fused-laplacian", "fused-biharmonic"
    kernel_rows: int = 0  # rows per layer of the fused loops (the biharmonic's: 2 + 2m + m(m+1)/2 for m inputs)

    def describe(self) -> str:
        how = ("top and next-to-top collapsed" if self.twice else "top collapsed" if self.collapse
               else "all partials of the closure")
        lines = [f"plan: {self.kind} ({how}), "
                 f"{self.rows} rows per layer, {self.multiply_adds:,} multiply-adds per point",
                 f"  series: {len(self.series)} multi-indices up to order {max(map(sum, self.series))}",
                 f"  collapsed: {len(self.top)} multi-indices into {self.groups} row(s)"]
        lines += [f"  candidate {name}: {rows} rows, {cost:,} multiply-adds per point"
                  for name, rows, cost in self.candidates]
        lines.append(f"  why: {self.why}")
        if self.kernel != "layers":
            lines.append(f"  kernel: {self.kernel}, {self.kernel_rows} rows per layer: {KERNELS[self.kernel]}")
        return "\n".join(lines)

    def to_json(self, compact: bool = False) -> dict:
        """The plan as JSON; compact: counts instead of the multi-index lists."""
        listed = (lambda alphas: len(alphas)) if compact else (lambda alphas: [list(a) for a in alphas])
        return {"kind": self.kind, "collapse": self.collapse, "twice": self.twice, "rows": self.rows,
                "series": listed(self.series), "top": listed(self.top),
                "groups": self.groups, "multiply_adds": self.multiply_adds,
                "candidates": [{"name": n, "rows": r, "multiply_adds": c} for n, r, c in self.candidates],
                "why": self.why, "kernel": self.kernel, "kernel_rows": self.kernel_rows}


def make_plan(spec: OperatorSpec) -> OperatorPlan:
    """Count both candidates' multiply-adds per point and take the cheaper (collapsed on a tie)."""
    arch = spec.architecture
    options = []
    for rank, (collapse, twice, label) in enumerate(((True, True, "collapsed top and next-to-top"),
                                                     (True, False, "collapsed top"),
                                                     (False, False, "all partials of the closure"))):
        tables = Tables(spec.terms, arch.inputs, arch.outputs, spec.mixing, collapse, twice)
        if twice and not tables.high:
            continue  # nothing below the top can be collapsed: the same as "collapsed top"
        options.append((tables.multiply_adds(arch.layer_sizes), rank, label, tables))
    cost, _, label, tables = min(options, key=lambda o: o[:2])
    others = ", ".join(f"{o[0]:,} for {o[2]}" for o in options if o[3] is not tables)
    kind = "forward-laplacian" if tables.first_order_only else "taylor-series"
    why = (f"{label}: {cost:,} multiply-adds per point against {others}"
           + (" (first-order series: sigma' times every row plus one quadratic form per collapsed row)"
              if kind == "forward-laplacian" else " (truncated products on the series, top contracted as it is made)"))
    kernel, kernel_rows = _kernel(spec, tables)
    return OperatorPlan(kind=kind, collapse=label != "all partials of the closure", twice=bool(tables.high),
                        rows=tables.rows,
                        series=tuple(tables.series), top=tuple(tables.top), groups=len(tables.groups),
                        multiply_adds=cost, candidates=tuple((o[2], o[3].rows, o[0]) for o in options), why=why,
                        kernel=kernel, kernel_rows=kernel_rows)


KERNELS = {
    "fused-laplacian": "each layer's rows one numba pass and one BLAS product, the backward written out "
                       "(torch: one autograd node), on CPU float32/float64 with numba; the layers elsewhere",
    "fused-biharmonic": "value, first and second derivatives and the collapsed third and fourth, each layer one "
                        "numba pass and one BLAS product, the backward written out (torch: one autograd node), on "
                        "CPU float32/float64 with numba; the layers elsewhere",
}


def _kernel(spec: OperatorSpec, tables: Tables) -> tuple:
    """(kind, rows per layer) of how the module runs the plan: fused numba loops where they fit the
    operator (in torch one autograd node), else ("layers", 0), layer by layer."""
    from ..runtime.operator_torch import fused

    if fused(tables, spec.mixing, spec.architecture.hidden_layers):
        return "fused-laplacian", tables.rows
    form = biharmonic_form(spec) if spec.architecture.hidden_layers else None
    if form is not None:
        return "fused-biharmonic", biharmonic_rows(len(form[0]))
    return "layers", 0


def _operator_label(spec: OperatorSpec) -> str:
    if spec.name:
        return spec.name + ("" if spec.dims is None else f" over inputs {', '.join(map(str, spec.dims))}")
    terms = [f"{c:+g} D^{_alpha(k)}" + (f" f_{k[0]}" if spec.mixing else "") for k, c in spec.terms[:6]]
    return " ".join(terms) + (" ..." if len(spec.terms) > 6 else "")


@functools.lru_cache(maxsize=64)
def _activation_code(activation, order: int, backend: str):
    """sigma and sigma^(k)/k! printed once per process for each (activation, order, backend)."""
    return activation_code(activation, order, backend)


# math's functions that NumPy evaluates vectorized over a whole array (numba calls them one number at a time)
_VECTORIZED = {"exp": "exp", "expm1": "expm1", "log": "log", "log1p": "log1p", "tanh": "tanh", "sin": "sin",
               "cos": "cos", "sqrt": "sqrt", "sinh": "sinh", "cosh": "cosh", "atan": "arctan"}
_CALL = re.compile(r"^(\w+) = math\.(\w+)\((.*)\)$")


def split_activation(code) -> tuple:
    """The scalar activation's lines `name = math.f(argument)` whose argument reads z alone and whose
    f NumPy has, as (name, NumPy function, argument) to evaluate as arrays first; and the other lines."""
    calls, lines = [], []
    for line in code.lines:
        match = _CALL.match(line)
        if match and match.group(2) in _VECTORIZED and _whole_argument(match.group(3)) and \
                set(re.findall(r"[A-Za-z_]\w*", match.group(3))) <= {"z", "abs", "min", "max"}:
            calls.append((match.group(1), _VECTORIZED[match.group(2)], match.group(3)))
        else:
            lines.append(line)
    return tuple(calls), tuple(lines)


def _whole_argument(text: str) -> bool:
    """Whether text's parentheses balance without closing below its start (one call's argument)."""
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


def biharmonic_form(spec: OperatorSpec):
    """(dims, c) where the operator is c sum_(i, k in dims) d_i^2 d_k^2 on every output (the fused
    biharmonic kernel serves it), else None."""
    if spec.mixing:
        return None
    d = spec.architecture.inputs
    fourth = {alpha.index(4): c for alpha, c in spec.terms if 4 in alpha}
    if not fourth or len(set(fourth.values())) != 1:
        return None
    dims, c = tuple(sorted(fourth)), next(iter(fourth.values()))
    expected = tuple((alpha, c * w) for alpha, w in named_operator("biharmonic", d, spec.architecture.outputs, dims))
    return (dims, c) if spec.terms == expected else None


@functools.lru_cache(maxsize=64)
def render(spec: OperatorSpec, out_dir: str) -> str:
    """The module's source: header, constants, the activation printed by sympy, straight-line layers."""
    arch = spec.architecture
    plan = make_plan(spec)
    act = arch.activation
    fused = plan.kernel == "fused-laplacian"
    biharmonic = biharmonic_form(spec) if plan.kernel == "fused-biharmonic" else None
    looped = plan.kernel != "layers"  # a numba loop of the activation, for CPU tensors
    scalar = _activation_code(act, spec.order + 1, "scalar") if looped else None
    return render_template(
        "operator_kernel.py.jinja",
        **module_context(spec, out_dir),
        # the written-out backward of the fused forward Laplacian needs one vertex more
        activation=_activation_code(act, spec.order + (1 if fused else 0), spec.backend),
        vertex_order=spec.order + (1 if fused else 0),
        # the same as scalar code, for the fused kernels' numba loop (their backward needs one vertex more)
        scalar_activation=scalar,
        vectorized_calls=split_activation(scalar) if looped else ((), ()),
        loop_weights=spec.order + 1,
        fused=fused,
        biharmonic=biharmonic,
        order=spec.order,
        operator_name=spec.name,
        dims=spec.dims,
        operator_literal=None if spec.name else repr(spec.terms),
        operator_label=_operator_label(spec),
        mixing=spec.mixing,
        plan=plan,
        plan_json=json.dumps(plan.to_json(compact=True), separators=(",", ":")),
        activation_op="collapsed_activation" if plan.kind == "forward-laplacian" else "series_activation",
    )


def compile_operator(arch: Architecture, operator, backend: str = "numpy", dims=None,
                     out_dir: "str | Path | None" = None) -> ModuleType:
    """Compile ``sum c_alpha D^alpha f`` for an architecture; return the imported module (``apply``)."""
    spec = OperatorSpec.create(arch, operator, backend, dims)
    folder = Path(out_dir) if out_dir is not None else cache.default_cache_dir()
    return cache.load(folder / f"{spec.module_name()}.py", render(spec, str(folder)))


_REQUESTS: dict = {}  # (architecture, operator, dims) -> module: no file I/O or hashing on a repeat call


def operator(model, x, operator, dims=None):
    """One call: the operator applied to a torch MLP at x (compiled once per process and request).

    Differentiable with respect to the model's parameters and x; (batch, outputs), or
    (batch, 1) for an operator that mixes outputs.
    """
    import torch

    key = (_model_key(model), _freeze(operator), None if dims is None else tuple(dims))
    module = _REQUESTS.get(key)
    if module is None:
        module = compile_operator(Architecture.from_torch(model), operator, "torch", dims)
        _REQUESTS[key] = module
    params = params_from_torch(model)
    x = torch.as_tensor(x, dtype=params[0].dtype, device=params[0].device)
    return module.apply(params, x[None] if x.ndim == 1 else x)


def _model_key(model):
    """The architecture a model stands for, without building sympy objects: sizes and activation modules."""
    return tuple((type(layer).__name__, getattr(layer, "in_features", None), getattr(layer, "out_features", None))
                 for layer in model.children())


def _freeze(operator):
    if isinstance(operator, str):
        return operator
    try:
        return tuple(sorted(((_freeze_key(k), float(c)) for k, c in operator.items()), key=repr))
    except (AttributeError, TypeError, ValueError):
        raise DiagramcError(f"operator must be a name ({', '.join(NAMED)}) or a mapping {{multi_index: coefficient}}, "
                            f"got {type(operator).__name__}") from None


def _freeze_key(key):
    if isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], (tuple, list)):
        return (key[0], tuple(key[1]))
    return tuple(key)
