"""User-facing errors: one line, what was wrong and what is expected."""


class DiagramcError(ValueError):
    """Bad input from a user. The command line prints it as one line, exit status 2."""
