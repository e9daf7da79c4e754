"""What classify can serve: the catalog as this instance sees it, and the warm model cache."""

from __future__ import annotations

import logging
from collections.abc import Callable

from imgclassify.errors import IntegrityError, UnknownVersion
from imgclassify.memory import release_free_memory
from imgclassify.settings import Settings
from imgclassify.store.catalog import parse_model_ref
from imgclassify.store.catalog_view import CatalogView
from imgclassify.store.objects import ObjectStore, open_store
from imgclassify.store.snapshot import ModelSnapshot, snapshot_directory

from .cache import ModelCache
from .engines import EngineOptions
from .models import LoadedModel, load_model

log = logging.getLogger(__name__)


class ModelRegistry:
    """Resolves ``name[@version]`` through a catalog view and hands out warm models from a cache."""

    def __init__(self, catalog_view: CatalogView, *, cache_budget_bytes: int,
                 engine_options: EngineOptions | None = None, load_wait_seconds: float | None = None,
                 snapshot: ModelSnapshot | None = None) -> None:
        self.catalog_view = catalog_view
        self.snapshot = snapshot  # the bundle's copy of a model, used only where it matches the store's
        self.engine_options = engine_options or EngineOptions()
        # Single-flight waiters give up after load_wait_seconds (503 MODEL_LOADING, Retry-After).
        self.cache: ModelCache[tuple[str, str], LoadedModel] = ModelCache(
            self._load, lambda model: model.nbytes, cache_budget_bytes,
            on_evict=lambda _: release_free_memory(), wait_seconds=load_wait_seconds)

    @classmethod
    def over(cls, store: ObjectStore, *, catalog_ttl_seconds: float, default_model: str | None = None,
             **options) -> ModelRegistry:
        """A registry over ``store``'s catalog; ``options`` are the constructor's keyword arguments."""
        return cls(CatalogView(store, catalog_ttl_seconds=catalog_ttl_seconds, default_model=default_model),
                   **options)

    @classmethod
    def from_settings(cls, settings: Settings, *, batches: bool = False) -> ModelRegistry:
        """The registry the functions and the batch job build: store, cache budget, catalog TTL, engine
        (with ``batches``, the batch job's: :meth:`EngineOptions.for_batches`)."""
        engine_options = EngineOptions.from_settings(settings)
        return cls.over(open_store(settings.model_store, **settings.gcs_options()),
                        catalog_ttl_seconds=settings.catalog_ttl_seconds, default_model=settings.default_model,
                        cache_budget_bytes=settings.cache_budget_bytes,
                        engine_options=engine_options.for_batches() if batches else engine_options,
                        load_wait_seconds=settings.model_load_wait_seconds,
                        snapshot=ModelSnapshot(snapshot_directory(settings.model_snapshot_dir)))

    @property
    def store(self) -> ObjectStore:
        return self.catalog_view.store

    def resolve(self, ref: str | None) -> tuple[str, str]:
        """``name``, ``name@version`` or None (the default) as a concrete ``(name, version)``."""
        return self.catalog_view.resolve(ref)

    def default_name(self) -> str:
        return self.catalog_view.default_name()

    def get(self, ref: str | None) -> tuple[LoadedModel, bool]:
        """The warm model for ``ref`` and whether this call waited for it to load."""
        try:
            return self._get(self.resolve(ref))
        except UnknownVersion:
            if ref is not None and parse_model_ref(ref)[1] is not None:
                raise
            # The latest version was removed since this instance last read the catalog (its
            # load failed on the missing manifest and read the catalog again): a reference that
            # pins no version means the new latest.
            return self._get(self.resolve(ref))

    def serve(self, ref: str | None, check: Callable[[LoadedModel], object] | None = None) -> tuple[LoadedModel, bool]:
        """:meth:`get`, then ``check(model)``, then the model's network built (or waited for).

        A build that fails its integrity checks (an int8 twin whose golden answers differ on
        this host) refuses the version: it answers that INTEGRITY_ERROR from memory, with no
        download or build, until the catalog's record of the version changes or
        ``cache.refusal_seconds`` pass.
        """
        model, cold = self.get(ref)
        if check is not None:
            check(model)
        try:
            model.network()
        except IntegrityError as error:
            self.cache.refuse(model.key, error, self._stamp(model.key))
            raise
        return model, cold

    def _get(self, key: tuple[str, str]) -> tuple[LoadedModel, bool]:
        return self.cache.get(key, self._stamp(key))

    def _stamp(self, key: tuple[str, str]) -> object:
        """The catalog's record of version ``key`` (republishing it changes its published_at)."""
        name, version = key
        return self.catalog_view.catalog().models.get(name, {}).get("versions", {}).get(version)

    def _load(self, key: tuple[str, str]) -> LoadedModel:
        name, version = key
        model = load_model(self.store, self.catalog_view.manifest(name, version), self.engine_options, self.snapshot)
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
