"""diagramc: a symbolic diagram compiler for the Taylor expansion of neural networks.

Pipeline: combinatorics (diagrams) -> sympy (vertex functions, expressions) ->
kernel plan (index tables of the factored layer recursion) -> jinja2 code generation
-> cached, imported NumPy / PyTorch module.
"""
__version__ = "0.1.0"

from .errors import DiagramcError  # noqa: E402
from .network import Architecture, params_from_torch, load_model  # noqa: E402
from .compiler import compile, taylor  # noqa: E402
from .activations import get_activation, ACTIVATIONS  # noqa: E402
from .combinatorics import diagrams, count, Diagram  # noqa: E402
from .attribution import contributions  # noqa: E402
from .graphs import cuda_graphed  # noqa: E402
from .operators import compile_operator, operator  # noqa: E402

__all__ = [
    "Architecture",
    "ACTIVATIONS",
    "compile",
    "compile_operator",
    "contributions",
    "count",
    "cuda_graphed",
    "Diagram",
    "DiagramcError",
    "diagrams",
    "get_activation",
    "load_model",
    "operator",
    "params_from_torch",
    "taylor",
]
