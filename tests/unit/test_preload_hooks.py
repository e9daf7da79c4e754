"""The hooks the classify function's preload leaves for gunicorn's fork (serving/classify_app.py)."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field
from types import SimpleNamespace

from imgclassify.runtime.engines import EngineOptions
from imgclassify.serving.classify_app import preload_before_fork


@dataclass
class PreloadedModel:
    """What the preload asks of the model it warmed up."""

    key: tuple[str, str] = ("efficientnet_lite0", "1")
    load_ms: dict = field(default_factory=lambda: {"download": 1.0})

    def forget_prepared(self) -> None:
        pass


def test_the_fork_hooks_do_not_keep_the_preloaded_model_alive_once_the_cache_drops_it():
    cache = {"model": PreloadedModel()}
    registry = SimpleNamespace(engine_options=EngineOptions(), snapshot=None,
                               catalog_view=SimpleNamespace(catalog=lambda: None),
                               warm_up=lambda: cache["model"])
    phases = preload_before_fork(registry)
    preloaded = weakref.ref(cache.pop("model"))  # the worker's cache evicts it
    gc.collect()

    assert phases["download"] == 1.0  # it was preloaded, and hooked to the fork
    assert preloaded() is None
