"""The hooks the classify function's preload leaves for gunicorn's fork, and what the worker does after it
(serving/classify_app.py)."""

from __future__ import annotations

import gc
import threading
import weakref
from dataclasses import dataclass, field
from types import SimpleNamespace

from imgclassify.runtime.engines import EngineOptions
from imgclassify.serving import classify_app
from imgclassify.serving.classify_app import get_ready_after_fork, preload_before_fork
from imgclassify.store.objects import LocalStore


@dataclass
class PreloadedModel:
    """What the preload asks of the model it warmed up."""

    key: tuple[str, str] = ("efficientnet_lite0", "1")
    load_ms: dict = field(default_factory=lambda: {"download": 1.0})

    def forget_prepared(self) -> None:
        pass


def test_the_fork_hooks_do_not_keep_the_preloaded_model_alive_once_the_cache_drops_it():
    cache = {"model": PreloadedModel()}
    registry = SimpleNamespace(engine_options=EngineOptions(), snapshot=None, store=None,
                               catalog_view=SimpleNamespace(catalog=lambda: None),
                               warm_up=lambda: cache["model"])
    phases = preload_before_fork(registry)
    preloaded = weakref.ref(cache.pop("model"))  # the worker's cache evicts it
    gc.collect()

    assert phases["download"] == 1.0  # it was preloaded, and hooked to the fork
    assert preloaded() is None


class ConnectingStore(LocalStore):
    """A local store that says when it was asked to connect."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.connected = threading.Event()

    def connect(self) -> None:
        self.connected.set()


def test_the_worker_connects_its_store_only_once_it_has_answered_a_request(tmp_path):
    store, answered = ConnectingStore(tmp_path), threading.Event()
    ready = get_ready_after_fork(None, store, answered)

    assert not store.connected.wait(0.3)  # the client's import would slow the first request
    answered.set()
    assert store.connected.wait(5)
    ready.join(5)


def test_a_worker_that_answers_nothing_connects_its_store_all_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(classify_app, "CONNECT_LATEST_SECONDS", 0.2)
    store = ConnectingStore(tmp_path)
    get_ready_after_fork(None, store, threading.Event())

    assert store.connected.wait(5)
