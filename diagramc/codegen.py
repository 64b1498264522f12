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

from . import __version__
from .printing import activation_code
from .spec import KernelSpec

TEMPLATES = {"numpy": "numpy_kernel.py.jinja", "torch": "torch_kernel.py.jinja"}
BACKEND_LABELS = {"numpy": "NumPy", "torch": "PyTorch"}


def _tuple_literal(values) -> str:
    """Python literal of a tuple, one-element tuples included."""
    values = tuple(values)
    return repr(values)


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
    return env


SEAL = "# sha256 of all lines above: "


def render_template(name: str, **context) -> str:
    """Render one template and seal it: the last line is the sha256 of all lines above,
    which the module checks when imported (an edited or truncated copy refuses to run)."""
    text = environment().get_template(name).render(seal=SEAL, **context)
    return text + SEAL + hashlib.sha256(text.encode()).hexdigest() + "\n"


def _orders_label(spec: KernelSpec) -> str:
    if spec.full:
        return f"0..{spec.order}"
    orders = sorted({sum(a) for a in spec.multi_indices})
    return f"{', '.join(map(str, orders))} ({len(spec.multi_indices)} selected multi-indices)"


def render(spec: KernelSpec, out_dir: str) -> str:
    """The module's source: header (version, input hash, regenerate command), tables, kernel."""
    act = spec.architecture.activation
    code = activation_code(act, spec.order, spec.backend)
    # NumPy kernels: the same functions as scalar code, for one fused (numba) loop over z
    scalar = activation_code(act, spec.order, "scalar") if spec.backend == "numpy" else None
    vertex_orders = tuple(k for k in range(2, spec.order + 1) if code.factors[k - 1] is not None)
    arch = spec.architecture
    return render_template(
        TEMPLATES[spec.backend],
        version=__version__,
        command=spec.command(out_dir),
        digest=spec.digest,
        inputs_json=spec.inputs_json(),
        layer_sizes=arch.layer_sizes,
        layers=arch.hidden_layers + 1,
        inputs=arch.inputs,
        outputs=arch.outputs,
        hidden_layers=arch.hidden_layers,
        activation_name=act.name,
        activation_label=act.name if not act.note else f"{act.name}: {act.note}",
        backend_label=BACKEND_LABELS[spec.backend],
        order=spec.order,
        orders_label=_orders_label(spec),
        full=spec.full,
        index_tuples=_tuple_literal(
            tuple(i for i, a in enumerate(alpha) for _ in range(a)) for alpha in spec.multi_indices
        ),
        vertex_orders=vertex_orders,
        activation=code,
        scalar_activation=scalar,
        # the series through tanh or sigmoid by its own equation (NumPy: numba's loops; torch: a CPU),
        # from order 3 (at order 2 the series is first order: the equation has nothing to carry)
        equation=act.quadratic_equation() if spec.order >= 3 else None,
        # order 2 by each point's Jacobians and Gram matrices: NumPy point by point in one numba
        # loop calling BLAS, torch as batched matrix products
        by_points=spec.order == 2 and 2 in vertex_orders,
        # torch on a GPU: every vertex weight as a polynomial in the auxiliary u, one matrix product
        vertex_polynomials=_vertex_polynomials(act, spec.order, code) if spec.backend == "torch" else None,
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
        "names": _slot_names(polynomials, "F"),
    }


def _stacked_weights(factors) -> dict:
    """How the fused activation loop stacks the non-zero vertex weights in one array:
    (slot, expression) per non-zero weight, the names it returns ("weights[slot]", or
    "None" where a weight vanishes), and per weight its slot (None where it vanishes)."""
    nonzero = [f for f in factors if f is not None]
    slots = iter(range(len(nonzero)))
    return {"fused_weights": tuple(enumerate(nonzero)), "fused_weight_names": _slot_names(factors, "weights"),
            "fused_weight_slots": tuple(None if f is None else next(slots) for f in factors)}


def _slot_names(items, array: str) -> tuple[str, ...]:
    """Per item, "array[slot]" with slots counting the items that are not None, or "None"."""
    slots = iter(range(len(items)))
    return tuple("None" if item is None else f"{array}[{next(slots)}]" for item in items)
