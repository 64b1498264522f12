import pytest


@pytest.fixture
def kernel_dir(tmp_path_factory):
    """One folder of compiled kernels shared by a test module (compiling is cached by hash)."""
    return tmp_path_factory.getbasetemp() / "kernels"
