"""Jet kernels (contract section 8): the Taylor coefficients of f(x(t)) along any curve x(t).

Compile time decides what depends only on the request: how the activation's series travels
along the curve (by its own equation where it has one, else the vertex sum), and the sympy-printed
code of sigma and the vertex weights the runtime needs at coefficient 0. The generated module
is small: that code, its constants, shape checks, and a call into ``diagramc.runtime``.
"""
from __future__ import annotations

import functools
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import sympy as sp

from . import cache, codegen
from ..activations import Activation, x as X
from ..network import Architecture
from .printing import activation_code
from .spec import ModuleSpec, check_request


def series_rule(activation: Activation) -> tuple[str, tuple[float, ...]]:
    """How the activation's series follows a curve (runtime.jet_series): by the first of its
    equations that holds, else by the vertex sum."""
    quadratic = activation.quadratic_equation()
    if quadratic is not None:
        return "quadratic", quadratic  # tanh, sigmoid
    first = activation.derivative(1)
    for aux in activation.auxiliaries:
        # softplus: sigma' is an auxiliary s with s' quadratic in s alone (its complement c = 1 - s)
        derivative = aux.derivative.subs(_complements(activation))
        if first == aux.symbol and not (derivative.free_symbols - {aux.symbol}) and derivative.is_polynomial(aux.symbol):
            coefficients = sp.Poly(derivative, aux.symbol).all_coeffs()[::-1]
            if len(coefficients) <= 3:
                return "integral", tuple(float(c) for c in coefficients) + (0.0,) * (3 - len(coefficients))
    if activation.auxiliaries and sp.expand(activation.derivative(2) + activation.value) == 0:
        return "harmonic", ()  # sin
    expr = activation.expr
    if activation.is_custom and expr.has(sp.exp) and sp.simplify(sp.diff(expr, X) - expr) == 0:
        return "quadratic", (0.0, 1.0, 0.0)  # a custom exp(x): sigma' = sigma
    return "vertex", ()


def _complements(activation: Activation) -> dict:
    """{c: 1 - s} for the auxiliaries c = Sigmoid(-a) beside s = Sigmoid(a), which the vertex
    weights keep apart for accuracy and the series' equation may join."""
    from ..activations import Sigmoid

    by_definition = {aux.definition: aux.symbol for aux in activation.auxiliaries}
    return {c: 1 - by_definition[Sigmoid(-d.args[0])] for d, c in by_definition.items()
            if isinstance(d, Sigmoid) and Sigmoid(-d.args[0]) in by_definition and d.args[0].could_extract_minus_sign()}


@dataclass(frozen=True)
class JetSpec(ModuleSpec):
    """Everything a jet module depends on, and nothing else."""

    architecture: Architecture
    order: int
    backend: str

    @classmethod
    def create(cls, architecture: Architecture, order: int, backend: str = "numpy") -> "JetSpec":
        check_request(architecture, backend, order)
        return cls(architecture, order, backend)

    def description(self) -> dict:
        return {"kernel": "jet", "backend": self.backend, "layer_sizes": list(self.architecture.layer_sizes),
                "activation": self.architecture.activation.name, "order": self.order}

    def module_name(self) -> str:
        act = self.file_label(self.architecture.activation)
        return (
            f"jet_{act}_d{self.architecture.inputs}_h{self.architecture.hidden_layers}"
            f"_n{self.order}_{self.backend}_{self.digest[:12]}"
        )

    def command(self, out_dir: str) -> str:
        """The exact command that regenerates this module into out_dir."""
        text = json.dumps  # double quotes: the shell's single quotes then need no escapes
        call = (
            f"import diagramc; diagramc.compile_jet(diagramc.Architecture({self.architecture.layer_sizes!r}, "
            f"{text(self.architecture.activation.name)}), {self.order}, {text(self.backend)}, out_dir={text(out_dir)})"
        )
        return shlex.join(["python", "-c", call])


@functools.lru_cache(maxsize=128)
def render(spec: JetSpec, out_dir: str) -> str:
    """The module's source (deterministic)."""
    arch = spec.architecture
    act = arch.activation
    rule = series_rule(act)
    # the equation rules read sigma and sigma' at coefficient 0; the vertex sum every weight
    code = activation_code(act, spec.order if rule[0] == "vertex" else 1, spec.backend)
    return codegen.render_template(
        "jet_kernel.py.jinja",
        **codegen.module_context(spec, out_dir),
        order=spec.order,
        rule=rule,
        activation=code,
    )


def compile_jet(
    arch: Architecture, order: int, backend: str = "numpy", out_dir: "str | Path | None" = None
) -> ModuleType:
    """Compile the jet kernel of an architecture up to ``order``; return the imported module.

    ``mod.jet(params, x)`` maps x (batch, INPUTS, ORDER + 1), the Taylor coefficients of a curve,
    to those of f along it, (batch, OUTPUTS, ORDER + 1).
    """
    spec = JetSpec.create(arch, order, backend)
    folder = Path(out_dir) if out_dir is not None else cache.default_cache_dir()
    path = folder / f"{spec.module_name()}.py"
    return cache.load(path, render(spec, str(folder)))
