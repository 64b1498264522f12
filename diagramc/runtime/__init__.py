"""diagramc's runtime: the operations generated modules call.

Ordinary code with its own tests. It imports only numpy, numba, SciPy's BLAS and torch,
never sympy, jinja2 or the rest of diagramc, so a generated module loads fast and its
behaviour can be read here as code. A generated module checks ``VERSION`` at import.
"""
VERSION = 1


def check_version(expected: int, regenerate: str) -> None:
    """A generated module's check that it runs on the runtime it was written for."""
    if expected != VERSION:
        raise ImportError(
            f"this module was generated for diagramc runtime {expected}, but the installed one is {VERSION}; "
            f"regenerate it: {regenerate}"
        )
