"""Loader and cache stage: write a module atomically, trust it only when intact, import it by path.

A file is named after the hash of its inputs (and the diagramc version, which the hash
covers). It is written to a temporary file in the same folder and renamed, so readers see
either nothing or the whole file, and several processes compiling the same kernel at once
all succeed. A cached file is reused only when its bytes equal what the compiler would
write now; anything else (edited, truncated, older template) is rewritten.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from ..errors import DiagramcError
from ..runtime.tables import stored_tables_path


def default_cache_dir() -> Path:
    """Per-user cache folder: $DIAGRAMC_CACHE, else $XDG_CACHE_HOME/diagramc, else ~/.cache/diagramc."""
    if os.environ.get("DIAGRAMC_CACHE"):
        return Path(os.environ["DIAGRAMC_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "diagramc"


def is_intact(path: Path, source: str) -> bool:
    """True when the file at path holds exactly source."""
    try:
        return path.read_bytes() == source.encode()
    except OSError:
        return False


def write_atomic(path: Path, source: "str | bytes") -> None:
    """Write source to path through a temporary file and a rename: never a half-written file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DiagramcError(f"cannot write to folder {str(path.parent)!r}: {exc.strerror}") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a module is an ordinary file
        with os.fdopen(fd, "wb") as fh:
            fh.write(source.encode() if isinstance(source, str) else source)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise DiagramcError(f"cannot write {str(path)!r}: {exc.strerror}") from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def store(path: Path, source: str) -> Path:
    """Make path hold source, rewriting it unless it already does."""
    if not is_intact(path, source):
        write_atomic(path, source)
    return path


_LOADED: dict[tuple[str, str], ModuleType] = {}


def load(path: Path, source: str) -> ModuleType:
    """The module at path holding exactly source: reused from this process when the file is
    still intact, else (re)written atomically and imported; its large index tables are then
    stored beside it (store_tables) for later imports."""
    key = (str(path.resolve()), hashlib.sha256(source.encode()).hexdigest())
    if key in _LOADED and is_intact(path, source):
        return _LOADED[key]
    store(path, source)
    module = import_path(path)
    store_tables(module, path)
    _LOADED[key] = module
    return module


def store_tables(module: ModuleType, path: Path) -> None:
    """Writes (atomically) the index tables the module's kernel built at import, where they are
    large, to the file its runtime loads them from at a later import (built once per module)."""
    kernel = getattr(module, "_KERNEL", None)
    data = kernel.stored_tables() if hasattr(kernel, "stored_tables") else None
    if data is not None:
        write_atomic(Path(stored_tables_path(str(path))), data)


def import_path(path: Path) -> ModuleType:
    """Import a generated module by its path (no sys.path changes, no stale import caches)."""
    name = f"diagramc_generated.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DiagramcError(f"cannot import generated module {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module
