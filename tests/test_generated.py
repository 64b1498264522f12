"""The committed kernels in generated/ are exactly what the compiler writes today."""
import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import diagramc
from diagramc.compiler.cache import import_path
from diagramc.compiler import compile_source
from diagramc.compiler.spec import KernelSpec

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


def _imports(text):
    """The modules a source text imports, by name."""
    names = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
    return names


def test_generated_modules_are_small_import_the_runtime_alone_and_agree():
    """The paper's order-3 modules: a few hundred lines, importing numpy or torch and
    diagramc.runtime only; both backends agree at a non-zero point (the kernels are checked
    against torch.func in test_kernels.py; these files are those kernels)."""
    mods = {s.backend: import_path(GENERATED / f"{s.module_name()}.py") for s in SPECS if s.order == 3}
    for backend, mod in mods.items():
        text = Path(mod.__file__).read_text()
        assert {n.split(".")[0] for n in _imports(text)} <= {"numpy", "torch", "diagramc", "math", "hashlib"}
        assert {n for n in _imports(text) if n.startswith("diagramc")} <= {
            "diagramc", "diagramc.runtime", f"diagramc.runtime.taylor_{backend}", "diagramc.runtime.numpy_loops"}
        assert "from diagramc.runtime import check_module" in text
        assert text.count("\n") < 400
        assert mod.INPUTS == 64 and mod.ORDER == 3 and len(mod.MULTI_INDICES) == 1 + 64 + 2080 + 45760
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen, dtype=torch.float64) / 8 for s in PAPER.param_shapes()]
    x = torch.randn(1, 64, generator=gen, dtype=torch.float64) / 4
    a = mods["torch"].derivatives(params, x).numpy()
    b = mods["numpy"].derivatives([p.numpy() for p in params], x.numpy())
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
