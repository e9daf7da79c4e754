"""glibc malloc tuning: models cycled through the cache do not inflate resident memory, and
requests under load reuse the heap's free pages instead of faulting fresh ones in. And the
collector's freeze before gunicorn forks the worker."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import os
import threading
import time
from collections.abc import Iterator

from imgclassify.inflight import InFlight

# glibc's mallopt parameter numbers
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks up to this size come from the heap, where a freed one is reused: glibc's own ceiling for
# the threshold it otherwise raises by itself as mapped blocks are freed (fixing one fixes both).
MMAP_THRESHOLD_BYTES = 32 * 2**20
# How much free memory the top of the heap may hold before free() gives it back by itself.
TRIM_THRESHOLD_BYTES = 64 * 2**20


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


def tune_malloc(arenas: int = 1) -> None:
    """One malloc arena, a fixed mmap threshold of 32 MB and a trim threshold of 64 MB.

    One arena: server threads each get an arena by default, and ``malloc_trim`` gives back the
    free top of the main arena's heap but never another arena's, where a forward's freed
    activations stayed (three Lite models settled 91-107 MB over the baseline with two arenas,
    91-92 with one; CPU per image the same).

    The thresholds: with glibc's dynamic ones, four concurrent forwards freeing their
    activations left more free memory at the heap's top than twice the largest block freed so
    far, and ``free`` gave it back to the system, only for the next requests to fault the same
    pages in again. Memory is given back by :func:`release_free_memory` instead, when a model
    is evicted or built and when requests stop overlapping (:func:`request_in_flight`).
    """
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, arenas)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)


@functools.lru_cache(maxsize=1)
def freeze_collected_objects_at_fork() -> None:
    """Before this process forks, move every object the cyclic collector tracks out of its reach
    (``gc.freeze``), as Python's documentation advises for a parent that forks without exec.

    gunicorn forks the worker from the parent that imported the app: about 68 000 objects with
    the storage client. The worker's first full collection traverses each of them, writing to
    its header, so the kernel copies every page they sit on: 21.2-21.3 MB of the parent's pages
    became the worker's own, and that collection held the GIL for 48-111 ms, stalling every
    request in flight (frozen: 0.9-1.0 MB and 1 ms). The start-up leaves almost no cyclic garbage
    to freeze with them (a full collection found 10 objects). Registered once; a process that
    never forks is not affected."""
    os.register_at_fork(before=gc.freeze)


def release_free_memory() -> None:
    """Give the pages of freed allocations back to the system (after a model is evicted)."""
    if _libc() is not None:
        _libc().malloc_trim(0)


# The requests in flight in this process, and when freed memory was last given back.
REQUESTS = InFlight()
_released = threading.Lock()
_released_at = -float("inf")


@contextlib.contextmanager
def request_in_flight(release_every_seconds: float = 10.0, quiet_seconds: float = 1.0) -> Iterator[None]:
    """Count a request while the block runs. When it ends with none in flight and none has
    overlapped another for ``quiet_seconds``, it gives the pages freed to the heap back
    (:func:`release_free_memory`, about a millisecond), at most once every
    ``release_every_seconds``: after a burst of large images the heap would otherwise keep their
    buffers for good. Under load the next forwards reuse those pages; giving them back then
    made requests at 8 clients fault them in again (61 minor faults and 0.2 ms more kernel time
    per request, on average)."""
    REQUESTS.enter()
    try:
        yield
    finally:
        if REQUESTS.leave(quiet_for=quiet_seconds) and _release_due(release_every_seconds):
            release_free_memory()


def _release_due(every_seconds: float) -> bool:
    """Whether ``every_seconds`` have passed since the last release; if so, this is the last one."""
    global _released_at
    now = time.monotonic()
    with _released:
        if now - _released_at < every_seconds:
            return False
        _released_at = now
        return True
