"""What the service's malloc tuning (imgclassify/memory.py) keeps for reuse and gives back to the system."""

from __future__ import annotations

import os
import sys

import pytest

from imgclassify import memory
from imgclassify.inflight import InFlight
from tests.support.processes import fresh_python

glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or memory._libc() is None,
                           reason="glibc's malloc on Linux")

# Run in a fresh process (arenas and thresholds are fixed once memory is in use) with the
# service's tuning (argument "service") or one mallopt(parameter, value) instead of it.
PROCESS = """
import ctypes, os, sys, threading
from devstack.processes import rss_kib
from imgclassify import memory

if sys.argv[1] == "service":
    memory.tune_malloc()
else:
    memory._libc().mallopt(int(sys.argv[1]), int(sys.argv[2]))
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
MB = 2**20

def resident_anonymous_mb():
    return rss_kib(os.getpid(), field="RssAnon") / 1024

def used(count, size):
    blocks = [libc.malloc(size) for _ in range(count)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    return blocks

"""

# A freed 24 MB block raises glibc's dynamic mmap threshold, as a freed model download does, so a
# request thread's 16 MB block (a forward's activations) comes from an arena's heap; once freed,
# it sits at that heap's top. Prints what the release leaves resident.
FREED_ON_A_THREAD = PROCESS + """
libc.free(*used(1, 24 * MB))
memory.release_free_memory()
before = resident_anonymous_mb()
thread = threading.Thread(target=lambda: libc.free(*used(1, 16 * MB)))
thread.start()
thread.join()
memory.release_free_memory()
print(resident_anonymous_mb() - before)
"""

# Four concurrent forwards free 8 MB of activations each (one forward alone first, as a warm
# instance has run). Prints what stays resident after the frees, then after the release.
FREED_TOGETHER = PROCESS + """
libc.free(*used(1, 8 * MB))
memory.release_free_memory()
before = resident_anonymous_mb()
for block in used(4, 8 * MB):
    libc.free(block)
kept = resident_anonymous_mb() - before
memory.release_free_memory()
print(kept, resident_anonymous_mb() - before)
"""


def resident_mb(script: str, *setting: int | str) -> list[float]:
    return [float(value) for value in fresh_python(script, *setting, timeout=60).split()]


@glibc
def test_a_block_a_request_thread_freed_is_given_back_by_the_release():
    assert resident_mb(FREED_ON_A_THREAD, "service")[0] < 1


@glibc
def test_with_a_second_arena_the_release_would_keep_a_thread_s_freed_block():
    # why the service keeps one arena: malloc_trim never trims another arena's top
    assert resident_mb(FREED_ON_A_THREAD, memory._M_ARENA_MAX, 2)[0] > 15


@glibc
def test_what_concurrent_forwards_free_stays_for_the_next_requests_until_the_release():
    kept, after_release = resident_mb(FREED_TOGETHER, "service")
    assert kept > 31  # all four 8 MB blocks: the next forwards reuse their pages without faulting
    assert after_release < 1


@glibc
def test_with_glibc_s_dynamic_thresholds_free_would_give_them_back_at_once():
    # why the service fixes its thresholds: the next requests faulted the same pages in again
    kept, _ = resident_mb(FREED_TOGETHER, memory._M_ARENA_MAX, 1)
    assert kept < 1


# A fresh process, with the freeze registered (argument "registered") or not, makes 50 000 lists
# and forks: the child prints how many of them its collections still traverse, and whether they
# are still tracked (frozen, not forgotten).
MADE_BEFORE_THE_FORK = """
import gc, os, sys
from imgclassify import memory

if sys.argv[1] == "registered":
    memory.freeze_collected_objects_at_fork()
made = [[] for _ in range(50_000)]
if os.fork() == 0:
    traversed = {id(item) for item in gc.get_objects()}
    print(sum(id(item) in traversed for item in made), gc.is_tracked(made[0]), flush=True)
    os._exit(0)
os.wait()
"""


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="a platform that forks")
def test_the_objects_a_worker_inherits_are_out_of_its_collections():
    assert fresh_python(MADE_BEFORE_THE_FORK, "registered", timeout=60).split() == ["0", "True"]
    # without the freeze the worker's first full collection writes to every one of them
    assert fresh_python(MADE_BEFORE_THE_FORK, "not registered", timeout=60).split() == ["50000", "True"]


@pytest.fixture
def releases(monkeypatch) -> list[float]:
    """Every release_free_memory call, with a fresh count of requests in flight."""
    calls: list[float] = []
    monkeypatch.setattr(memory, "REQUESTS", InFlight())
    monkeypatch.setattr(memory, "_released_at", -float("inf"))
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1))
    return calls


def test_a_lone_request_releases_freed_memory(releases):
    with memory.request_in_flight():
        pass
    assert len(releases) == 1


def test_requests_that_overlap_leave_freed_memory_to_the_next_ones(releases):
    with memory.request_in_flight():
        with memory.request_in_flight():
            pass
        assert releases == []  # another request is still running: it reuses what this one freed
    assert releases == []  # the last one, too: under load the next request comes at once
    with memory.request_in_flight(quiet_seconds=0):
        pass
    assert len(releases) == 1  # once the requests stop overlapping


def test_memory_is_released_at_most_once_per_interval(releases):
    for _ in range(3):
        with memory.request_in_flight(release_every_seconds=60):
            pass
    assert len(releases) == 1
    with memory.request_in_flight(release_every_seconds=0):
        pass
    assert len(releases) == 2


def test_a_request_that_fails_still_leaves_the_count(releases):
    with pytest.raises(RuntimeError), memory.request_in_flight():
        raise RuntimeError("a bad image")
    assert memory.REQUESTS.running == 0
    assert len(releases) == 1
