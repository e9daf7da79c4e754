"""glibc malloc tuning, so that models cycled through the cache do not inflate resident memory."""

from __future__ import annotations

import ctypes
import functools
import threading
import time

_M_ARENA_MAX = -8  # glibc's mallopt parameter number


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc's malloc controls, or None where there are none (musl, macOS): nothing to tune.

    Looked up among the symbols this process has loaded (``dlopen(NULL)``, Python links the C
    library), not with ``ctypes.util.find_library``, which runs ``ldconfig`` in a child process:
    15 ms of every cold start."""
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = 1) -> None:
    """Cap glibc's per-thread malloc arenas so freed model memory is reused, not hoarded.

    Server threads each get an arena by default; a model evicted on one thread leaves its
    pages in that arena while the next load, on another thread, grows a different one. One
    arena, not two: ``malloc_trim`` gives back the free top of the main arena's heap but never
    another arena's, where a forward's freed activations stayed (three Lite models settled
    91-107 MB over the baseline with two arenas, 91-92 with one; CPU per image the same).
    """
    if _libc() is not None:
        _libc().mallopt(_M_ARENA_MAX, arenas)


def release_free_memory() -> None:
    """Give the pages of freed allocations back to the system (after a model is evicted)."""
    if _libc() is not None:
        _libc().malloc_trim(0)


_last_release = 0.0
_release_lock = threading.Lock()


def release_free_memory_now_and_then(every_seconds: float = 10.0) -> None:
    """:func:`release_free_memory`, at most once every ``every_seconds`` (it takes about a millisecond).

    Called after each request: the decode buffers and activations of a burst of large
    images are freed to the heap, which glibc would otherwise keep for good.
    """
    global _last_release
    now = time.monotonic()
    if now - _last_release < every_seconds or not _release_lock.acquire(blocking=False):
        return
    try:
        _last_release = now
        release_free_memory()
    finally:
        _release_lock.release()
