"""What the service can serve: the catalog (re-read on a short TTL) and the warm model cache."""

from __future__ import annotations

import logging
import threading
import time

from .cache import ModelCache
from .catalog import Catalog, parse_model_ref, read_catalog, read_manifest
from .engines import EngineOptions
from .errors import StorageUnavailable, UnknownModel, UnknownVersion
from .memory import release_free_memory
from .models import LoadedModel, load_model
from .settings import Settings
from .storage import ObjectStore, open_store

log = logging.getLogger(__name__)

# A name the catalog does not know triggers a fresh read, at most this often, so a model
# published a moment ago is served at once without letting typos hammer storage.
_MISS_REFRESH_SECONDS = 1.0


class ModelRegistry:
    """Resolves ``name[@version]`` through the catalog and hands out warm models."""

    def __init__(self, store: ObjectStore, *, cache_budget_bytes: int, catalog_ttl_seconds: float,
                 default_model: str | None = None, engine_options: EngineOptions | None = None) -> None:
        self.store = store
        self.engine_options = engine_options or EngineOptions()
        self.catalog_ttl_seconds = catalog_ttl_seconds
        self.configured_default = default_model
        self.cache: ModelCache[tuple[str, str], LoadedModel] = ModelCache(
            self._load, lambda model: model.nbytes, cache_budget_bytes, on_evict=lambda _: release_free_memory()
        )
        self._catalog: Catalog | None = None
        self._catalog_read_at = float("-inf")
        self._catalog_lock = threading.Lock()

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

    def catalog(self, *, max_age_seconds: float | None = None) -> Catalog:
        """The catalog, re-read when older than the TTL; a stale copy serves if storage is down."""
        max_age = self.catalog_ttl_seconds if max_age_seconds is None else max_age_seconds
        with self._catalog_lock:
            if self._catalog is not None and time.monotonic() - self._catalog_read_at < max_age:
                return self._catalog
            try:
                self._catalog, _ = read_catalog(self.store)
            except StorageUnavailable:
                if self._catalog is None:
                    raise
                log.warning("catalog refresh failed; serving the copy from %.0f s ago",
                            time.monotonic() - self._catalog_read_at)
                return self._catalog
            self._catalog_read_at = time.monotonic()
            return self._catalog

    def default_name(self) -> str:
        name = self.catalog().default_name(self.configured_default)
        if name is None:
            raise UnknownModel("no model is published yet; publish one with `python -m imgclassify.publish`")
        return name

    def resolve(self, ref: str | None) -> tuple[str, str]:
        """Turn ``name``, ``name@version`` or None (the default) into a concrete ``(name, version)``."""
        name, version = parse_model_ref(ref) if ref else parse_model_ref(self.default_name())
        try:
            return name, self.catalog().resolve(name, version)
        except (UnknownModel, UnknownVersion):
            return name, self.catalog(max_age_seconds=_MISS_REFRESH_SECONDS).resolve(name, version)

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
