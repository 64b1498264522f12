"""Multi-indices in the contract's canonical order (CONTRACT.md section 2).

Every packed array of derivatives uses this order: by total order, then in the order
``itertools.combinations_with_replacement(range(d), k)`` yields index tuples.
"""
from __future__ import annotations

import itertools
import math
from typing import Iterable, Sequence

from ..errors import DiagramcError

MultiIndex = tuple[int, ...]


def exponents(indices: Sequence[int], d: int) -> MultiIndex:
    """The exponent vector of an index tuple such as (0, 0, 2) -> (2, 0, 1)."""
    alpha = [0] * d
    for i in indices:
        alpha[i] += 1
    return tuple(alpha)


def indices_of(alpha: Sequence[int]) -> tuple[int, ...]:
    """The sorted index tuple of an exponent vector: (2, 0, 1) -> (0, 0, 2)."""
    return tuple(i for i, a in enumerate(alpha) for _ in range(a))


def of_order(d: int, k: int) -> list[MultiIndex]:
    """All multi-indices of order k in d variables, canonical order."""
    return [exponents(c, d) for c in itertools.combinations_with_replacement(range(d), k)]


def up_to_order(d: int, n: int, start: int = 0) -> list[MultiIndex]:
    """All multi-indices of orders start..n, canonical order."""
    return [alpha for k in range(start, n + 1) for alpha in of_order(d, k)]


def canonical_key(alpha: Sequence[int]) -> tuple:
    """Sort key that reproduces the canonical order."""
    return (sum(alpha), indices_of(alpha))


def sort_canonical(alphas: Iterable[Sequence[int]]) -> list[MultiIndex]:
    """Distinct multi-indices, sorted canonically."""
    return sorted({tuple(a) for a in alphas}, key=canonical_key)


def count_of_order(d: int, k: int) -> int:
    """C(d+k-1, k): the number of distinct partials of order k."""
    return math.comb(d + k - 1, k)


def factorial(alpha: Sequence[int]) -> int:
    """alpha! = prod(alpha_i!)."""
    return math.prod(math.factorial(a) for a in alpha)


def parse(text: str, d: int | None = None) -> MultiIndex:
    """Parse '2,0,1' into (2, 0, 1); one-line DiagramcError on anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p.isdigit() for p in parts):
        raise DiagramcError(
            f"malformed multi-index {text!r}: expected comma-separated non-negative integers such as 2,0,1"
        )
    alpha = tuple(int(p) for p in parts)
    if d is not None and len(alpha) != d:
        raise DiagramcError(f"multi-index {text!r} has {len(alpha)} entries; expected {d} (one per input)")
    return alpha


def validate(alpha: Sequence[int], d: int | None = None) -> MultiIndex:
    """Check a multi-index given through the Python API."""
    try:
        alpha = tuple(int(a) for a in alpha)
    except (TypeError, ValueError):
        raise DiagramcError(f"multi-index {alpha!r} must be a sequence of non-negative integers") from None
    if not alpha or any(a < 0 for a in alpha):
        raise DiagramcError(f"multi-index {alpha!r} must be a non-empty sequence of non-negative integers")
    if d is not None and len(alpha) != d:
        raise DiagramcError(f"multi-index {alpha!r} has {len(alpha)} entries; expected {d} (one per input)")
    return alpha
