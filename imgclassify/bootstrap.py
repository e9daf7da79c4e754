"""Start-up of a function instance: settings, logging, the service, and the preload."""

from __future__ import annotations

import logging
import time

from .http import HttpApp
from .logs import configure_logging
from .service import Service
from .settings import Settings

log = logging.getLogger(__name__)


def preload_before_fork(service: Service) -> None:
    """Load the default model now, while the module is imported, so no request waits for it.

    functions-framework imports this module in gunicorn's parent process and then forks
    the worker. PyTorch's OpenMP pool hangs in a child forked after the parent ran a
    multi-threaded region, so the warm-up runs single-threaded and the thread count is
    restored afterwards: the worker starts its own pool on its first request.
    """
    import torch

    threads = service.settings.torch_threads or torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        service.registry.warm_up()
    finally:
        torch.set_num_threads(threads)


def create_http_app(function: str, settings: Settings | None = None) -> HttpApp:
    """Build the app for ``function`` ("classify" or "list_models") from the environment."""
    started = time.perf_counter()
    configure_logging()
    settings = settings or Settings.from_env()
    service = Service.from_settings(settings)
    if function == "classify" and settings.preload_default_model:
        preload_before_fork(service)
    log.info("%s ready in %.0f ms (store %s)", function, (time.perf_counter() - started) * 1000,
             settings.model_store)
    return HttpApp(service, function)
