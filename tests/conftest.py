import os

import pytest


@pytest.fixture
def kernel_dir(tmp_path_factory):
    """One folder of compiled kernels shared by a test module (compiling is cached by hash)."""
    return tmp_path_factory.getbasetemp() / "kernels"


@pytest.fixture(autouse=True, scope="session")
def _cache_in_a_temporary_folder(tmp_path_factory):
    """Every kernel a test compiles without out_dir goes to a temporary folder, never the user's
    cache (subprocesses inherit it through the environment)."""
    folder = tmp_path_factory.mktemp("diagramc-cache")
    before = os.environ.get("DIAGRAMC_CACHE")
    os.environ["DIAGRAMC_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("DIAGRAMC_CACHE", None)
    else:
        os.environ["DIAGRAMC_CACHE"] = before
