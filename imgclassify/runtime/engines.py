"""Engines: turn a model's verified bytes into something that maps a float32 batch to scores.

One small interface, two implementations:

- ``onnxruntime`` (the default) runs ``model.onnx``: several times faster than PyTorch eager
  on a CPU, a 0.2 s import instead of 2 s, and no architecture library at all.
- ``torch`` runs ``weights.safetensors`` through the architecture the manifest names. It is
  kept for side-by-side benchmarks (``ENGINE=torch``) and for a model that cannot be exported;
  the deployed functions do not install it.

Nothing outside this module knows which engine runs a model: :func:`engine_for` picks one
from the manifest's artifacts, the engines installed here and the ``ENGINE`` setting, and the
caller gets back an :class:`Engine` and then a :class:`Network`.

Fork safety: functions-framework imports the function in gunicorn's parent process and forks
the worker after. A runtime's thread pool does not survive a fork (ONNX Runtime silently runs
single-threaded in the child; PyTorch's OpenMP pool can hang), so a :class:`Network` is built
lazily from the verified bytes, in the process that first runs it. The preload before the
fork downloads and verifies; :meth:`Network.build` then runs in the worker.
"""

from __future__ import annotations

import importlib.util
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgclassify.errors import EmbeddingsUnavailable, EngineUnavailable, IntegrityError
from imgclassify.settings import Settings
from imgclassify.store.catalog import Manifest

from .onnx_rules import FEATURE_OUTPUT

if TYPE_CHECKING:
    import numpy as np

DEFAULT_ENGINE = Settings.engine
MIGRATE_COMMAND = "python -m imgclassify.publish migrate"


@dataclass(frozen=True)
class EngineOptions:
    """How engines run: which one is preferred and how many threads one forward may use."""

    preferred: str = DEFAULT_ENGINE
    # One thread per forward by default (ENGINE_THREADS): concurrent requests then run side by
    # side, one per core, with no pool threads to wake or oversubscribe. More images per second
    # under load, a few ms more for a lone request (figures in docs/performance.md).
    threads: int = Settings.engine_threads  # 0: one per CPU this process may use
    spin: bool = Settings.engine_spin  # pool threads spin between operators (ENGINE_SPIN)

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineOptions:
        """The options the ``ENGINE``, ``ENGINE_THREADS`` and ``ENGINE_SPIN`` settings ask for."""
        return cls(settings.engine, settings.engine_threads, settings.engine_spin)

    def intra_op_threads(self) -> int:
        return self.threads or len(os.sched_getaffinity(0))


class Network(ABC):
    """A runnable model: float32 NCHW batch in, one row of scores per image out."""

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw output rows (logits, or probabilities if the manifest says so)."""

    def features(self, batch: np.ndarray) -> np.ndarray:
        """Each image's penultimate features (the graph's feature output), one row per image."""
        raise EmbeddingsUnavailable("this engine serves no features; the ONNX Runtime engine (ENGINE=onnxruntime) "
                                    "does")


class Engine(ABC):
    name: str
    artifact: str  # which of the manifest's artifacts this engine runs

    def __init__(self, options: EngineOptions) -> None:
        self.options = options

    @staticmethod
    @abstractmethod
    def installed() -> bool:
        """Whether this engine's runtime can be imported here."""

    @staticmethod
    @abstractmethod
    def import_runtime() -> None:
        """Import the runtime now (a cold start overlaps this with the model's download)."""

    @abstractmethod
    def check(self, manifest: Manifest, data: bytes) -> int:
        """Refuse bytes this engine must not run (IntegrityError); return the memory their weights take."""

    @abstractmethod
    def build(self, manifest: Manifest, data: bytes) -> Network:
        """A network from the artifact's checked bytes, in memory (no temporary files)."""


class OnnxRuntimeNetwork(Network):
    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        outputs = [output.name for output in session.get_outputs()]
        self.scores_name = outputs[0]
        self.has_features = FEATURE_OUTPUT in outputs[1:]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.scores_name], {self.input_name: batch})[0]

    def features(self, batch: np.ndarray) -> np.ndarray:
        if not self.has_features:
            raise EmbeddingsUnavailable(f"the graph has no {FEATURE_OUTPUT!r} output")
        return self.session.run([FEATURE_OUTPUT], {self.input_name: batch})[0]


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    artifact = "onnx"

    @staticmethod
    def installed() -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    @staticmethod
    def import_runtime() -> None:
        import onnxruntime  # noqa: F401

        from .onnx_rules import onnx_model_class

        onnx_model_class()  # the checks' parser, built once

    def session_options(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.options.intra_op_threads()
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning pool threads (only with more than one) trade CPU for a lone request's latency:
        # under concurrency they burn the cores other requests need (A/B in docs/performance.md).
        spin = self.options.spin and options.intra_op_num_threads > 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        # An arena per session keeps its largest activations for good: three Lite models held
        # 131 MB with one, 86 MB without (62 MB of ONNX), for no measurable speed on one thread.
        options.enable_cpu_mem_arena = False
        options.log_severity_level = 3
        return options

    def check(self, manifest: Manifest, data: bytes) -> int:
        from .onnx_rules import OnnxRuleViolation, check_onnx

        try:
            return check_onnx(data).initializer_bytes
        except OnnxRuleViolation as error:
            raise IntegrityError(f"model.onnx of {manifest.name}@{manifest.version} is refused: {error}") from None

    def build(self, manifest: Manifest, data: bytes) -> Network:
        import onnxruntime

        try:
            session = onnxruntime.InferenceSession(data, self.session_options(), providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise IntegrityError(f"model.onnx of {manifest.name}@{manifest.version} does not load: {error}") from None
        # The Python wrapper keeps the model's bytes for as long as the session lives, only to
        # rebuild it on another provider after a failure (its own source calls this "bad"): with
        # the CPU provider alone there is nothing to fall back to, so let the bytes go.
        session.disable_fallback()
        session._model_bytes = None
        return OnnxRuntimeNetwork(session)


class TorchNetwork(Network):
    def __init__(self, module) -> None:
        self.module = module

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(batch)).float().numpy()


class TorchEngine(Engine):
    name = "torch"
    artifact = "safetensors"

    @staticmethod
    def installed() -> bool:
        return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("safetensors") is not None

    @staticmethod
    def import_runtime() -> None:
        import safetensors.torch  # noqa: F401
        import torch  # noqa: F401

    def check(self, manifest: Manifest, data: bytes) -> int:
        from safetensors import SafetensorError, deserialize

        try:
            tensors = deserialize(data)  # parses the header and copies nothing it does not return
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise IntegrityError(f"weights of {manifest.name}@{manifest.version} are not a valid safetensors "
                                 f"file: {error}") from None
        return sum(len(tensor["data"]) for _, tensor in tensors)

    def build(self, manifest: Manifest, data: bytes) -> Network:
        import torch
        from safetensors.torch import load

        from .architectures import build_module

        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        return TorchNetwork(build_module(manifest.architecture, load(data)))


_ENGINE_TYPES: dict[str, type[Engine]] = {engine.name: engine for engine in (OnnxRuntimeEngine, TorchEngine)}
ENGINES = tuple(_ENGINE_TYPES)


def import_preferred_runtime(options: EngineOptions) -> None:
    """Import the preferred engine's runtime if it is installed (nothing starts a thread)."""
    engine = _ENGINE_TYPES[options.preferred]
    if engine.installed():
        engine.import_runtime()


def engine_for(manifest: Manifest, options: EngineOptions) -> Engine:
    """The engine that serves ``manifest`` here: the preferred one if the model has its artifact,
    else any installed engine whose artifact the model has; EngineUnavailable if none."""
    order = [options.preferred] + [name for name in ENGINES if name != options.preferred]
    for name in order:
        engine_type = _ENGINE_TYPES[name]
        if engine_type.artifact in manifest.artifacts and engine_type.installed():
            return engine_type(options)
    has = ", ".join(sorted(manifest.artifacts))
    raise EngineUnavailable(
        f"{manifest.name}@{manifest.version} has only {has}, which no engine installed here runs; "
        f"republish it with ONNX: `{MIGRATE_COMMAND} {manifest.name}`")
