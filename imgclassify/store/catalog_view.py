"""What is published: the catalog, re-read on a short TTL, and how a model reference resolves.

Both functions use it: ``list_models`` on its own (it never loads a model, so it imports no
engine, numpy or Pillow), ``classify`` through :class:`imgclassify.runtime.registry.ModelRegistry`.
"""

from __future__ import annotations

import logging
import threading
import time

from imgclassify.errors import IntegrityError, StorageUnavailable, UnknownModel, UnknownVersion

from .catalog import Catalog, Manifest, parse_model_ref, read_catalog, read_manifest
from .objects import ObjectStore

log = logging.getLogger(__name__)

# A name the catalog does not know triggers a fresh read, at most this often, so a model
# published a moment ago is served at once without letting typos hammer storage.
_MISS_REFRESH_SECONDS = 1.0


class CatalogView:
    """The catalog of ``store`` as this instance sees it, and ``name[@version]`` resolution."""

    def __init__(self, store: ObjectStore, *, catalog_ttl_seconds: float, default_model: str | None = None) -> None:
        self.store = store
        self.catalog_ttl_seconds = catalog_ttl_seconds
        self.configured_default = default_model
        self._catalog: Catalog | None = None
        self._catalog_read_at = float("-inf")
        self._catalog_lock = threading.Lock()

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

    def manifest(self, name: str, version: str) -> Manifest:
        """The manifest of a resolved ``name@version``.

        A manifest that cannot be read makes the catalog be read again first, however recent
        this instance's copy: a removal takes the version out of the catalog before it deletes
        the manifest, so a copy that lists it is older than the removal. The version is then a
        404 (UNKNOWN_MODEL or UNKNOWN_VERSION) at once, not a 500 until the TTL runs out; only a
        version the fresh catalog still lists is an integrity failure.
        """
        try:
            return read_manifest(self.store, name, version)
        except IntegrityError:
            self.catalog(max_age_seconds=0).resolve(name, version)
            raise
