"""A function's app built in this process over a bucket of the emulator, as a WSGI test client."""

from __future__ import annotations

from werkzeug.test import Client
from werkzeug.wrappers import Request

from imgclassify.logs import configure_logging
from imgclassify.serving.bootstrap import build_app
from imgclassify.settings import Settings


def client_for(bucket: str, function: str = "classify", **env: str) -> Client:
    """``function``'s app in this process, over ``bucket``, as a WSGI test client."""
    settings = Settings.from_env({"MODEL_STORE": f"gs://{bucket}", "PRELOAD_DEFAULT_MODEL": "false",
                                  "STORAGE_RETRY_SECONDS": "1", **env})
    configure_logging()
    app = build_app(function, settings)
    return Client(lambda environ, start_response: app(Request(environ))(environ, start_response))
