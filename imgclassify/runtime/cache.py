"""A warm, in-process LRU of loaded models, bounded by bytes, with single-flight loading.

The cache knows nothing about storage: it calls an injected ``loader(key)`` and sizes
values with ``size_of(value)``. Contract:

* at most one load per key runs at a time; concurrent callers for that key wait for it
  and share its result or its exception (single flight); a waiter gives up after
  ``wait_seconds`` with :class:`~imgclassify.errors.ModelLoading` (503, Retry-After), while
  the load itself goes on and serves later callers;
* a failed load is not remembered: the next call tries again;
* a *refused* key is: :meth:`ModelCache.refuse` drops its entry and remembers the error, and
  ``get`` raises it from memory (no load) for ``refusal_seconds``, or until the caller's
  ``stamp`` for the key (e.g. the catalog's record of that version) differs from the stamp
  the refusal was made under; a model that fails a check only its build can make (the golden
  answers of an int8 twin) is then not rebuilt on every request that asks for it;
* loads of different keys run in parallel (the lock is per key, not per cache);
* after each load the least recently used entries are evicted until the total size fits
  ``budget_bytes``; the entry just loaded is never evicted, so a model larger than the
  budget is still served, alone; ``on_evict(keys)`` is then called outside the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from imgclassify.errors import ModelLoading

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger(__name__)


class ModelCache(Generic[K, V]):
    def __init__(self, loader: Callable[[K], V], size_of: Callable[[V], int], budget_bytes: int,
                 on_evict: Callable[[list[K]], object] | None = None, wait_seconds: float | None = None,
                 refusal_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._loader = loader
        self.refusal_seconds = refusal_seconds
        self._clock = clock
        self._refused: dict[K, tuple[BaseException, object, float]] = {}   # error, stamp, until
        self.wait_seconds = wait_seconds
        self._on_evict = on_evict
        self._size_of = size_of
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._loading: dict[K, Future] = {}
        self.loads = 0

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def keys(self) -> list[K]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, key: K, stamp: object = None) -> tuple[V, bool]:
        """Return ``(value, cold)``; ``cold`` is True when this call had to wait for a load.

        Raises the remembered error of a key refused under the same ``stamp`` less than
        ``refusal_seconds`` ago.
        """
        with self._lock:
            refusal = self._refused.get(key)
            if refusal is not None:
                error, refused_stamp, until = refusal
                if refused_stamp == stamp and self._clock() < until:
                    raise error.with_traceback(None)
                del self._refused[key]
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry[0], False
            future = self._loading.get(key)
            owner = future is None
            if owner:
                future = self._loading[key] = Future()
        if not owner:
            try:
                return future.result(timeout=self.wait_seconds), True
            except FutureTimeout:
                raise ModelLoading(f"{key} is still loading after {self.wait_seconds:g} s; retry shortly",
                                   retry_after_seconds=max(1, round(self.wait_seconds))) from None
        return self._load(key, future), True

    def refuse(self, key: K, error: BaseException, stamp: object = None) -> None:
        """Drop ``key``'s entry and answer ``error`` for it from memory (see :meth:`get`)."""
        with self._lock:
            dropped = self._entries.pop(key, None) is not None
            self._refused[key] = (error, stamp, self._clock() + self.refusal_seconds)
        log.warning("refusing %s for %.0f s or until it is republished: %s", key, self.refusal_seconds, error)
        if dropped and self._on_evict is not None:
            self._on_evict([key])

    def _load(self, key: K, future: Future) -> V:
        started = time.perf_counter()
        try:
            value = self._loader(key)
            size = self._size_of(value)
        except BaseException as error:
            with self._lock:
                del self._loading[key]
            future.set_exception(error)
            raise
        with self._lock:
            del self._loading[key]
            self._entries[key] = (value, size)
            self.loads += 1
            evicted = self._evict_over_budget(keep=key)
        future.set_result(value)
        if evicted and self._on_evict is not None:
            self._on_evict(evicted)
        log.info("loaded %s (%d bytes) in %.0f ms; evicted %s", key, size,
                 (time.perf_counter() - started) * 1000, evicted or "nothing")
        return value

    def _evict_over_budget(self, keep: K) -> list[K]:
        evicted = []
        total = sum(size for _, size in self._entries.values())
        for key in list(self._entries):
            if total <= self.budget_bytes:
                break
            if key == keep:
                continue
            total -= self._entries.pop(key)[1]
            evicted.append(key)
        return evicted
