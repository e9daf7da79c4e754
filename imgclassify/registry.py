"""What classify can serve: the catalog (see :mod:`imgclassify.catalog_view`) and the warm model cache."""

from __future__ import annotations

import logging

from .cache import ModelCache
from .catalog import read_manifest
from .catalog_view import CatalogView
from .engines import EngineOptions
from .memory import release_free_memory
from .models import LoadedModel, load_model
from .settings import Settings
from .storage import ObjectStore, open_store

log = logging.getLogger(__name__)


class ModelRegistry(CatalogView):
    """Resolves ``name[@version]`` through the catalog and hands out warm models."""

    def __init__(self, store: ObjectStore, *, cache_budget_bytes: int, catalog_ttl_seconds: float,
                 default_model: str | None = None, engine_options: EngineOptions | None = None) -> None:
        super().__init__(store, catalog_ttl_seconds=catalog_ttl_seconds, default_model=default_model)
        self.engine_options = engine_options or EngineOptions()
        self.cache: ModelCache[tuple[str, str], LoadedModel] = ModelCache(
            self._load, lambda model: model.nbytes, cache_budget_bytes, on_evict=lambda _: release_free_memory()
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRegistry:
        """The registry the functions and the batch job build: store, cache budget, catalog TTL, engine."""
        registry = cls(open_store(settings.model_store, **settings.gcs_options()),
                       cache_budget_bytes=settings.cache_budget_bytes,
                       catalog_ttl_seconds=settings.catalog_ttl_seconds,
                       default_model=settings.default_model, engine_options=settings.engine_options())
        # Single-flight waiters give up after this long (503 MODEL_LOADING, Retry-After).
        registry.cache.wait_seconds = settings.model_load_wait_seconds
        return registry

    def get(self, ref: str | None) -> tuple[LoadedModel, bool]:
        """The warm model for ``ref`` and whether this call waited for it to load."""
        return self.cache.get(self.resolve(ref))

    def _load(self, key: tuple[str, str]) -> LoadedModel:
        name, version = key
        model = load_model(self.store, read_manifest(self.store, name, version), self.engine_options)
        release_free_memory()  # the download and parse buffers are gone: return their pages
        return model

    def warm_up(self, ref: str | None = None) -> LoadedModel | None:
        """Load ``ref`` (default: the default model) now; log and return None if that fails."""
        try:
            model, _ = self.get(ref)
        except Exception as error:  # noqa: BLE001 - start-up must not die; requests will retry
            log.warning("could not preload %s: %s", ref or "the default model", error)
            return None
        log.info("preloaded %s@%s: %s", model.manifest.name, model.manifest.version, model.load_ms)
        return model
