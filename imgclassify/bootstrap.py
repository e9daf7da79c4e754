"""Start-up of a function instance: settings, logging, the service, and the preload."""

from __future__ import annotations

import logging
import os
import time

from .http import HttpApp
from .logs import configure_logging
from .memory import limit_malloc_arenas
from .service import Service
from .settings import Settings

log = logging.getLogger(__name__)


def process_age_ms() -> float | None:
    """Milliseconds since this process started (Linux), to report the whole cold start."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return round((float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")) * 1000)
    except (OSError, ValueError, IndexError):
        return None


def preload_before_fork(service: Service) -> dict[str, float]:
    """Load the default model now, while the module is imported, so no request waits for it.

    functions-framework imports this module in gunicorn's parent process and then forks
    the worker. PyTorch's OpenMP pool hangs in a child forked after the parent ran a
    multi-threaded region, so the warm-up runs single-threaded and the thread count is
    restored afterwards: the worker starts its own pool on its first request.
    Returns the time each phase took, in milliseconds.
    """
    started = time.perf_counter()
    import torch

    phases = {"import_torch": round((time.perf_counter() - started) * 1000, 1)}
    threads = service.settings.torch_threads or torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        started = time.perf_counter()
        service.registry.catalog()
        phases["catalog"] = round((time.perf_counter() - started) * 1000, 1)
        model = service.registry.warm_up()
        if model is not None:
            phases.update(model.load_ms)
    finally:
        torch.set_num_threads(threads)
    return phases


def create_http_app(function: str, settings: Settings | None = None) -> HttpApp:
    """Build the app for ``function`` ("classify" or "list_models") from the environment."""
    started = time.perf_counter()
    configure_logging()
    limit_malloc_arenas()
    settings = settings or Settings.from_env()
    service = Service.from_settings(settings)
    phases = {"python_and_imports": process_age_ms()}
    if function == "classify" and settings.preload_default_model:
        phases.update(preload_before_fork(service))
    elif function == "classify" and settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)  # only a setting: no thread starts before the fork
    phases["create_app"] = round((time.perf_counter() - started) * 1000, 1)
    phases["process_age"] = process_age_ms()
    log.info("%s ready (store %s)", function, settings.model_store,
             extra={"fields": {"startup_ms": phases}})
    return HttpApp(service, function)
