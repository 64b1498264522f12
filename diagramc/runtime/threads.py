"""The threads a NumPy kernel call may use, and a call's parts run on them.

A call splits its batch into parts, one thread each, with BLAS held to one thread inside the
parts (the parts are the parallelism; BLAS's own threads on top would oversubscribe the
cores). The count follows, in this order: set_num_threads, DIAGRAMC_NUM_THREADS,
NUMBA_NUM_THREADS, OMP_NUM_THREADS, and the cores this process may run on.
"""
import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

_ENVIRONMENT = ("DIAGRAMC_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS")
_state = {"threads": None, "pool": None, "pool_size": 0, "blas": None}
_lock = threading.Lock()


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the system has one)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def set_num_threads(count: "int | None") -> None:
    """Threads for every later NumPy kernel call (None: back to the environment's and the cores')."""
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"set_num_threads: expected a positive int or None, got {count!r}")
    _state["threads"] = count


def get_num_threads() -> int:
    """Threads a NumPy kernel call may use now."""
    if _state["threads"] is not None:
        return _state["threads"]
    for name in _ENVIRONMENT:
        text = os.environ.get(name, "").strip()
        if text.isdigit() and int(text) >= 1:
            return min(int(text), available_cores())
    return available_cores()


def _pool(size):
    """The process's worker threads, at least `size` of them (made at first use, grown when asked)."""
    with _lock:
        if _state["pool"] is None or _state["pool_size"] < size:
            if _state["pool"] is not None:
                _state["pool"].shutdown(wait=False)
            _state["pool"] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="diagramc")
            _state["pool_size"] = size
        return _state["pool"]


def _forget_pool_in_child():
    """A forked child has the pool's object but none of its threads: it makes its own."""
    _state["pool"], _state["pool_size"], _state["blas"] = None, 0, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _blas_libraries():
    """(get, set) of the thread count of each BLAS library loaded (NumPy's and SciPy's), found
    once; none without threadpoolctl."""
    if _state["blas"] is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            return ()
        libraries = tuple(_count_calls(lib) for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas")
        if "scipy.linalg.cython_blas" not in sys.modules:  # SciPy's BLAS (the numba loops') not loaded yet: look again later
            return libraries
        _state["blas"] = libraries
    return _state["blas"]


def _count_calls(library):
    """A threadpoolctl controller's get and set of its thread count: OpenBLAS's own functions on
    pthreads (threadpoolctl's path costs tens of microseconds a call, more when cold), else the
    controller's methods."""
    if library.internal_api == "openblas" and getattr(library, "threading_layer", None) == "pthreads":
        try:
            prefix, suffix = library._find_affixes()
            return tuple(getattr(library.dynlib, f"{prefix}openblas_{name}_num_threads{suffix}") for name in ("get", "set"))
        except Exception:  # threadpoolctl's internals moved: its public methods
            pass
    return library.get_num_threads, library.set_num_threads


class blas_threads:
    """A context in which BLAS runs on `count` threads, its settings restored after (only
    the libraries whose count differs are touched: a set costs microseconds). A class: a
    compiled ODE call enters two, and contextlib's generator machinery cost more than the calls."""

    __slots__ = ("count", "changed")

    def __init__(self, count):
        self.count, self.changed = count, ()

    def __enter__(self):
        changed = []
        for get, set_ in _blas_libraries():
            before = get()
            if before != self.count:
                set_(self.count)
                changed.append((set_, before))
        self.changed = changed
        return self

    def __exit__(self, *exc):
        for set_, before in self.changed:
            set_(before)
        return False


def one_blas_thread():
    """A context in which BLAS runs on the calling thread alone."""
    return blas_threads(1)


def run_parts(function, parts, threads):
    """[function(part) for part in parts], the parts spread over `threads` threads (this one
    included), BLAS on one thread each."""
    parts = list(parts)
    if threads <= 1 or len(parts) <= 1:
        return [function(part) for part in parts]
    with one_blas_thread():
        pool = _pool(threads - 1)
        futures = [pool.submit(function, part) for part in parts[1:]]
        first = function(parts[0])
        return [first] + [future.result() for future in futures]


def run_shared(function, parts, threads):
    """[function(part) for part in parts], in order, the parts taken one at a time by `threads`
    threads (this one included) as each comes free, BLAS on one thread each. A thread that
    starts late (an idle virtual CPU can take milliseconds to wake) takes fewer parts, and
    the call does not wait for one that has none: it returns once every part is done."""
    parts = list(parts)
    if threads <= 1 or len(parts) <= 1:
        return [function(part) for part in parts]
    results, errors = [None] * len(parts), []
    taken, done = [0], [0]
    lock, finished = threading.Lock(), threading.Event()
    here = _current_cpu()

    def take():
        while True:
            with lock:
                i = taken[0]
                taken[0] += 1
            if i >= len(parts):
                return
            try:
                results[i] = function(parts[i])
            except BaseException as error:  # raised again in the caller
                errors.append(error)
            with lock:
                done[0] += 1
                if done[0] == len(parts):
                    finished.set()

    def elsewhere():  # a worker the scheduler woke on this thread's core moves off it for the call
        moved = _leave_cpu(here)
        try:
            take()
        finally:
            if moved is not None:
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(0, moved)

    with one_blas_thread():
        pool = _pool(threads - 1)
        for _ in range(threads - 1):
            pool.submit(elsewhere)
        take()
        finished.wait()
    if errors:
        raise errors[0]
    return results


def libc_function(name):
    """libc's ``int name(void)`` (sched_getcpu, gettid) as a ctypes function, or None where there is none."""
    try:
        import ctypes

        function = getattr(ctypes.CDLL(None), name)
        function.restype, function.argtypes = ctypes.c_int, []
        return function
    except (OSError, AttributeError, TypeError):  # no such libc call (macOS, old glibc), no CDLL(None) (Windows)
        return None


_SCHED_GETCPU = libc_function("sched_getcpu")


def _current_cpu():
    """The core this thread runs on now, or None where the system does not say."""
    return _SCHED_GETCPU() if _SCHED_GETCPU is not None else None


def _leave_cpu(cpu):
    """Moves this thread off `cpu` if it runs there and may run elsewhere: returns the affinity
    mask to restore, else None. Linux may wake a worker on the core of the thread that woke
    it and leave it there for the whole call while another core idles (seen on a 2-core
    virtual machine: a split call as slow as one thread)."""
    if cpu is None or _current_cpu() != cpu or not hasattr(os, "sched_setaffinity"):
        return None
    try:
        allowed = os.sched_getaffinity(0)
        if len(allowed - {cpu}) == 0:
            return None
        os.sched_setaffinity(0, allowed - {cpu})
    except OSError:  # a cpuset that refuses the change: the worker stays where it is
        return None
    return allowed
