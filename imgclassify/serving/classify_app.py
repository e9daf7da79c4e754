"""The ``classify`` function: its routes (``POST /v1/classify``, ``POST /v1/models/{name}:classify`` and
``:embed``) and its start."""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref

from werkzeug.wrappers import Request, Response

from imgclassify.imaging.decode import pixel_budget, register_decoders
from imgclassify.runtime.engines import EngineOptions, import_preferred_runtime
from imgclassify.runtime.models import LoadedModel, PreparedAhead, prepare_snapshot
from imgclassify.runtime.registry import ModelRegistry
from imgclassify.settings import Settings
from imgclassify.store.objects import ObjectStore
from imgclassify.store.read_ahead import ReadAhead

from .http import HttpApp, json_response
from .request_parsing import parse_classify_request, parse_normalize
from .routes import Route
from .service import ClassifyService

log = logging.getLogger(__name__)

# A forked worker connects its store (imports the storage client) once it has answered a request,
# or after this long without one: the import holds the GIL for most of its 170-190 ms, and beside
# the first request it made that request 15-35 ms slower.
CONNECT_LATEST_SECONDS = 5.0


class ClassifyApp(HttpApp):
    function = "classify"

    def __init__(self, service: ClassifyService) -> None:
        super().__init__(service.settings)
        self.service = service
        self.answered = threading.Event()  # set once this process has answered a request

    def handle(self, route: Route, params: dict[str, str], request: Request, context: dict) -> Response:
        settings = self.settings
        parsed = parse_classify_request(request, path_model=params.get("name"), max_bytes=settings.max_request_bytes,
                                        max_images=settings.max_images_per_request)
        # Every image this request decodes, wherever it comes from, is charged to one budget.
        if route.operation == "embedWithModel":
            normalize = parse_normalize(request.args.get("normalize"))
            operation = functools.partial(self.service.embed, normalize=normalize)
        else:
            operation = self.service.classify
        with pixel_budget(settings.max_request_pixels):
            result = operation(parsed)
        context.update(model=result["model"]["name"], version=result["model"]["version"],
                       cold=result["cold_start"], images=len(parsed.images))
        self.answered.set()
        return json_response(result)


def build(settings: Settings) -> ClassifyApp:
    """The classify app over ``settings``: its registry, image sources and limits."""
    return ClassifyApp(ClassifyService.from_settings(settings))


def warm(app: ClassifyApp, settings: Settings, read_ahead: ReadAhead | None = None) -> dict[str, float]:
    """Start-up before serving: the default model's preload, or at least what every request uses.
    ``read_ahead``: the preload's reads of the bucket, started before the app's imports."""
    registry = app.service.registry
    if settings.preload_default_model:
        return preload_before_fork(registry, read_ahead, app.answered)
    import_request_path(registry.engine_options)
    return {}


def import_request_path(options: EngineOptions) -> None:
    """What requests use that is imported on first use: part of the instance, not of its first requests
    (the engine's runtime, Pillow's decoders). Starts no thread."""
    import_preferred_runtime(options)
    register_decoders()


def preload_before_fork(registry: ModelRegistry, read_ahead: ReadAhead | None = None,
                        answered: threading.Event | None = None) -> dict[str, float]:
    """Fetch, verify and check the default model now, while the module is imported.

    functions-framework imports this module in gunicorn's parent process and then forks
    the worker. A runtime's thread pool does not survive a fork, so the parent stops short
    of building the network: the worker builds it right after the fork, on a thread of its
    own (:func:`get_ready_after_fork`), while gunicorn starts serving. Meanwhile two threads
    overlap the catalog read (the storage client's import, then the network; with
    ``read_ahead``, the wait for the process that made the reads since before the app's imports,
    :mod:`imgclassify.store.read_ahead`): one imports what requests use
    (:func:`import_request_path`); on the other the bundle's model snapshot, if any, is read
    and hashed and its engine does the part of the build that starts no thread (ONNX Runtime's
    optimisation: :func:`~imgclassify.runtime.models.prepare_snapshot`). Both are joined before
    this returns, because no thread may cross the fork. The snapshot serves only if it matches
    the catalog's default (:mod:`imgclassify.store.snapshot`). A storage error (a permission
    still propagating, an outage) is logged and the instance starts anyway: the first request
    that needs the model loads it. ``answered`` tells the worker when to connect its store (see
    :func:`get_ready_after_fork`). Returns each phase's time in milliseconds.
    """
    phases: dict[str, float] = {}
    started = time.perf_counter()
    ahead: list[PreparedAhead] = []
    helpers = [threading.Thread(target=import_request_path, args=(registry.engine_options,),
                                name="import-request-path")]
    if registry.snapshot is not None:
        snapshot, options = registry.snapshot, registry.engine_options

        def read_and_prepare() -> None:
            prepared = prepare_snapshot(snapshot, options)
            ahead.extend([prepared] if prepared is not None else [])

        helpers.append(threading.Thread(target=read_and_prepare, name="read-snapshot"))
    for helper in helpers:
        helper.start()
    model = None
    try:
        if read_ahead is not None:
            phases["read_ahead_wait"] = read_ahead.hand_to(registry.store)
        registry.catalog_view.catalog()
    except Exception as error:  # noqa: BLE001 - start-up must not die; requests will retry
        log.warning("could not read the catalog at start-up (%s); models load on first use", error)
    else:
        phases["catalog"] = round((time.perf_counter() - started) * 1000, 1)
        started = time.perf_counter()
        for helper in helpers[1:]:
            helper.join()  # the snapshot's bytes, before the load looks at them
        phases["read_snapshot_wait"] = round((time.perf_counter() - started) * 1000, 1)
        model = registry.warm_up()
    finally:
        if read_ahead is not None:
            read_ahead.forget(registry.store)
        for helper in helpers:
            helper.join()  # joined before returning: no thread may cross the fork
        if registry.snapshot is not None:
            registry.snapshot.release()  # a load that failed before looking at the snapshot left its bytes
        for prepared in ahead:
            if model is None or not model.adopt(prepared):
                prepared.discard()
    if model is not None:
        phases.update(model.load_ms)
    # A weak reference: the hooks outlive the fork, and the worker's cache may evict the model
    # later; a strong one kept its network (tens of MB) alive in the worker for good.
    preloaded = weakref.ref(model) if model is not None else lambda: None
    store = registry.store

    def in_child() -> None:
        get_ready_after_fork(preloaded(), store, answered)

    def in_parent() -> None:
        if (alive := preloaded()) is not None:
            alive.forget_prepared()  # the worker's build deletes its files

    os.register_at_fork(after_in_child=in_child, after_in_parent=in_parent)
    return phases


def get_ready_after_fork(model: LoadedModel | None, store: ObjectStore,
                         answered: threading.Event | None = None) -> threading.Thread:
    """On a thread of this (new) process, build ``model``'s network (requests that need it wait),
    then, once ``answered`` is set (at most :data:`CONNECT_LATEST_SECONDS` later), connect ``store``:
    its client library, which a read ahead spared the parent, is imported then rather than by a
    request (the first catalog refresh, or a model not loaded yet)."""
    def get_ready() -> None:
        if model is not None:
            try:
                model.network()
            except Exception as error:  # noqa: BLE001 - the first request will report it
                log.warning("could not build %s@%s after the fork: %s", *model.key, error)
            else:
                log.info("built %s@%s in the worker", *model.key,
                         extra={"fields": {"build_ms": model.load_ms, "pid": os.getpid()}})
        if answered is not None:
            answered.wait(CONNECT_LATEST_SECONDS)
        try:
            store.connect()
        except Exception as error:  # noqa: BLE001 - the first read will report it
            log.warning("could not connect to %s after the fork: %s", store.uri, error)

    thread = threading.Thread(target=get_ready, name="ready-after-fork", daemon=True)
    thread.start()
    return thread
