"""ModelCache: hits, single-flight loading, failure handling, parallel loads, LRU eviction by bytes, refusals."""

from __future__ import annotations

import threading
import time

import pytest

from imgclassify.errors import IntegrityError, ModelLoading
from imgclassify.runtime.cache import ModelCache

WAIT = 10.0  # seconds; generous upper bound for every wait so a broken cache fails instead of hanging


class CountingLoader:
    """A loader that records its calls and returns ``value_for(key)`` (a fresh object per call by default)."""

    def __init__(self, value_for=lambda key: object()) -> None:
        self.value_for = value_for
        self.calls: list = []
        self._lock = threading.Lock()

    def __call__(self, key):
        with self._lock:
            self.calls.append(key)
        return self.value_for(key)


def run_threads(target, count: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join(timeout=WAIT)
    assert not any(thread.is_alive() for thread in threads), "threads still running: the cache deadlocked"


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


# --- hits and misses -----------------------------------------------------------------------

def test_first_get_loads_and_is_cold_then_a_hit_returns_the_same_object_warm():
    loader = CountingLoader()
    cache = ModelCache(loader, size_of=lambda value: 1, budget_bytes=100)

    first, first_cold = cache.get("resnet")
    second, second_cold = cache.get("resnet")

    assert second is first
    assert (first_cold, second_cold) == (True, False)
    assert loader.calls == ["resnet"]
    assert cache.loads == 1


def test_different_keys_get_different_values():
    cache = ModelCache(CountingLoader(lambda key: f"model {key}"), size_of=len, budget_bytes=1000)

    assert cache.get("a") == ("model a", True)
    assert cache.get("b") == ("model b", True)
    assert cache.keys() == ["a", "b"]
    assert cache.total_bytes == 14


# --- single flight -------------------------------------------------------------------------

def test_concurrent_requests_for_one_cold_key_share_a_single_load():
    release = threading.Event()
    started = threading.Event()

    def slow_load(key):
        started.set()
        assert release.wait(timeout=WAIT)
        return object()

    loader = CountingLoader(slow_load)
    cache = ModelCache(loader, size_of=lambda value: 1, budget_bytes=100)
    results: list = []
    entered: list = []

    def request():
        entered.append(1)
        results.append(cache.get("resnet"))

    threads = run_threads(request, 32)
    wait_until(lambda: started.is_set() and len(entered) == 32, "all 32 requests are in flight")
    time.sleep(0.2)  # let the 31 followers reach the wait while the first load is still blocked
    release.set()
    join_all(threads)

    assert loader.calls == ["resnet"]
    assert len(results) == 32
    assert len({id(value) for value, _ in results}) == 1
    assert results[0][0] is cache.get("resnet")[0]
    assert cache.loads == 1


def test_a_failed_load_reaches_every_concurrent_waiter_and_is_not_cached():
    release = threading.Event()
    started = threading.Event()

    def failing_then_working_load(key):
        if len(loader.calls) == 1:
            started.set()
            assert release.wait(timeout=WAIT)
            raise RuntimeError("weights corrupt")
        return "recovered"

    loader = CountingLoader(failing_then_working_load)
    cache = ModelCache(loader, size_of=len, budget_bytes=100)
    errors: list[BaseException] = []
    values: list = []
    entered: list = []

    def request():
        entered.append(1)
        try:
            values.append(cache.get("resnet"))
        except RuntimeError as error:
            errors.append(error)

    threads = run_threads(request, 8)
    wait_until(lambda: started.is_set() and len(entered) == 8, "all 8 requests are in flight")
    time.sleep(0.2)  # let the followers reach the wait while the failing load is still blocked
    release.set()
    join_all(threads)

    assert values == []
    assert len(errors) == 8
    assert all(str(error) == "weights corrupt" for error in errors)
    assert cache.keys() == []
    assert cache.get("resnet") == ("recovered", True)
    assert len(loader.calls) == 2


def test_a_failing_size_of_is_reported_and_not_cached():
    sizes = iter([ValueError("cannot size"), 5])

    def size_of(value):
        size = next(sizes)
        if isinstance(size, Exception):
            raise size
        return size

    cache = ModelCache(CountingLoader(lambda key: "value"), size_of=size_of, budget_bytes=100)

    with pytest.raises(ValueError, match="cannot size"):
        cache.get("a")

    assert cache.keys() == []
    assert cache.get("a") == ("value", True)


def test_loads_of_different_cold_keys_run_in_parallel():
    both_loading = threading.Barrier(2, timeout=5)  # broken (and the gets fail) if loads are serialised

    def load(key):
        both_loading.wait()
        return f"model {key}"

    cache = ModelCache(CountingLoader(load), size_of=len, budget_bytes=1000)
    results: dict = {}
    errors: list[BaseException] = []

    def request(key):
        try:
            results[key] = cache.get(key)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=request, args=(key,), daemon=True) for key in ("a", "b")]
    for thread in threads:
        thread.start()
    join_all(threads)

    assert errors == []
    assert results == {"a": ("model a", True), "b": ("model b", True)}


def test_a_hit_is_served_while_another_key_is_loading():
    release = threading.Event()
    started = threading.Event()

    def load(key):
        if key == "slow":
            started.set()
            assert release.wait(timeout=WAIT)
        return key

    cache = ModelCache(CountingLoader(load), size_of=len, budget_bytes=1000)
    cache.get("fast")
    hits: list = []
    slow = threading.Thread(target=cache.get, args=("slow",), daemon=True)
    fast = threading.Thread(target=lambda: hits.append(cache.get("fast")), daemon=True)
    slow.start()
    try:
        assert started.wait(timeout=WAIT)
        fast.start()
        fast.join(timeout=WAIT / 2)  # the slow load is still blocked, so a shared lock would stall this hit

        assert not fast.is_alive()
        assert hits == [("fast", False)]
    finally:
        release.set()
        join_all([slow, fast])


# --- eviction ------------------------------------------------------------------------------

def sized_cache(sizes: dict[str, int], budget: int) -> tuple[ModelCache, CountingLoader]:
    loader = CountingLoader(lambda key: "x" * sizes[key])
    return ModelCache(loader, size_of=len, budget_bytes=budget), loader


def test_loading_past_the_budget_evicts_the_least_recently_used_entry():
    cache, _ = sized_cache({"a": 60, "b": 60}, budget=100)
    cache.get("a")

    cache.get("b")

    assert cache.keys() == ["b"]
    assert cache.total_bytes == 60


def test_a_recently_used_entry_is_kept_and_the_least_recent_is_evicted():
    cache, _ = sized_cache({"a": 40, "b": 40, "c": 40}, budget=100)
    cache.get("a")
    cache.get("b")
    cache.get("a")  # a is now more recent than b

    cache.get("c")

    assert cache.keys() == ["a", "c"]
    assert cache.total_bytes == 80


def test_eviction_removes_only_as_many_entries_as_needed():
    cache, _ = sized_cache({"a": 30, "b": 30, "c": 30, "d": 50}, budget=100)
    for key in ("a", "b", "c"):
        cache.get(key)

    cache.get("d")

    assert cache.keys() == ["c", "d"]


def test_an_evicted_key_is_loaded_again_on_the_next_request():
    cache, loader = sized_cache({"a": 60, "b": 60}, budget=100)
    cache.get("a")
    cache.get("b")

    value, cold = cache.get("a")

    assert (len(value), cold) == (60, True)
    assert loader.calls == ["a", "b", "a"]
    assert cache.keys() == ["a"]


def test_a_value_larger_than_the_budget_is_still_cached_alone():
    cache, loader = sized_cache({"a": 30, "b": 30, "huge": 150}, budget=100)
    cache.get("a")
    cache.get("b")

    huge, cold = cache.get("huge")

    assert (len(huge), cold) == (150, True)
    assert cache.keys() == ["huge"]
    assert cache.total_bytes == 150
    assert cache.get("huge") == (huge, False)
    assert loader.calls == ["a", "b", "huge"]


# --- waiting for another request's load ---------------------------------------------------------

def test_a_waiter_gives_up_after_wait_seconds_with_503_while_the_load_goes_on_and_serves_later():
    release = threading.Event()
    started = threading.Event()

    def slow_load(key):
        started.set()
        assert release.wait(timeout=WAIT)
        return "model"

    cache = ModelCache(CountingLoader(slow_load), size_of=lambda value: 1, budget_bytes=100, wait_seconds=0.2)
    owner = run_threads(lambda: cache.get("resnet"), 1)
    wait_until(started.is_set, "the first load started")

    began = time.monotonic()
    with pytest.raises(ModelLoading) as caught:
        cache.get("resnet")
    waited = time.monotonic() - began

    assert 0.2 <= waited < WAIT
    assert caught.value.status == 503
    assert caught.value.headers() == {"Retry-After": "1"}
    release.set()
    join_all(owner)
    assert cache.get("resnet") == ("model", False)
    assert cache.loads == 1


def test_without_wait_seconds_a_waiter_waits_for_the_load():
    release = threading.Event()
    cache = ModelCache(CountingLoader(lambda key: release.wait(timeout=WAIT) and "model"),
                       size_of=lambda value: 1, budget_bytes=100)
    run_threads(lambda: cache.get("resnet"), 1)
    wait_until(lambda: cache._loading, "the first load started")
    threading.Timer(0.3, release.set).start()

    assert cache.get("resnet") == ("model", True)


def test_model_load_wait_seconds_reaches_the_registry_cache(tmp_path):
    from imgclassify.runtime.registry import ModelRegistry
    from imgclassify.settings import Settings

    settings = Settings.from_env({"MODEL_STORE": str(tmp_path), "MODEL_LOAD_WAIT_SECONDS": "7.5"})

    assert ModelRegistry.from_settings(settings).cache.wait_seconds == 7.5


# --- refusals (a negative cache) ------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_refused_key_answers_its_error_from_memory_without_loading_until_refusal_seconds_pass():
    loader, clock, evicted = CountingLoader(), Clock(), []
    cache = ModelCache(loader, size_of=lambda value: 1, budget_bytes=100, on_evict=evicted.extend,
                       refusal_seconds=60, clock=clock)
    cache.get("twin")
    cache.refuse("twin", IntegrityError("twin@1 does not give its golden answers"))

    assert cache.keys() == [] and evicted == ["twin"]  # its memory is given back at once
    for _ in range(3):
        clock.now += 19
        with pytest.raises(IntegrityError, match="golden answers"):
            cache.get("twin")
    assert loader.calls == ["twin"]

    clock.now += 4  # 61 s after the refusal
    assert cache.get("twin")[1] is True
    assert loader.calls == ["twin", "twin"]


def test_a_refusal_holds_for_its_stamp_only_and_a_new_stamp_loads_again():
    loader = CountingLoader()
    cache = ModelCache(loader, size_of=lambda value: 1, budget_bytes=100)
    cache.refuse("twin", IntegrityError("refused"), stamp={"published_at": "09:00"})

    with pytest.raises(IntegrityError):
        cache.get("twin", stamp={"published_at": "09:00"})
    assert loader.calls == []
    cache.get("twin", stamp={"published_at": "09:05"})  # republished: the refusal was about another file
    assert loader.calls == ["twin"]
    cache.get("twin", stamp={"published_at": "09:00"})  # forgotten, and now a hit
    assert loader.calls == ["twin"]


def test_refusing_one_key_leaves_the_others_served():
    loader = CountingLoader()
    cache = ModelCache(loader, size_of=lambda value: 1, budget_bytes=100)
    kept, _ = cache.get("fp32")
    cache.refuse("twin", IntegrityError("refused"))

    assert cache.get("fp32") == (kept, False)
