"""Start-up of a function instance: settings, logging, the service, and the preload."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

from .engines import import_preferred_runtime
from .http import HttpApp
from .logs import configure_logging
from .memory import limit_malloc_arenas
from .routes import FUNCTIONS
from .settings import Settings

if TYPE_CHECKING:  # classify's modules: list_models never imports them
    from .models import LoadedModel
    from .registry import ModelRegistry

log = logging.getLogger(__name__)


def process_age_ms() -> float | None:
    """Milliseconds since this process started (Linux), to report the whole cold start."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return round((float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")) * 1000)
    except (OSError, ValueError, IndexError):
        return None


def preload_before_fork(registry: ModelRegistry) -> dict[str, float]:
    """Fetch, verify and check the default model now, while the module is imported.

    functions-framework imports this module in gunicorn's parent process and then forks
    the worker. A runtime's thread pool does not survive a fork, so the parent stops short
    of building the network: the worker builds it right after the fork, on a thread of its
    own (:func:`build_after_fork`), while gunicorn starts serving. The engine's runtime is
    imported on a thread meanwhile, joined before this returns. A storage error (a
    permission still propagating, an outage) is logged and the instance starts anyway: the
    first request that needs the model loads it. Returns each phase's time in milliseconds.
    """
    phases: dict[str, float] = {}
    started = time.perf_counter()
    # The runtime's import (CPU) overlaps the catalog read and the download (network).
    importer = threading.Thread(target=import_preferred_runtime, args=(registry.engine_options,),
                                name="import-runtime")
    importer.start()
    try:
        registry.catalog()
    except Exception as error:  # noqa: BLE001 - start-up must not die; requests will retry
        log.warning("could not read the catalog at start-up (%s); models load on first use", error)
        importer.join()  # joined before returning: no thread may cross the fork
        return phases
    phases["catalog"] = round((time.perf_counter() - started) * 1000, 1)
    model = registry.warm_up()
    started = time.perf_counter()
    importer.join()
    phases["import_runtime_wait"] = round((time.perf_counter() - started) * 1000, 1)
    if model is not None:
        phases.update(model.load_ms)
        os.register_at_fork(after_in_child=lambda: build_after_fork(model))
    return phases


def build_after_fork(model: LoadedModel) -> threading.Thread:
    """Build ``model``'s network on a thread of this (new) process; requests that need it wait."""
    def build() -> None:
        try:
            model.network()
        except Exception as error:  # noqa: BLE001 - the first request will report it
            log.warning("could not build %s@%s after the fork: %s", *model.key, error)
            return
        log.info("built %s@%s in the worker", *model.key,
                 extra={"fields": {"build_ms": model.load_ms, "pid": os.getpid()}})

    thread = threading.Thread(target=build, name="build-after-fork", daemon=True)
    thread.start()
    return thread


def build_app(function: str, settings: Settings) -> HttpApp:
    """The app of ``function`` over ``settings``; each imports only what its function serves."""
    if function == "classify":
        from .classify_app import ClassifyApp
        from .service import ClassifyService

        return ClassifyApp(ClassifyService.from_settings(settings))
    if function == "list_models":
        from .list_models_app import ListModelsApp
        from .listing import ModelListing

        return ListModelsApp(ModelListing.from_settings(settings), settings)
    raise ValueError(f"unknown function {function!r}; expected one of {', '.join(FUNCTIONS)}")


def create_http_app(function: str, settings: Settings | None = None) -> HttpApp:
    """Start an instance of ``function``: logging, settings from the environment, the app, the preload."""
    started = time.perf_counter()
    configure_logging()
    limit_malloc_arenas()
    settings = settings or Settings.from_env()
    app = build_app(function, settings)
    phases = {"python_and_imports": process_age_ms()}
    if function == "classify" and settings.preload_default_model:
        phases.update(preload_before_fork(app.service.registry))
    elif function == "classify":  # the runtime is part of the instance, not of the first model
        import_preferred_runtime(settings.engine_options())
    phases["create_app"] = round((time.perf_counter() - started) * 1000, 1)
    phases["process_age"] = process_age_ms()
    log.info("%s ready (store %s)", function, settings.model_store,
             extra={"fields": {"startup_ms": phases, "pid": os.getpid()}})
    return app
