"""diagramc: a symbolic diagram compiler for the Taylor expansion of neural networks.

Pipeline: combinatorics (diagrams) -> sympy (vertex functions, expressions) -> plan
(index tables and strategy, decided at compile time) -> jinja2 code generation -> cached,
imported NumPy / PyTorch module calling diagramc.runtime.

The public names load on first use, so a generated module, which imports diagramc.runtime
alone, does not pay for sympy, networkx or jinja2.
"""
import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "DiagramcError": "errors",
    "Architecture": "network",
    "params_from_torch": "network",
    "load_model": "network",
    "compile": "compiler",
    "taylor": "compiler",
    "get_activation": "activations",
    "ACTIVATIONS": "activations",
    "diagrams": "combinatorics",
    "count": "combinatorics",
    "Diagram": "combinatorics",
    "contributions": "compiler.contributions",
    "cuda_graphed": "cuda_graphs",
    "compile_jet": "compiler.jets",
    "ode_derivatives": "applications.ode",
    "taylor_regularizer": "applications.ode",
    "TaylorRegularizedODE": "applications.ode",
    "compile_operator": "compiler.operators",
    "operator": "compiler.operators",
    "set_num_threads": "runtime.threads",
    "get_num_threads": "runtime.threads",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diagramc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
