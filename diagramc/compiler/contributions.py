"""Diagram by diagram: which paths through the network make up a Taylor coefficient.

``D^alpha f`` is a sum over Feynman diagrams (CONTRACT.md section 3), each weighted by its
multiplicity. :func:`contributions` returns the terms of that sum one by one, through a
generated NumPy module (the per-diagram kernel) that

* runs the forward pass once and evaluates the vertex functions ``sigma^(k)(z^(l))`` from
  the activation's sympy derivatives (printed by :func:`diagramc.printing.activation_code`),
* computes every propagator ``P^(m<-l)`` that some diagram needs once, as matrix products,
* contracts each diagram from its input lines up, the sum over a vertex's neuron index an
  einsum, computing a subtree shared by several diagrams only once.

The module depends on the activation, the depth and the multi-index only (not on the
widths); it is rendered from ``templates/contributions_kernel.py.jinja``, headed like the
Taylor kernels (version, input hash, the command that regenerates it), imports nothing of
diagramc, and is cached by the hash of its inputs like :func:`diagramc.compile`.

This is the interpretability view: the ranked table of ``diagramc contributions`` shows
which diagrams (paths of derivatives through the layers) make up a coefficient.
"""
from __future__ import annotations

import functools
import itertools
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

import numpy as np

from .. import __version__
from ..activations import Activation, get_activation
from ..combinatorics import Diagram, Input, Node, Vertex, check_layers, count, diagrams
from ..combinatorics import multi_index as mi
from ..errors import DiagramcError
from ..network import Architecture
from . import cache
from .spec import MAX_ORDER, ModuleSpec

__all__ = ["contributions", "compile_contributions", "ContributionSpec", "ranked", "format_table", "MAX_DIAGRAMS"]

TEMPLATE = "contributions_kernel.py.jinja"
# A per-diagram kernel is one block of code per diagram: refuse rather than write megabytes.
MAX_DIAGRAMS = 5000


# ----------------------------------------------------------------------------- analysis


@dataclass(frozen=True)
class ContributionSpec(ModuleSpec):
    """What a per-diagram kernel depends on: the activation, the depth and the multi-index."""

    activation: Activation
    multi_index: tuple[int, ...]
    hidden_layers: int

    @classmethod
    def create(cls, activation: "str | Activation", multi_index: Sequence[int], hidden_layers: int):
        activation = get_activation(activation)
        alpha = mi.validate(multi_index)
        hidden_layers = check_layers(hidden_layers)
        if sum(alpha) > MAX_ORDER:
            raise DiagramcError(f"multi-index {alpha} has order {sum(alpha)}, above the supported maximum {MAX_ORDER}")
        distinct, _ = count(alpha, hidden_layers)
        if distinct > MAX_DIAGRAMS:
            raise DiagramcError(
                f"D^{alpha} f has {distinct} diagrams with {hidden_layers} hidden layers; a per-diagram kernel "
                f"is limited to {MAX_DIAGRAMS} (use diagramc compile for the value of the sum)"
            )
        return cls(activation, alpha, hidden_layers)

    @property
    def order(self) -> int:
        return sum(self.multi_index)

    def description(self) -> dict:
        return {"kernel": "contributions", "activation": self.activation.name,
                "hidden_layers": self.hidden_layers, "multi_index": list(self.multi_index)}

    def module_name(self) -> str:
        act = self.file_label(self.activation)
        return (f"contributions_{act}_d{len(self.multi_index)}_h{self.hidden_layers}_n{self.order}"
                f"_{self.digest[:12]}")

    def command(self, out_dir: str) -> str:
        """The exact command line that regenerates the module into out_dir."""
        return shlex.join([
            "diagramc", "contributions",
            "--multi-index", ",".join(map(str, self.multi_index)),
            "--hidden-layers", str(self.hidden_layers),
            "--activation", self.activation.name,
            "-o", out_dir,
        ])


# ----------------------------------------------------------------------------- kernel plan


class _Plan:
    """Straight-line NumPy statements contracting the diagrams, subtrees shared between them.

    Names in the generated code: ``W{m}``, ``s_{l}[k]`` (``sigma^(k)(z^(l))``), ``P_{m}_{l}``
    (``P^(m<-l)``, batched), ``v{i}`` (a vertex: sigma^(k) times its incoming lines,
    ``(batch, n_l)``) and ``v{i}_to_{m}`` (that vertex carried up to layer ``m``).
    """

    def __init__(self, hidden_layers: int, vanishing: set[int]):
        self.L = hidden_layers + 1
        self.vanishing = vanishing
        self.needed: set[tuple[int, int]] = set()
        self.names: dict[tuple, str] = {}
        self.vertex_ids = itertools.count()

    def propagator(self, m: int, l: int) -> str:
        if m == l + 1:
            return f"W{m}"
        self.needed.add((m, l))
        return f"P_{m}_{l}"

    def carry(self, node: Node, m: int, steps: list) -> str:
        """Expression of the line from ``node`` into layer ``m``."""
        if isinstance(node, Input):
            P = self.propagator(m, 0)
            return f"{P}[:, {node.variable}]" if m == 1 else f"{P}[:, :, {node.variable}]"
        v = self.vertex(node, steps)
        P = self.propagator(m, node.layer)
        if m == node.layer + 1:
            return f"{v} @ {P}.T"
        return f'np.einsum("bji,bi->bj", {P}, {v})'

    def carried(self, node: Node, m: int, steps: list) -> str:
        """Like :meth:`carry`, a vertex's line named and computed once."""
        if isinstance(node, Input):
            return self.carry(node, m, steps)
        key = ("line", node.key, m)
        if key not in self.names:
            expression = self.carry(node, m, steps)
            name = f"{self.vertex(node, steps)}_to_{m}"
            steps.append((name, expression))
            self.names[key] = name
        return self.names[key]

    def vertex(self, node: Vertex, steps: list) -> str:
        key = ("vertex", node.key)
        if key not in self.names:
            factors = [f"s_{node.layer}[{node.k}]"]
            for child, group in itertools.groupby(node.children):
                n = len(list(group))
                line = self.carried(child, node.layer, steps)
                factors.append(line if n == 1 else f"{line}**{n}")
            name = f"v{next(self.vertex_ids)}"
            steps.append((name, " * ".join(factors)))
            self.names[key] = name
        return self.names[key]

    def diagram(self, d: Diagram) -> dict:
        vanishes = sorted({v.k for v in d.vertices()} & self.vanishing)
        steps: list = []
        if vanishes:
            value = None
        elif d.root is None:
            value = "f"
        else:
            value = self.carry(d.root, self.L, steps)
        return {
            "label": d.short(),
            "tree": json.dumps(d.to_json()["root"], separators=(",", ":")),
            "multiplicity": d.multiplicity,
            "vanishes": vanishes[0] if vanishes else 0,
            "steps": steps,
            "value": value,
        }

    def propagators(self) -> list[tuple[str, str]]:
        """``P^(m<-l) = W^(m) diag(sigma'(z^(m-1))) P^(m-1<-l)``, every one needed, in dependency order."""
        closure = {(k, l) for m, l in self.needed for k in range(l + 2, m + 1)}
        out = []
        for m, l in sorted(closure, key=lambda p: (p[1], p[0])):
            below = f"W{m - 1}" if m - 1 == l + 1 else f"P_{m - 1}_{l}"
            out.append((f"P_{m}_{l}", f"(W{m} * s_{m - 1}[1][:, None, :]) @ {below}"))
        return out


def _vertex_functions(code, order: int) -> list[tuple[int, str]]:
    """``(k, source of sigma^(k))`` for k = 1..order from the printed weights sigma^(k)/k!."""
    out = []
    for k in range(1, order + 1):
        weight = code.factors[k - 1]
        if weight is None:
            out.append((k, "np.zeros_like(z)"))
        elif k == 1:
            out.append((k, weight))
        else:
            out.append((k, f"{math.factorial(k)} * ({weight})"))
    return out


@functools.lru_cache(maxsize=128)  # enumeration and sympy: once per process, not once per call
def render(spec: ContributionSpec, out_dir: str) -> str:
    """The per-diagram module's source (deterministic)."""
    from .codegen import render_template
    from .printing import activation_code

    act = spec.activation
    order = max(spec.order, 1)
    code = activation_code(act, order, "numpy")
    vanishing = {k for k in range(2, order + 1) if code.factors[k - 1] is None}
    found = diagrams(spec.multi_index, spec.hidden_layers)
    plan = _Plan(spec.hidden_layers, vanishing)
    planned = [plan.diagram(d) for d in found]
    layers = spec.hidden_layers + 1
    return render_template(
        TEMPLATE,
        version=__version__,
        command=spec.command(out_dir),
        digest=spec.digest,
        inputs_json=spec.inputs_json(),
        inputs=len(spec.multi_index),
        hidden_layers=spec.hidden_layers,
        layers=layers,
        activation_name=act.name,
        activation_label=act.name if not act.note else f"{act.name}: {act.note}",
        multi_index=spec.multi_index,
        order=spec.order,
        diagrams=planned,
        multiplicities=tuple(d.multiplicity for d in found),
        activation=code,
        vertex_functions=_vertex_functions(code, order),
        unpack=", ".join(f"W{l}, b{l}" for l in range(1, layers + 1)),
        propagators=plan.propagators(),
    )


def compile_contributions(activation: "str | Activation", multi_index: Sequence[int], hidden_layers: int,
                          out_dir: "str | Path | None" = None) -> ModuleType:
    """Generate (or reuse from the cache) the per-diagram kernel of ``D^alpha f``; return the module.

    ``out_dir`` defaults to the per-user cache (:func:`diagramc.cache.default_cache_dir`).
    """
    spec = ContributionSpec.create(activation, multi_index, hidden_layers)
    folder = Path(out_dir) if out_dir is not None else cache.default_cache_dir()
    path = folder / f"{spec.module_name()}.py"
    return cache.load(path, render(spec, str(folder)))


# ----------------------------------------------------------------------------- the API


def _is_torch(a: Any) -> bool:
    return type(a).__module__.startswith("torch") and hasattr(a, "detach")


def _numpy(a: Any) -> np.ndarray:
    return a.detach().cpu().numpy() if _is_torch(a) else np.asarray(a)


def contributions(arch: Architecture, params: Sequence[Any], x: Any, multi_index: Sequence[int],
                  out_dir: "str | Path | None" = None):
    """Each diagram's value times its multiplicity: ``(batch, m, len(diagrams(alpha, H)))``.

    In the order of ``diagramc.diagrams(multi_index, arch.hidden_layers)``; the last axis
    sums to ``D^alpha f(x)``. ``params = [W1, b1, ..., WL, bL]`` and ``x`` of shape
    ``(batch, d)`` (or ``(d,)``, giving ``(m, len(diagrams))``) are NumPy arrays or torch
    tensors; the result is of the same kind as ``x``, in its dtype (and, for torch, on its
    device). It is computed by the generated NumPy kernel, so it carries no autograd graph.
    """
    if not isinstance(arch, Architecture):
        raise DiagramcError(f"expected a diagramc.Architecture, got {type(arch).__name__}")
    alpha = mi.validate(multi_index, arch.inputs)
    shapes = arch.param_shapes()
    params = list(params)
    if len(params) != len(shapes):
        raise DiagramcError(
            f"params has {len(params)} arrays; expected {len(shapes)}: [W1, b1, ..., W{len(shapes) // 2}, "
            f"b{len(shapes) // 2}] for layer sizes {arch.layer_sizes}"
        )
    arrays = [_numpy(p) for p in params]
    for i, (p, shape) in enumerate(zip(arrays, shapes)):
        if p.shape != shape:
            name = f"{'W' if i % 2 == 0 else 'b'}{i // 2 + 1}"
            raise DiagramcError(f"params[{i}] ({name}) has shape {p.shape}; expected {shape} "
                                f"for layer sizes {arch.layer_sizes}")
    xa = _numpy(x)
    single = xa.ndim == 1
    if single:
        xa = xa[None]
    if xa.ndim != 2 or xa.shape[1] != arch.inputs:
        raise DiagramcError(f"x has shape {tuple(_numpy(x).shape)}; expected (batch, {arch.inputs}) or ({arch.inputs},)")
    if not np.issubdtype(xa.dtype, np.floating):
        raise DiagramcError(f"x has dtype {xa.dtype}; expected a floating-point dtype (float32 or float64)")
    module = compile_contributions(arch.activation, alpha, arch.hidden_layers, out_dir)
    out = module.contributions(arrays, xa)
    if single:
        out = out[0]
    if _is_torch(x):
        import torch

        return torch.from_numpy(np.ascontiguousarray(out)).to(device=x.device)
    return out


# ----------------------------------------------------------------------------- the ranked table


def ranked(found: Sequence[Diagram], contribution: Any, top: int | None = None) -> list[dict]:
    """Rows for one output at one point, largest ``|contribution|`` first.

    ``contribution`` is the ``(len(found),)`` slice of :func:`contributions`. Each row:
    ``index`` (position in ``found``), ``diagram`` (one-line form), ``tree`` (JSON form),
    ``multiplicity``, ``value`` (bare), ``contribution`` (multiplicity times value) and
    ``share`` (of the total; ``None`` when the total is zero).
    """
    c = np.asarray(contribution, dtype=float)
    total = float(c.sum())
    rows = []
    for i, (d, ci) in enumerate(zip(found, c)):
        rows.append({
            "index": i,
            "diagram": d.short(),
            "tree": d.to_json()["root"],
            "multiplicity": d.multiplicity,
            "value": float(ci) / d.multiplicity,
            "contribution": float(ci),
            "share": (float(ci) / total) if total != 0 else None,
        })
    rows.sort(key=lambda r: (-abs(r["contribution"]), r["index"]))
    return rows[:top] if top is not None else rows


def format_table(rows: Sequence[dict], total: float) -> str:
    """The rows of :func:`ranked` as an aligned text table, with the total last.

    ``#`` numbers the diagrams from 1, as ``diagramc diagrams`` lists them (``index + 1``).
    """
    width = max([len("diagram")] + [len(r["diagram"]) for r in rows])
    head = f"{'rank':>4}  {'#':>4}  {'diagram':<{width}}  {'mult':>5}  {'value':>13}  {'contribution':>13}  {'share':>8}"
    lines = [head, "-" * len(head)]
    for rank, r in enumerate(rows, 1):
        share = f"{100 * r['share']:7.2f}%" if r["share"] is not None else f"{'-':>8}"
        lines.append(f"{rank:>4}  {r['index'] + 1:>4}  {r['diagram']:<{width}}  {r['multiplicity']:>5}  "
                     f"{r['value']:>13.6g}  {r['contribution']:>13.6g}  {share}")
    lines.append("-" * len(head))
    lines.append(f"{'':>4}  {'':>4}  {'sum (D^alpha f)':<{width}}  {'':>5}  {'':>13}  {total:>13.6g}  "
                 f"{'100.00%' if total != 0 else '-':>8}")
    return "\n".join(lines)
