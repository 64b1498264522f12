"""diagramc's runtime: the operations generated modules call.

Ordinary code with its own tests. It imports only numpy, numba, SciPy's BLAS and torch,
never sympy, jinja2 or the rest of diagramc, so a generated module loads fast and its
behaviour can be read here as code. A generated module checks ``VERSION`` at import.
"""
import hashlib

VERSION = 2
# A generated module's last line: this, then the sha256 of every line above it.
SEAL = "# sha256 of all lines above: "


def check_version(expected: int, regenerate: str) -> None:
    """A generated module's check that it runs on the runtime it was written for."""
    if expected != VERSION:
        raise ImportError(
            f"this module was generated for diagramc runtime {expected}, but the installed one is {VERSION}; "
            f"regenerate it: {regenerate}"
        )


def check_module(path, expected: int, regenerate: str) -> None:
    """A generated module's checks at import: its file is as diagramc wrote it (an edited or
    truncated copy refuses to run), and the runtime is the version it was written for."""
    if path is not None:
        try:
            with open(path, "rb") as fh:
                lines = fh.read().split(b"\n")
        except OSError:
            lines = None  # not loaded from a file: nothing to compare
        if lines is not None:
            body = b"\n".join(lines[:-2]) + b"\n"
            if len(lines) < 2 or lines[-2] != SEAL.encode() + hashlib.sha256(body).hexdigest().encode():
                raise ImportError(f"{path} was edited or truncated after diagramc wrote it; regenerate it: {regenerate}")
    check_version(expected, regenerate)
