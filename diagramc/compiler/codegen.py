"""Code generation stage: a KernelSpec -> the source text of one NumPy or PyTorch module.

Templates live in the top-level ``templates/`` folder (shipped as ``diagramc.templates``).
The rendered text depends only on the spec and the output folder named in its header,
so the same request always gives the same bytes.
"""
from __future__ import annotations

import functools
import hashlib
from importlib import resources

import jinja2

from .. import __version__
from .plan import make_plan
from .printing import activation_code
from ..runtime import SEAL as RUNTIME_SEAL
from ..runtime import VERSION as RUNTIME_VERSION
from .spec import KernelSpec

TEMPLATES = {"numpy": "numpy_kernel.py.jinja", "torch": "torch_kernel.py.jinja"}
BACKEND_LABELS = {"numpy": "NumPy", "torch": "PyTorch"}


def _tuple_literal(values) -> str:
    """Python literal of a tuple, one-element tuples included."""
    values = tuple(values)
    return repr(values)


def _dict_literal(values: dict) -> str:
    """Python literal of a dict, one key a line."""
    return "{\n" + "".join(f"    {key!r}: {value!r},\n" for key, value in values.items()) + "}"


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("diagramc.templates"))),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["tuple_literal"] = _tuple_literal
    env.filters["pyrepr"] = repr
    env.filters["dict_literal"] = _dict_literal
    return env


SEAL = RUNTIME_SEAL  # the module's last line, which diagramc.runtime.check_module reads


def render_template(name: str, **context) -> str:
    """Render one template and seal it: the last line is the sha256 of all lines above,
    which the module checks when imported (an edited or truncated copy refuses to run)."""
    text = environment().get_template(name).render(**{"runtime_version": RUNTIME_VERSION, **context})
    return text + SEAL + hashlib.sha256(text.encode()).hexdigest() + "\n"


def module_context(spec, out_dir: str) -> dict:
    """What every generated module's header and constants take from a spec with an
    architecture and a backend: version, command, hash, sizes, activation."""
    arch, act = spec.architecture, spec.architecture.activation
    return {
        "version": __version__, "command": spec.command(out_dir), "digest": spec.digest,
        "inputs_json": spec.inputs_json(), "backend": spec.backend, "backend_label": BACKEND_LABELS[spec.backend],
        "layer_sizes": arch.layer_sizes, "layers": arch.hidden_layers + 1, "inputs": arch.inputs,
        "outputs": arch.outputs, "hidden_layers": arch.hidden_layers, "activation_name": act.name,
        "activation_label": act.name if not act.note else f"{act.name}: {act.note}",
    }


def _orders_label(spec: KernelSpec) -> str:
    if spec.full:
        return f"0..{spec.order}"
    orders = sorted({sum(a) for a in spec.multi_indices})
    return f"{', '.join(map(str, orders))} ({len(spec.multi_indices)} selected multi-indices)"


def render(spec: KernelSpec, out_dir: str) -> str:
    """The module's source: header (version, input hash, regenerate command), plan, activation code."""
    plan = make_plan(spec)
    act = spec.architecture.activation
    code = activation_code(act, spec.order, spec.backend)
    # NumPy kernels: the same functions as scalar code, for one fused (numba) loop over z
    scalar = activation_code(act, spec.order, "scalar") if spec.backend == "numpy" else None
    return render_template(
        TEMPLATES[spec.backend],
        **module_context(spec, out_dir),
        order=spec.order,
        orders_label=_orders_label(spec),
        plan=plan.runtime_plan(),
        activation=code,
        scalar_activation=scalar,
        by_points=plan.by_points,
        by_directions=plan.by_directions,
        weight_count=sum(s is not None for s in plan.weight_slots),
        weight_slots=plan.weight_slots,
        # torch on a GPU: every vertex weight as a polynomial in the auxiliary u, one matrix product
        vertex_polynomials=(_vertex_polynomials(act, spec.order, code)
                            if spec.backend == "torch" and not plan.by_directions else None),
        **({} if scalar is None else _stacked_weights(scalar.factors)),
    )


def _vertex_polynomials(act, order: int, code) -> dict | None:
    """The auxiliary's line (u = ...) and, per non-zero vertex weight sigma^(k)/k!, its slot
    and coefficients of u^0..u^degree (zero-padded), where the activation allows it."""
    polynomials = act.vertex_polynomials(max(order, 1))
    if polynomials is None:
        return None
    degree = max(len(c) for c in polynomials if c is not None) - 1
    return {
        "aux_line": code.lines[0],  # the auxiliary first (printing.activation_code)
        "aux_name": act.auxiliaries[0].symbol.name,
        "degree": degree,
        "coefficients": tuple(tuple(c) + (0.0,) * (degree + 1 - len(c)) for c in polynomials if c is not None),
        "slots": _slots(polynomials),
    }


def _stacked_weights(factors) -> dict:
    """How the fused activation loop stacks the non-zero vertex weights in one array:
    (slot, expression) per non-zero weight, the names it returns ("weights[slot]", or
    "None" where a weight vanishes), and per weight its slot (None where it vanishes)."""
    nonzero = [f for f in factors if f is not None]
    slots = iter(range(len(nonzero)))
    return {"fused_weights": tuple(enumerate(nonzero)), "fused_weight_names": _slot_names(factors, "weights"),
            "fused_weight_slots": tuple(None if f is None else next(slots) for f in factors)}


def _slots(items) -> tuple:
    """Per item, its slot counting the items that are not None, or None."""
    slots = iter(range(len(items)))
    return tuple(None if item is None else next(slots) for item in items)


def _slot_names(items, array: str) -> tuple[str, ...]:
    """Per item, "array[slot]" with slots counting the items that are not None, or "None"."""
    slots = iter(range(len(items)))
    return tuple("None" if item is None else f"{array}[{next(slots)}]" for item in items)
