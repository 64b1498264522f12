"""Tests of the diagram pictures (diagramc.combinatorics.draw) and their layout."""
from __future__ import annotations

import pytest

from diagramc.combinatorics import diagrams
from diagramc.combinatorics.draw import draw
from diagramc.errors import DiagramcError

MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}


@pytest.mark.parametrize("ext", sorted(MAGIC))
def test_draw_writes_the_format_of_the_extension(tmp_path, ext):
    path = tmp_path / f"diagrams.{ext}"
    assert draw(diagrams((2, 1), 2), path) == str(path)
    assert path.read_bytes().startswith(MAGIC[ext])


def test_draw_order_four_three_layers_and_trivial_orders(tmp_path):
    draw(diagrams((0, 0, 4), 3), tmp_path / "big.png", dpi=60)
    draw(diagrams((0, 1), 3) + diagrams((0, 0), 3), tmp_path / "low.png")
    assert (tmp_path / "big.png").stat().st_size > 5_000


def test_draw_errors(tmp_path):
    with pytest.raises(DiagramcError, match="png"):
        draw(diagrams((2,), 1), tmp_path / "x.jpg")
    with pytest.raises(DiagramcError, match="no diagrams"):
        draw([], tmp_path / "x.png")
    with pytest.raises(DiagramcError, match="hidden layers"):
        draw(diagrams((2,), 1) + diagrams((2,), 2), tmp_path / "x.png")
