"""What the service's malloc tuning (imgclassify/memory.py) gives back to the system."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                                reason="glibc's malloc on Linux")

# A fresh process (arenas are fixed once threads have them): a freed 24 MB block raises glibc's
# dynamic mmap threshold, as a freed model download does, so a request thread's 16 MB block
# (a forward's activations) comes from an arena's heap; once freed, it sits at that heap's top.
FREE_ON_A_THREAD = """
import ctypes, os, sys, threading
from devstack.processes import rss_kib
from imgclassify.memory import limit_malloc_arenas, release_free_memory

limit_malloc_arenas(*map(int, sys.argv[1:]))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
MB = 2**20

def resident_anonymous_mb():
    return rss_kib(os.getpid(), field="RssAnon") / 1024

def use_and_free(size):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)

use_and_free(24 * MB)
release_free_memory()
before = resident_anonymous_mb()
thread = threading.Thread(target=use_and_free, args=(16 * MB,))
thread.start()
thread.join()
release_free_memory()
print(resident_anonymous_mb() - before)
"""


def kept_after_release_mb(*arenas: int) -> float:
    result = subprocess.run([sys.executable, "-c", FREE_ON_A_THREAD, *map(str, arenas)], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=True)
    return float(result.stdout)


def test_memory_a_request_thread_freed_is_given_back_by_the_periodic_release():
    assert kept_after_release_mb() < 1


def test_with_a_second_arena_the_release_would_keep_a_thread_s_freed_block():
    # why the service keeps one arena: malloc_trim never trims another arena's top
    assert kept_after_release_mb(2) > 15
