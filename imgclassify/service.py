"""The service's operations, free of any web framework: list models, describe one, classify.

Functions' ``main.py``, the local router, the batch job and the tests all call these.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .catalog import read_manifest
from .errors import ForbiddenSource, PayloadTooLarge, ServiceError
from .fetch import UrlFetcher, UrlPolicy
from .inference import InferenceLane
from .registry import ModelRegistry
from .request_parsing import ClassifyRequest, ImageInput
from .settings import Settings
from .storage import GcsStore, ObjectStore, split_gs_uri


@dataclass
class Service:
    settings: Settings
    store: ObjectStore
    registry: ModelRegistry
    url_fetcher: UrlFetcher | None = None
    lane: InferenceLane = field(default_factory=InferenceLane)

    @classmethod
    def from_settings(cls, settings: Settings) -> Service:
        registry = ModelRegistry.from_settings(settings)
        fetcher = None
        if settings.url_fetch_enabled:
            policy = UrlPolicy.build(settings.url_fetch_schemes, settings.url_allowed_networks,
                                     max_bytes=settings.max_request_bytes,
                                     timeout_seconds=settings.url_fetch_timeout_seconds)
            fetcher = UrlFetcher(policy)
        lane = InferenceLane(max_batch=settings.max_batch, window_seconds=settings.batch_window_ms / 1000)
        return cls(settings, registry.store, registry, fetcher, lane)

    # --- listing -----------------------------------------------------------------------

    def list_models(self) -> dict:
        """``GET /v1/models``: the latest version of every published model."""
        catalog = self.registry.catalog()
        default = catalog.default_name(self.registry.configured_default)
        models = catalog.listing(self.registry.configured_default)
        return {"models": models, "default_model": default}

    def describe_model(self, name: str) -> dict:
        """``GET /v1/models/{name}``: the latest manifest's summary, labels, preprocessing and all versions."""
        name, version = self.registry.resolve(name)
        catalog = self.registry.catalog()
        manifest = read_manifest(self.store, name, version)
        entry = catalog.models[name]
        return {
            **manifest.summary(),
            "default": name == catalog.default_name(self.registry.configured_default),
            "labels": list(manifest.labels),
            "preprocessing": manifest.to_json()["preprocessing"],
            "metadata": manifest.metadata,
            "versions": [entry["versions"][key] for key in sorted(entry["versions"])],
            "latest": entry["latest"],
        }

    # --- classification ----------------------------------------------------------------

    def fetch(self, image: ImageInput) -> bytes:
        """The bytes of one input image, from the request itself or an allowed bucket."""
        if image.data is not None:
            return image.data
        if image.gcs_uri is not None:
            bucket, name = split_gs_uri(image.gcs_uri)
            if bucket not in self.settings.allowed_gcs_buckets:
                raise ForbiddenSource(f"bucket {bucket!r} is not one this service may read from")
            store = GcsStore(bucket, **self.settings.gcs_options())
            info = store.info(name)
            if info is not None and info.size > self.settings.max_request_bytes:
                raise PayloadTooLarge(f"{image.gcs_uri} has {info.size} bytes; the limit is "
                                      f"{self.settings.max_request_bytes}")
            return store.read(name).data
        if self.url_fetcher is None:
            raise ForbiddenSource("URL input is not enabled on this deployment; upload the image or use gcs_uri")
        return self.url_fetcher.fetch(image.url)

    def _prepare(self, model, image: ImageInput, index: int, count: int):
        """Fetch, decode and preprocess one image; errors name the image's index in a batch."""
        try:
            return model.prepare(self.fetch(image), max_pixels=self.settings.max_image_pixels)
        except ServiceError as error:
            if count > 1:
                error.message = f"image {index}: {error.message}"
                error.args = (error.message,)
            raise

    def classify(self, request: ClassifyRequest) -> dict:
        """Classify every image of ``request`` with one model, as one batch, in input order."""
        started = time.perf_counter()
        model, cold = self.registry.get(request.model)
        if not model.built:  # build here, not on the inference lane that other models share
            cold = True
            model.network()
        loaded = time.perf_counter()
        with self.lane.preparing(model):
            inputs = [self._prepare(model, image, index, len(request.images))
                      for index, image in enumerate(request.images)]
        prepared = time.perf_counter()
        if self.settings.inference_lane:
            predictions = self.lane.classify(model, inputs, request.top_k)
        else:
            predictions = model.classify(inputs, request.top_k)
        finished = time.perf_counter()
        return {
            "model": {"name": model.manifest.name, "version": model.manifest.version,
                      "random_init": model.manifest.random_init},
            "results": [{"predictions": rows} for rows in predictions],
            "cold_start": cold,
            "timing_ms": {
                "model_load": round((loaded - started) * 1000, 1),
                "decode_preprocess": round((prepared - loaded) * 1000, 1),
                "inference": round((finished - prepared) * 1000, 1),
                "total": round((finished - started) * 1000, 1),
            },
        }

