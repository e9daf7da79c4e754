"""The ``classify`` and ``embed`` operations, free of any web framework: fetch, decode, preprocess, run,
then top-k or L2-normalised features.

The classify function and the tests call it; the listing operations live in
:mod:`imgclassify.serving.listing`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from imgclassify.errors import ServiceError
from imgclassify.memory import request_in_flight
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
        return self._run(request, lambda model, inputs: {
            "results": [{"predictions": rows} for rows in model.classify(inputs, request.top_k)]})

    def embed(self, request: ClassifyRequest, *, normalize: bool = True) -> dict:
        """Each image's penultimate features, L2-normalised unless ``normalize`` is false (one
        batch, input order); 400 EMBEDDINGS_UNAVAILABLE before any image is read if the
        model's graph has none."""
        def embeddings(model, inputs) -> dict:
            rows = model.embed(inputs) if normalize else model.features(inputs)
            return {"results": [{"embedding": [round(float(value), 7) for value in row]} for row in rows],
                    "dimensions": int(rows.shape[1])}

        return self._run(request, embeddings, check=lambda model: model.require_features())

    def _run(self, request: ClassifyRequest, operation, check=None) -> dict:
        with request_in_flight():
            return self._serve(request, operation, check)

    def _serve(self, request: ClassifyRequest, operation, check=None) -> dict:
        started = time.perf_counter()
        # built by now, or here (waiting for a build already running); a refused build answers from memory
        model, cold = self.registry.serve(request.model, check)
        loaded = time.perf_counter()
        inputs = [self._prepare(model, image, index, len(request.images))
                  for index, image in enumerate(request.images)]
        prepared = time.perf_counter()
        # On the request thread: ONNX Runtime runs concurrent forwards on one session safely,
        # and an A/B against a single lane thread with micro-batching (bench/serving.py, README)
        # showed the lane no faster at 1 or 16 clients and slower at 8.
        answer = operation(model, inputs)
        finished = time.perf_counter()
        return {
            "model": {"name": model.manifest.name, "version": model.manifest.version,
                      "random_init": model.manifest.random_init},
            **answer,
            "cold_start": cold,
            "timing_ms": {
                "model_load": round((loaded - started) * 1000, 1),
                "decode_preprocess": round((prepared - loaded) * 1000, 1),
                "inference": round((finished - prepared) * 1000, 1),
                "total": round((finished - started) * 1000, 1),
            },
        }

