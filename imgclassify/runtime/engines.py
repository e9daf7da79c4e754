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

Threads: a forward that starts while no other runs in this process, within a few tens of
milliseconds of the last one's end, gets every core (``ENGINE_THREADS``, by default one per
CPU): a lone request answers in about 0.6 of the time of one thread. A forward that starts
beside another gets one thread: the cores are busy with requests already, and pool threads
would only wait on each other. So does one after idle: pool threads that have slept a while
wake too slowly to gain anything. ONNX Runtime fixes a session's threads when it is built, so
an ONNX model is served by two sessions, one of each kind, over one copy of its optimised
weights (:class:`OnnxRuntimeNetwork`).

Fork safety: functions-framework imports the function in gunicorn's parent process and forks
the worker after. A runtime's thread pool does not survive a fork (ONNX Runtime silently runs
single-threaded in the child; PyTorch's OpenMP pool can hang), so a :class:`Network` is built
lazily from the verified bytes, in the process that first runs it. The preload before the
fork downloads and verifies, and may do an engine's :meth:`Engine.prepare` (work that starts no
thread); :meth:`Engine.build` then runs in the worker.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from imgclassify.errors import EmbeddingsUnavailable, EngineUnavailable, IntegrityError
from imgclassify.inflight import InFlight
from imgclassify.settings import Settings
from imgclassify.store.catalog import Manifest

from .onnx_rules import FEATURE_OUTPUT, GraphSignature

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_ENGINE = Settings.engine
MIGRATE_COMMAND = "python -m imgclassify.publish migrate"
# A lone forward of one or two images runs wide only if the last forward ended at most this long
# ago: on a 2-vCPU guest one on pool threads that had slept 40 ms or more was no faster than on
# one thread (Lite0 12.0-13.95 against 11.0-11.45 ms served; its int8 twin 8.55-10.45 against
# 5.8-6.3), for more CPU (docs/performance.md, "A lone forward after idle").
FOLLOWING_SECONDS = 0.03


@dataclass(frozen=True)
class EngineOptions:
    """How engines run: which one is preferred and how many threads one forward may use."""

    preferred: str = DEFAULT_ENGINE
    # The threads of a forward that runs alone (ENGINE_THREADS; 0: one per CPU). A forward that
    # starts beside another always runs on one (see the module's docstring).
    threads: int = Settings.engine_threads
    spin: bool = Settings.engine_spin  # a lone forward's pool threads spin between operators (ENGINE_SPIN)
    # Each session keeps its activations' memory between forwards (ONNX Runtime's arena): for a
    # process that runs one model in large batches (the batch job, training); see session_options.
    memory_arena: bool = False
    # A lone forward runs on every thread only if the last forward ended at most this long ago.
    following_seconds: float = FOLLOWING_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineOptions:
        """The options the ``ENGINE``, ``ENGINE_THREADS`` and ``ENGINE_SPIN`` settings ask for."""
        return cls(settings.engine, settings.engine_threads, settings.engine_spin)

    def for_batches(self) -> EngineOptions:
        """These options for one model run in large batches beside threads that prepare the next (the
        batch job): each session keeps an arena, and a lone forward's threads never spin, which would
        take the preparing threads' CPU (one task, 384 images: 111.8 against 115.0 images/s). A lone
        forward runs on every thread however long since the last: a batch's forward is long enough
        to pay for waking the pool (batches of 16 prepared on the forward's own thread: 95-98
        images/s against 65-72 on one thread after each pause)."""
        return replace(self, memory_arena=True, spin=False, following_seconds=math.inf)

    def intra_op_threads(self) -> int:
        """The threads of a forward that runs alone."""
        return self.threads or len(os.sched_getaffinity(0))


# The forwards in flight in this process, across all models (they share its cores).
FORWARDS = InFlight()
# A forward of the parent may not outlive the fork: the worker starts with none running.
os.register_at_fork(after_in_child=FORWARDS.reset)
# A forward runs wide only if none has overlapped another for this long: under load, one that
# happens to start alone would otherwise take every core from the requests decoding beside it.
QUIET_SECONDS = 0.1


class Network(ABC):
    """A runnable model: float32 NCHW batch in, one row of scores per image out."""

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw output rows (logits, or probabilities if the manifest says so)."""

    def features(self, batch: np.ndarray) -> np.ndarray:
        """Each image's penultimate features (the graph's feature output), one row per image."""
        raise EmbeddingsUnavailable("this engine serves no features; the ONNX Runtime engine (ENGINE=onnxruntime) "
                                    "does")


class Prepared(ABC):
    """The part of a build an engine did ahead, before a fork (:meth:`Engine.prepare`)."""

    @abstractmethod
    def discard(self) -> None:
        """Free what it holds outside this process's memory (no build will use it)."""


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
        """Refuse bytes this engine must not run (IntegrityError); return the memory their weights take.
        ``data`` has the sha256 ``manifest`` gives this engine's artifact (verified by the caller)."""

    def prepare(self, manifest: Manifest, data: bytes) -> Prepared | None:
        """Do the part of :meth:`build` that is safe before a fork (it starts no thread) now, on bytes
        that have ``manifest``'s sha256 but whose manifest the store has not confirmed yet (a
        snapshot's): refuse them as :meth:`check` would before parsing them further. None if there
        is nothing to do. The build of the same bytes takes it, in this process or a forked one."""
        return None

    @abstractmethod
    def build(self, manifest: Manifest, data: bytes, prepared: Prepared | None = None) -> Network:
        """A network from the artifact's checked bytes, and what :meth:`prepare` did of it for these
        same bytes, if anything (ONNX Runtime's optimised graph passes through a temporary directory,
        deleted before this returns)."""


# Without an arena (the service's sessions), one forward takes at most this many images. Per image a
# larger batch gains nothing on a CPU, and its activations outgrow the 32 MB up to which glibc
# takes a block from the heap, so they were mapped and faulted in anew at every forward: Lite0 on
# two threads 9.3-9.9 ms per image in forwards of 2 to 4 images, 14.2-14.9 in one of 8 to 32
# (1 666 minor faults per image); Lite2 19.4-21.2 against 23.3-25.4, and 3 images already faulted.
IMAGES_PER_FORWARD_WITHOUT_ARENA = 2


class OnnxRuntimeNetwork(Network):
    """A graph served by a ``wide`` session (a lone forward's threads) and a ``narrow`` one (one
    thread); each forward takes the one :data:`FORWARDS` says fits (a lone forward the wide one
    only within ``following_seconds`` of the last forward's end). With one thread to give, both
    are the same session. ``weights`` keeps alive the arrays the two sessions share."""

    def __init__(self, narrow, wide=None, weights: tuple = (), following_seconds: float = FOLLOWING_SECONDS) -> None:
        self.narrow, self.wide, self._weights = narrow, wide or narrow, weights
        self.following_seconds = following_seconds
        self.images_per_forward = (None if narrow.get_session_options().enable_cpu_mem_arena
                                   else IMAGES_PER_FORWARD_WITHOUT_ARENA)
        self.input_name = narrow.get_inputs()[0].name
        outputs = [output.name for output in narrow.get_outputs()]
        self.scores_name = outputs[0]
        self.has_features = FEATURE_OUTPUT in outputs[1:]

    @property
    def session(self):
        """The session a lone forward runs on."""
        return self.wide

    def _run(self, output: str, batch: np.ndarray) -> np.ndarray:
        step = self.images_per_forward
        if step is None or len(batch) <= step:
            return self._forward(output, batch)
        import numpy as np

        return np.concatenate([self._forward(output, batch[start:start + step])
                               for start in range(0, len(batch), step)])

    def _forward(self, output: str, batch: np.ndarray) -> np.ndarray:
        session = (self.wide if FORWARDS.enter(quiet_for=QUIET_SECONDS, following_within=self.following_seconds)
                   else self.narrow)
        try:
            return session.run([output], {self.input_name: batch})[0]
        finally:
            FORWARDS.leave()

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._run(self.scores_name, batch)

    def features(self, batch: np.ndarray) -> np.ndarray:
        if not self.has_features:
            raise EmbeddingsUnavailable(f"the graph has no {FEATURE_OUTPUT!r} output")
        return self._run(FEATURE_OUTPUT, batch)


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

    def session_options(self, threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning pool threads answer a lone forward faster; they stop when the last forward returns,
        # so an idle instance and the one-thread forwards beside it do not pay for them.
        spin = self.options.spin and threads > 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        # The service runs without: an arena per session keeps its largest activations for good
        # (three Lite models held 131 MB with one, 86 MB without, 62 MB of ONNX), for no measurable
        # speed on one image. Without one, a forward's activations come from malloc, and glibc maps
        # those of a large batch anew at every forward, so the service's forwards take a few images
        # at a time (IMAGES_PER_FORWARD_WITHOUT_ARENA); the batch job keeps an arena instead.
        options.enable_cpu_mem_arena = self.options.memory_arena
        options.log_severity_level = 3
        return options

    # The last bytes the rules passed, by their sha256, and their signature: a start from a snapshot
    # checks the same bytes ahead (prepare) and at the load (check); a parse of Lite0 takes 7-16 ms.
    _passed: tuple[str, GraphSignature] | None = None

    @classmethod
    def _signature(cls, manifest: Manifest, data: bytes) -> GraphSignature:
        from .onnx_rules import OnnxRuleViolation, check_onnx

        sha256 = manifest.artifacts[cls.artifact].sha256  # the bytes' own (see check and prepare)
        passed = cls._passed
        if passed is not None and passed[0] == sha256:
            return passed[1]
        try:
            signature = check_onnx(data)
        except OnnxRuleViolation as error:
            raise IntegrityError(f"model.onnx of {manifest.name}@{manifest.version} is refused: {error}") from None
        cls._passed = (sha256, signature)
        return signature

    def check(self, manifest: Manifest, data: bytes) -> int:
        signature = self._signature(manifest, data)
        # 8-bit weights are packed by each session of their own (see build)
        pair = self.options.intra_op_threads() > 1 and signature.eight_bit_weights
        return signature.initializer_bytes * (2 if pair else 1)

    def prepare(self, manifest: Manifest, data: bytes) -> OptimisedGraph | None:
        """ONNX Runtime's optimisation of a float graph with its weights shared (see :meth:`build`),
        most of a build's time, done on one thread, which starts no pool. The bytes are checked
        first, as :meth:`check` does (IntegrityError), so the runtime never parses a graph the rules
        refuse. None if the build would not share weights (one thread to give; 8-bit weights)."""
        if self.options.intra_op_threads() <= 1 or self._signature(manifest, data).eight_bit_weights:
            return None
        optimised, _ = self._optimise(data)
        if optimised.tensors is None:
            optimised.discard()
            return None
        return optimised

    def build(self, manifest: Manifest, data: bytes, prepared: Prepared | None = None) -> Network:
        """The narrow and wide sessions of ``data``.

        Float weights are shared: ONNX Runtime optimises the graph once (fusions, the CPU's
        blocked layout) and writes it with its weights to a temporary directory; both sessions
        then run that graph over one copy of the weights, read back into memory, with no further
        optimisation and no packing of their own (two sessions cost about what one did; the
        final Gemm unpacked is within 1e-6 and no slower). 8-bit weights are packed by the
        integer kernels at build, and an unpacked forward took 1.65 times as long, so a quantized
        graph gets two sessions of its own.
        """
        threads = self.options.intra_op_threads()
        if threads > 1:
            try:
                return self._shared_pair(data, threads, prepared if isinstance(prepared, OptimisedGraph) else None)
            except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors
                # no temporary directory, or a graph the runtime cannot save: one session serves
                # every forward, as long as the model itself loads
                log.warning("%s@%s: one session for every forward (%s)", manifest.name, manifest.version, error)
        try:
            return OnnxRuntimeNetwork(self._session(data, self.session_options(threads)))
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise IntegrityError(f"model.onnx of {manifest.name}@{manifest.version} does not load: {error}") from None

    @staticmethod
    def _session(source, options):
        import onnxruntime

        session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        # The Python wrapper keeps the model's bytes for as long as the session lives, only to
        # rebuild it on another provider after a failure (its own source calls this "bad"): with
        # the CPU provider alone there is nothing to fall back to, so let the bytes go.
        session.disable_fallback()
        session._model_bytes = None
        return session

    def _optimise(self, data: bytes):
        """``data``'s graph as ONNX Runtime optimises it, in a new temporary directory, and the one-thread
        session that optimised it."""
        import numpy as np

        from .onnx_rules import external_tensors

        directory = tempfile.mkdtemp(prefix="imgclassify-onnx-")
        try:
            options = self.session_options(1)
            options.optimized_model_filepath = os.path.join(directory, OptimisedGraph.GRAPH_FILE)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             OptimisedGraph.WEIGHTS_FILE)
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "64")
            first = self._session(data, options)
            with open(options.optimized_model_filepath, "rb") as handle:
                graph = handle.read()
            weights = os.path.join(directory, OptimisedGraph.WEIGHTS_FILE)  # not written when every tensor is tiny
            blob = np.fromfile(weights, dtype=np.uint8) if os.path.exists(weights) else np.empty(0, np.uint8)
            return OptimisedGraph(directory, blob, external_tensors(graph, blob)), first
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise

    def _shared_pair(self, data: bytes, threads: int, optimised: OptimisedGraph | None = None) -> OnnxRuntimeNetwork:
        import onnxruntime

        first = None
        if optimised is None or not optimised.on_disk():  # e.g. a second worker, forked after the first's build
            optimised, first = self._optimise(data)
        try:
            if optimised.tensors is None:  # 8-bit weights, or a type numpy cannot hold: sessions of their own
                return OnnxRuntimeNetwork(first or self._session(data, self.session_options(1)),
                                          self._session(data, self.session_options(threads)),
                                          following_seconds=self.options.following_seconds)
            del first
            shared = [(name, onnxruntime.OrtValue.ortvalue_from_numpy(array)) for name, array in optimised.tensors]
            sessions = []
            for count in (1, threads):
                options = self.session_options(count)
                options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
                options.add_session_config_entry("session.disable_prepacking", "1")
                for name, value in shared:
                    options.add_initializer(name, value)
                # built from the file while the weights file is there (ONNX Runtime checks that it
                # exists); every tensor in it is given above, so it is not read
                sessions.append(self._session(optimised.graph_path, options))
        finally:
            optimised.discard()
        return OnnxRuntimeNetwork(*sessions, weights=(optimised.blob, shared),
                                  following_seconds=self.options.following_seconds)


@dataclass
class OptimisedGraph(Prepared):
    """ONNX Runtime's optimised graph of one model, in ``directory`` beside its weights file, and those
    weights read back as arrays over one buffer (``tensors``; None for 8-bit weights, which each
    session packs for itself). A plain directory rather than a TemporaryDirectory: one prepared
    before a fork is used and deleted by the forked worker's build, and the parent must not delete
    it when it lets go of its copy."""

    GRAPH_FILE = "model.onnx"
    WEIGHTS_FILE = "weights.bin"

    directory: str
    blob: np.ndarray
    tensors: list[tuple[str, np.ndarray]] | None

    @property
    def graph_path(self) -> str:
        return os.path.join(self.directory, self.GRAPH_FILE)

    def on_disk(self) -> bool:
        return os.path.exists(self.graph_path)

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


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

    def build(self, manifest: Manifest, data: bytes, prepared: Prepared | None = None) -> Network:
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
