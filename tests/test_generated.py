"""The committed kernels in generated/ are exactly what the compiler writes today."""
from pathlib import Path

import numpy as np
import pytest
import torch

import diagramc
from diagramc.cache import import_path
from diagramc.compiler import compile_source
from diagramc.spec import KernelSpec

GENERATED = Path(__file__).resolve().parent.parent / "generated"
PAPER = diagramc.Architecture((64, 64, 64, 64, 1), "tanh")
SPECS = [KernelSpec.create(PAPER, order, backend) for order in (2, 3) for backend in ("numpy", "torch")]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.module_name())
def test_regenerating_gives_identical_bytes(spec):
    path = GENERATED / f"{spec.module_name()}.py"
    assert path.is_file(), f"missing {path.name}: run {spec.command('generated')}"
    assert path.read_text() == compile_source(spec, "generated"), f"stale {path.name}: run {spec.command('generated')}"


def test_no_stale_files():
    expected = {f"{s.module_name()}.py" for s in SPECS} | {"README.md"}
    assert {p.name for p in GENERATED.iterdir() if not p.name.startswith((".", "__"))} == expected


def test_generated_modules_import_nothing_of_diagramc_and_agree():
    """Both backends of the paper's order-3 kernel agree at a non-zero point (the kernels are
    checked against torch.func in test_kernels.py; these files are those kernels)."""
    mods = {s.backend: import_path(GENERATED / f"{s.module_name()}.py") for s in SPECS if s.order == 3}
    for mod in mods.values():
        text = Path(mod.__file__).read_text()
        assert "import diagramc" not in text and "from diagramc" not in text
        assert len(text) < 64 * 1024  # kilobytes, not megabytes (the contract); 62 kB at order 3 now
        assert mod.INPUTS == 64 and mod.ORDER == 3 and len(mod.MULTI_INDICES) == 1 + 64 + 2080 + 45760
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) / 8 for s in PAPER.param_shapes()]
    x = torch.randn(1, 64, generator=gen, dtype=torch.float64) / 4
    a = mods["torch"].derivatives(params, x).numpy()
    b = mods["numpy"].derivatives([p.numpy() for p in params], x.numpy())
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
