"""The ``list_models`` operations, free of any web framework: list the models, describe one.

Reads the catalog and manifests only: importing this module loads no engine, numpy or Pillow.
"""

from __future__ import annotations

from imgclassify.settings import Settings
from imgclassify.store.catalog_view import CatalogView
from imgclassify.store.objects import open_store


class ModelListing:
    """What ``GET /v1/models`` and ``GET /v1/models/{name}`` answer."""

    def __init__(self, catalog: CatalogView) -> None:
        self.catalog = catalog

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelListing:
        return cls(CatalogView(open_store(settings.model_store, **settings.gcs_options()),
                               catalog_ttl_seconds=settings.catalog_ttl_seconds, default_model=settings.default_model))

    def list_models(self) -> dict:
        """``GET /v1/models``: the latest version of every published model, the default first."""
        catalog = self.catalog.catalog()
        default = catalog.default_name(self.catalog.configured_default)
        return {"models": catalog.listing(self.catalog.configured_default), "default_model": default}

    def describe_model(self, name: str) -> dict:
        """``GET /v1/models/{name}``: the latest manifest's summary, labels, preprocessing, evaluation (trained
        classifiers) and all versions."""
        name, version = self.catalog.resolve(name)
        catalog = self.catalog.catalog()
        manifest = self.catalog.manifest(name, version)
        entry = catalog.models[name]
        return {
            **manifest.summary(),
            "default": name == catalog.default_name(self.catalog.configured_default),
            "labels": list(manifest.labels),
            "preprocessing": manifest.to_json()["preprocessing"],
            "metadata": manifest.metadata,
            # a trained classifier's held-out accuracy, per-label precision and recall, confusion matrix
            "evaluation": manifest.metadata.get("evaluation"),
            "versions": [entry["versions"][key] for key in sorted(entry["versions"])],
            "latest": entry["latest"],
        }
