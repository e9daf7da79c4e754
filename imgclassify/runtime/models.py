"""Loading one published model version: download, verify, check, then build where it runs."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from imgclassify.errors import EmbeddingsUnavailable, IntegrityError, ObjectNotFound
from imgclassify.imaging.decode import decode_image
from imgclassify.imaging.preprocess import preprocess
from imgclassify.memory import release_free_memory
from imgclassify.store.catalog import Manifest, verify_artifact, version_dir
from imgclassify.store.objects import ObjectStore
from imgclassify.store.snapshot import ModelSnapshot, SnapshotLook

from .engines import MIGRATE_COMMAND, Engine, EngineOptions, Network, Prepared, engine_for
from .golden import check_golden
from .scores import l2_normalised, scores, top_k

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A verified model: its manifest, the engine that runs it, and what loading it cost.

    The network itself is built on first use, in the process that uses it (see
    :mod:`imgclassify.runtime.engines` on fork safety), and warmed up with one forward then.
    """

    manifest: Manifest
    engine: Engine
    nbytes: int                       # memory the weights take once built
    load_ms: dict[str, float] = field(default_factory=dict)
    _data: bytes | None = field(default=None, repr=False)
    _golden: bytes | None = field(default=None, repr=False)   # golden.png of an int8 twin, until checked
    _prepared: Prepared | None = field(default=None, repr=False)  # what the engine did of the build ahead
    _network: Network | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return self.manifest.name, self.manifest.version

    @property
    def built(self) -> bool:
        return self._network is not None

    def network(self) -> Network:
        """The runnable network, built (and warmed up) by the first caller in this process."""
        network = self._network
        if network is not None:
            return network
        with self._lock:
            if self._network is None:
                started = time.perf_counter()
                network = self.engine.build(self.manifest, self._data, self._prepared)
                built = time.perf_counter()
                crop = self.manifest.preprocessing.crop_size
                rows = network.run(np.zeros((1, 3, crop, crop), dtype=np.float32))
                if rows.shape != (1, self.manifest.num_classes):  # labels would be misread or overrun
                    raise IntegrityError(
                        f"{self.manifest.name}@{self.manifest.version} gives {list(rows.shape[1:])} scores per "
                        f"image but its manifest has {self.manifest.num_classes} labels")
                if self._golden is not None:
                    # int8 kernels differ between CPUs: prove this host gives the publisher's answers
                    check_golden(f"{self.manifest.name}@{self.manifest.version}", self.manifest.metadata["golden"],
                                 self._golden, self.manifest.preprocessing, self.manifest.output, network.run)
                self.load_ms["build"] = round((built - started) * 1000, 1)
                self.load_ms["warmup"] = round((time.perf_counter() - built) * 1000, 1)
                self._network, self._data, self._golden, self._prepared = network, None, None, None
                release_free_memory()  # the bytes and the runtime's build buffers are gone: return their pages
            return self._network

    def adopt(self, ahead: PreparedAhead) -> bool:
        """Take ``ahead`` for the build if it was made from this model's bytes by its engine (matching
        sha256); False if not, and the caller discards it."""
        artifact = self.manifest.artifacts[self.engine.artifact]
        if self._network is not None or (ahead.engine, ahead.sha256) != (self.engine.name, artifact.sha256):
            return False
        self._prepared = ahead.prepared
        self.load_ms["prepared_ahead"] = ahead.ms
        return True

    def forget_prepared(self) -> None:
        """Let go of what was prepared, without discarding it (a forked worker's build still uses it)."""
        self._prepared = None

    def prepare(self, data: bytes, *, max_pixels: int) -> np.ndarray:
        """Encoded image bytes to this model's input: safe decode (JPEG draft mode down to what
        the model needs), then preprocessing. The API, the batch job and training all call this."""
        return self.preprocess(self.decode(data, max_pixels=max_pixels))

    def decode(self, data: bytes, *, max_pixels: int) -> Image.Image:
        """The first half of :meth:`prepare`: an upright RGB image, decoded no larger than needed."""
        return decode_image(data, max_pixels=max_pixels, min_side=self.manifest.preprocessing.resize)

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """The second half of :meth:`prepare`: resize, centre crop and normalise for this model."""
        return preprocess(image, self.manifest.preprocessing)

    def outputs(self, inputs: list[np.ndarray]) -> np.ndarray:
        """The model's raw output rows for preprocessed inputs, run as one batch."""
        return self.network().run(_batch(inputs))

    def probabilities(self, inputs: list[np.ndarray]) -> np.ndarray:
        return scores(self.outputs(inputs), self.manifest.output)

    def classify(self, inputs: list[np.ndarray], k: int) -> list[list[dict]]:
        """Top-k predictions for preprocessed inputs, run as one batch."""
        return top_k(self.probabilities(inputs), self.manifest.labels, k)

    def features(self, inputs: list[np.ndarray]) -> np.ndarray:
        """The penultimate features (the graph's feature output) of preprocessed inputs, as one batch.

        EmbeddingsUnavailable if the model's graph has none (``publish migrate`` adds it).
        """
        self.require_features()
        name, version = self.key
        rows = self.network().features(_batch(inputs))
        if rows.shape[1:] != (self.manifest.feature_size,):
            raise IntegrityError(f"{name}@{version} gives {list(rows.shape[1:])} features per image but its "
                                 f"manifest says {self.manifest.feature_size}")
        return rows

    def require_features(self) -> None:
        """EmbeddingsUnavailable unless this model's graph has a feature output."""
        if self.manifest.feature_size is None:
            name = self.manifest.name
            raise EmbeddingsUnavailable(f"{name}@{self.manifest.version} has no feature output; run "
                                        f"`{MIGRATE_COMMAND} {name}` to republish it with one")

    def embed(self, inputs: list[np.ndarray]) -> np.ndarray:
        """L2-normalised penultimate features of preprocessed inputs (unit rows; a zero row stays zero)."""
        return l2_normalised(self.features(inputs))


@dataclass(frozen=True)
class PreparedAhead:
    """What an engine did of a build ahead of the load (:func:`prepare_snapshot`), and of which bytes."""

    engine: str
    sha256: str
    prepared: Prepared
    ms: float   # how long preparing took (beside the catalog read, not after it)

    def discard(self) -> None:
        self.prepared.discard()


def prepare_snapshot(snapshot: ModelSnapshot, options: EngineOptions) -> PreparedAhead | None:
    """Read ``snapshot``'s files (:meth:`ModelSnapshot.prefetch`) and do the fork-safe part of its
    model's build (:meth:`Engine.prepare`) before the catalog says whether the snapshot serves.

    A start-up thread runs this beside the main thread's imports and catalog read (file reads,
    hashing and ONNX Runtime's optimisation release the GIL). The engine checks the bytes before
    it prepares anything from them, as the load does. The load later takes the snapshot's
    bytes only if the store's manifest has their sha256, and the model adopts the result only for
    those same bytes (:meth:`LoadedModel.adopt`); otherwise it is discarded. None if there is
    nothing to prepare, or preparing failed (logged: the build then does all of it).
    """
    started = time.perf_counter()
    snapshot.prefetch()
    held, _ = snapshot.manifest()
    if held is None:
        return None
    try:
        engine = engine_for(held, options)
        read = snapshot.prefetched(engine.artifact)
        if read is None or read[1] != held.artifacts[engine.artifact].sha256:  # the load refuses such bytes
            return None
        prepared = engine.prepare(held, read[0])
    except Exception as error:  # noqa: BLE001 - an optimisation; the build will say what is wrong
        log.warning("could not prepare %s@%s from the snapshot ahead: %s", held.name, held.version, error)
        return None
    if prepared is None:
        return None
    return PreparedAhead(engine.name, read[1], prepared, round((time.perf_counter() - started) * 1000, 1))


def _batch(inputs: list[np.ndarray]) -> np.ndarray:
    """Preprocessed images as one batch; a lone image is a view of itself, not a copy."""
    return inputs[0][np.newaxis] if len(inputs) == 1 else np.stack(inputs)


def load_model(store: ObjectStore, manifest: Manifest, options: EngineOptions,
               snapshot: ModelSnapshot | None = None) -> LoadedModel:
    """Fetch, verify and check the artifact ``manifest``'s engine runs; build lazily on first use.

    The files come from ``snapshot`` (a bundle's copy, see :mod:`imgclassify.store.snapshot`)
    when it holds exactly the files ``manifest`` names, else from ``store``; either way their
    bytes are verified against ``manifest``, the store's.
    """
    timings: dict[str, float] = {}
    started = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal started
        now = time.perf_counter()
        timings[phase] = round((now - started) * 1000, 1)
        started = now

    engine = engine_for(manifest, options)
    # A model that declares golden answers (an int8 twin) is checked against them when it is built.
    kinds = [engine.artifact] + (["golden"] if "golden" in manifest.artifacts or "golden" in manifest.metadata else [])
    if "golden" in kinds and not ("golden" in manifest.metadata and "golden" in manifest.artifacts):
        raise IntegrityError(f"{manifest.name}@{manifest.version} has golden answers without golden.png "
                             "or the other way round")
    label = f"{manifest.name}@{manifest.version}"
    look = snapshot.take(manifest, kinds) if snapshot is not None else SnapshotLook(None, "no snapshot is set")
    files = look.files
    if files is not None:
        log.info("%s from the bundle's snapshot: %s", label, look.reason,
                 extra={"fields": {"model_source": "snapshot"}})
        lap("snapshot")  # read and verified
    else:
        log.log(logging.WARNING if look.broken else logging.INFO, "%s from the store: %s", label, look.reason,
                extra={"fields": {"model_source": "store"}})
        started = time.perf_counter()  # looking at the snapshot is not part of the download
        files = {kind: _download(store, manifest, kind) for kind in kinds}
        lap("download")
        for kind, data in files.items():
            try:
                verify_artifact(manifest, manifest.artifacts[kind], data)
            except IntegrityError as error:
                log.error("refusing to serve tampered or corrupt model files: %s", error.message)
                raise
        lap("verify")
    nbytes = engine.check(manifest, files[engine.artifact])
    lap("check")
    return LoadedModel(manifest, engine, nbytes, timings, _data=files[engine.artifact],
                       _golden=files.get("golden"))


def _download(store: ObjectStore, manifest: Manifest, kind: str) -> bytes:
    """Artifact ``kind`` of ``manifest`` (not yet verified); IntegrityError if missing or outside its version."""
    artifact = manifest.artifacts[kind]
    if not artifact.object.startswith(version_dir(manifest.name, manifest.version) + "/"):
        raise IntegrityError(f"manifest of {manifest.name}@{manifest.version} points outside its version: "
                             f"{artifact.object}")
    try:
        return store.download(artifact.object)
    except ObjectNotFound:
        raise IntegrityError(f"{artifact.object} of {manifest.name}@{manifest.version} is missing") from None
