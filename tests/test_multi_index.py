import itertools

import pytest

from diagramc import DiagramcError
from diagramc.combinatorics import multi_index as mi


def test_canonical_order_d2():
    assert mi.up_to_order(2, 2) == [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]


@pytest.mark.parametrize("d,k", [(1, 4), (3, 3), (5, 2), (4, 0)])
def test_sort_canonical_reproduces_combinations_order(d, k):
    want = [mi.exponents(c, d) for c in itertools.combinations_with_replacement(range(d), k)]
    assert mi.sort_canonical(reversed(want)) == want
    assert len(want) == mi.count_of_order(d, k)


def test_kernel_series_is_the_downward_closure_in_canonical_order(tmp_path):
    """A kernel for a subset carries exactly the non-zero beta <= alpha, canonically ordered."""
    import diagramc

    mod = diagramc.compile(diagramc.Architecture((3, 2, 1), "tanh"), 3, "numpy", [(2, 0, 1)], out_dir=tmp_path)
    closure = [mi.exponents(m, 3) for m in mod._KERNEL._SERIES]
    assert closure == [(1, 0, 0), (0, 0, 1), (2, 0, 0), (1, 0, 1), (2, 0, 1)]


@pytest.mark.parametrize("text", ["", "1,,2", "a,b", "-1,2", "1.5", "1 2"])
def test_parse_errors_are_one_line(text):
    with pytest.raises(DiagramcError) as info:
        mi.parse(text)
    assert "\n" not in str(info.value)


def test_factorial_no_overflow():
    assert mi.factorial((20, 20)) == 2432902008176640000**2
