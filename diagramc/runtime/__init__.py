"""diagramc's runtime: the operations generated modules call.

Ordinary code with its own tests. It imports only numpy, numba, SciPy's BLAS and torch,
never sympy, jinja2 or the rest of diagramc, so a generated module loads fast and its
behaviour can be read here as code. A generated module checks ``VERSION`` at import.
"""
VERSION = 1
