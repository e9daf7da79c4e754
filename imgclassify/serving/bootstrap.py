"""Start-up of a function instance: logging, settings, the function's app and its warm-up."""

from __future__ import annotations

import importlib
import logging
import os
import time
from types import ModuleType

from imgclassify.logs import configure_logging
from imgclassify.memory import freeze_collected_objects_at_fork, tune_malloc
from imgclassify.settings import Settings
from imgclassify.store.read_ahead import ReadAhead

from .http import HttpApp
from .routes import FUNCTIONS

log = logging.getLogger(__name__)


def process_age_ms() -> float | None:
    """Milliseconds since this process started (Linux), to report the whole cold start."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return round((float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")) * 1000)
    except (OSError, ValueError, IndexError):
        return None


def one_blas_thread() -> None:
    """Have numpy's OpenBLAS start no threads of its own, unless the environment says otherwise.

    At its import OpenBLAS starts a thread for each CPU but the first, and they spin a while: on 2
    vCPUs (Zen 4) ``import numpy`` took 166-189 ms of CPU instead of 62-75, in a start that keeps
    both CPUs busy until the fork. Nothing a function runs calls BLAS (ONNX Runtime has its own
    kernels and threads). Must run before numpy's first import, which the function's app module
    makes.
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


# Each function's app module, imported only by that function (list_models never imports the
# runtime). Each module has ``build(settings) -> HttpApp`` and ``warm(app, settings, read_ahead)
# -> phases``, the start-up work of an instance before it serves (classify: the preload before
# the fork).
APP_MODULES = {
    "classify": "imgclassify.serving.classify_app",
    "list_models": "imgclassify.serving.list_models_app",
}
# The functions whose start-up reads the bucket (classify's preload): a process forked before their
# app's imports makes those reads meanwhile, where it can (imgclassify.store.read_ahead).
READ_AT_START = frozenset({"classify"})


def app_module(function: str) -> ModuleType:
    """The module that builds ``function``'s app; ValueError for a function that does not exist."""
    if function not in APP_MODULES:
        raise ValueError(f"unknown function {function!r}; expected one of {', '.join(FUNCTIONS)}")
    return importlib.import_module(APP_MODULES[function])


def build_app(function: str, settings: Settings) -> HttpApp:
    """The app of ``function`` over ``settings``, with no start-up work (tests build apps this way)."""
    return app_module(function).build(settings)


def create_http_app(function: str, settings: Settings | None = None) -> HttpApp:
    """Start an instance of ``function``: logging, settings from the environment, the app, its warm-up."""
    started = time.perf_counter()
    one_blas_thread()
    configure_logging()
    tune_malloc()
    freeze_collected_objects_at_fork()
    settings = settings or Settings.from_env()
    read_ahead = ReadAhead.start(settings) if function in READ_AT_START else None
    module = app_module(function)
    app = module.build(settings)
    phases = {"python_and_imports": process_age_ms()}
    phases.update(module.warm(app, settings, read_ahead))
    phases["create_app"] = round((time.perf_counter() - started) * 1000, 1)
    phases["process_age"] = process_age_ms()
    log.info("%s ready (store %s)", function, settings.model_store,
             extra={"fields": {"startup_ms": phases, "pid": os.getpid()}})
    return app
