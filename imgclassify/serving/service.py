"""The ``classify`` operation, free of any web framework: fetch, decode, preprocess, run, top-k.

The classify function and the tests call it; the listing operations live in
:mod:`imgclassify.serving.listing`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from imgclassify.errors import ServiceError
from imgclassify.memory import release_free_memory_now_and_then
from imgclassify.runtime.registry import ModelRegistry
from imgclassify.settings import Settings

from .image_sources import ImageSources
from .inputs import ClassifyRequest, ImageInput


@dataclass
class ClassifyService:
    settings: Settings
    registry: ModelRegistry
    sources: ImageSources

    @classmethod
    def from_settings(cls, settings: Settings) -> ClassifyService:
        return cls(settings, ModelRegistry.from_settings(settings), ImageSources.from_settings(settings))

    def _prepare(self, model, image: ImageInput, index: int, count: int):
        """Fetch, decode and preprocess one image; errors name the image's index in a batch."""
        try:
            return model.prepare(self.sources.read(image), max_pixels=self.settings.max_image_pixels)
        except ServiceError as error:
            if count > 1:
                error.message = f"image {index}: {error.message}"
                error.args = (error.message,)
            raise

    def classify(self, request: ClassifyRequest) -> dict:
        """Classify every image of ``request`` with one model, as one batch, in input order."""
        started = time.perf_counter()
        model, cold = self.registry.get(request.model)
        model.network()  # built by now, or here (waiting for a build already running)
        loaded = time.perf_counter()
        inputs = [self._prepare(model, image, index, len(request.images))
                  for index, image in enumerate(request.images)]
        prepared = time.perf_counter()
        # On the request thread: ONNX Runtime runs concurrent forwards on one session safely,
        # and an A/B against a single lane thread with micro-batching (bench/serving.py, README)
        # showed the lane no faster at 1 or 16 clients and slower at 8.
        predictions = model.classify(inputs, request.top_k)
        finished = time.perf_counter()
        release_free_memory_now_and_then()
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

