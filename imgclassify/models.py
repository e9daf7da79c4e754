"""Loading one published model version: download, verify, build, warm up."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .architectures import build_module
from .catalog import Manifest, version_dir
from .errors import IntegrityError
from .images import decode_image
from .predict import forward, preprocess, top_k
from .storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to serve: its manifest, the torch module, and what loading it cost."""

    manifest: Manifest
    module: object
    nbytes: int
    load_ms: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.manifest.name, self.manifest.version

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return preprocess(image, self.manifest.preprocessing)

    def prepare(self, data: bytes, *, max_pixels: int) -> np.ndarray:
        """Encoded image bytes to this model's input: safe decode (JPEG draft mode down to what
        the model needs), then preprocessing. The API and the batch job both call this."""
        return self.preprocess(decode_image(data, max_pixels=max_pixels, min_side=self.manifest.preprocessing.resize))

    def classify(self, inputs: list[np.ndarray], k: int) -> list[list[dict]]:
        """Top-k predictions for preprocessed inputs, run as one batch."""
        probabilities = forward(self.module, np.stack(inputs))
        return top_k(probabilities, self.manifest.labels, k)

    def logits(self, inputs: list[np.ndarray]):
        """Raw logits for preprocessed inputs (used to prove fidelity to the original model)."""
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(np.stack(inputs)))


def verify_weights(manifest: Manifest, data: bytes) -> None:
    """Raise IntegrityError unless ``data`` has the manifest's exact size and sha256."""
    expected = manifest.weights
    if len(data) != expected.bytes:
        raise IntegrityError(
            f"weights of {manifest.name}@{manifest.version} have {len(data)} bytes, manifest says {expected.bytes}"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.sha256:
        raise IntegrityError(
            f"weights of {manifest.name}@{manifest.version} have sha256 {digest}, manifest says {expected.sha256}"
        )


def parse_safetensors(manifest: Manifest, data: bytes) -> dict:
    """Tensors from safetensors bytes; anything else (a pickle, say) is refused, never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise IntegrityError(
            f"weights of {manifest.name}@{manifest.version} are not a valid safetensors file: {error}"
        ) from None


def load_model(store: ObjectStore, manifest: Manifest) -> LoadedModel:
    """Download, verify and build ``manifest``'s model, then run one warm-up forward."""
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal started
        now = time.perf_counter()
        timings[phase] = round((now - started) * 1000, 1)
        started = now

    name = manifest.weights.object
    if not name.startswith(version_dir(manifest.name, manifest.version) + "/"):
        raise IntegrityError(f"manifest of {manifest.name}@{manifest.version} points outside its version: {name}")
    try:
        data = store.download(name)
    except ObjectNotFound:
        raise IntegrityError(f"weights of {manifest.name}@{manifest.version} are missing ({name})") from None
    lap("download")
    try:
        verify_weights(manifest, data)
    except IntegrityError as error:
        log.error("refusing to serve tampered or corrupt weights: %s", error.message)
        raise
    lap("verify")
    state_dict = parse_safetensors(manifest, data)
    del data
    lap("parse")
    module = build_module(manifest.architecture, state_dict)
    lap("build")
    nbytes = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    crop = manifest.preprocessing.crop_size
    forward(module, np.zeros((1, 3, crop, crop), dtype=np.float32))
    lap("warmup")
    return LoadedModel(manifest, module, nbytes, timings)
