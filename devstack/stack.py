"""The whole local stack as one object: emulator, published models, both functions, router."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from imgclassify.serving.routes import FUNCTIONS

from .emulator import StorageEmulator
from .gateway import GatewayPolicy
from .processes import REPO, free_port, spawn, stop, wait_until_answers
from .router import Router, RouterServer
from .terraform import function_threads


def function_command(function: str, port: int, source_dir: Path | None = None) -> list[str]:
    """The functions-framework command that serves ``function`` on 127.0.0.1:``port``."""
    source = (source_dir or REPO / "functions" / function) / "main.py"
    executable = Path(sys.executable).with_name("functions-framework")
    return [str(executable), "--target", function, "--source", str(source), "--host", "127.0.0.1",
            "--port", str(port)]


@dataclass
class LocalStack:
    """Starts what ``make dev`` and the integration tests need, on 127.0.0.1 only."""

    bucket: str = "imgclassify-models"
    router_port: int | None = None
    emulator_port: int | None = None
    data_dir: Path | None = None          # None: the emulator keeps everything in memory
    log_dir: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    bundled_models: list[str] | None = None   # None: all three
    # The gateway's keys and quotas (devstack/gateway.py): checked when api_key is set, with the
    # Terraform defaults of the quota variables unless quota_values names them.
    api_key: str | None = None
    quota_values: dict[str, int] = field(default_factory=dict)
    api_key_referrers: tuple[str, ...] = ()   # the key's referrer restriction (none by default)

    emulator: StorageEmulator | None = None   # pass a running one to share it
    functions: dict[str, subprocess.Popen] = field(default_factory=dict)
    function_urls: dict[str, str] = field(default_factory=dict)
    _server: object = None
    _owns_emulator: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.router_port}"

    @property
    def model_store(self) -> str:
        return f"gs://{self.bucket}"

    def env(self) -> dict[str, str]:
        """What a function process needs to reach the emulator."""
        return {"STORAGE_EMULATOR_HOST": self.emulator.url, "MODEL_STORE": self.model_store,
                "GOOGLE_CLOUD_PROJECT": "local-dev", **self.extra_env}

    def function_env(self, function: str) -> dict[str, str]:
        """What ``function``'s process gets: :meth:`env`, and the gunicorn threads a first deploy
        gives it (its concurrency), not functions-framework's 4 per CPU."""
        return {"THREADS": str(function_threads(function)), **self.env()}

    def start_storage(self, log=print) -> None:
        """Start the emulator, create the bucket and publish the bundled models that are missing."""
        from imgclassify.publish.sources import publish_bundled
        from imgclassify.store.objects import open_store

        if self.emulator is None:
            log_path = self.log_dir / "emulator.log" if self.log_dir else None
            self.emulator = StorageEmulator(self.emulator_port, self.data_dir, log_path).start()
            self._owns_emulator = True
        os.environ["STORAGE_EMULATOR_HOST"] = self.emulator.url
        self.emulator.create_bucket(self.bucket)
        publish_bundled(open_store(self.model_store), self.bundled_models, log=log)

    def publish_int8_twins(self, log=print) -> None:
        """Publish the int8 twin of each bundled model that has none for its current version."""
        from imgclassify.publish.quantize import publish_missing_twins
        from imgclassify.publish.sources import BUNDLED
        from imgclassify.store.objects import open_store

        publish_missing_twins(open_store(self.model_store), self.bundled_models or list(BUNDLED), log=log)

    def start_function(self, function: str, env: dict[str, str] | None = None,
                       source_dir: Path | None = None) -> str:
        """Start ``function`` under functions-framework; return its URL once it answers."""
        port = free_port()
        output = open(self.log_dir / f"{function}.log", "ab") if self.log_dir else None
        process = spawn(function_command(function, port, source_dir),
                        env={**self.function_env(function), **(env or {})},
                        stdout=output, stderr=subprocess.STDOUT if output else None)
        self.functions[function] = process
        url = f"http://127.0.0.1:{port}"
        wait_until_answers(url + "/", process, timeout=180)
        self.function_urls[function] = url
        return url

    def start_router(self) -> None:
        self.router_port = self.router_port or free_port()
        gateway = (GatewayPolicy.from_template(self.api_key, self.quota_values, self.api_key_referrers)
                   if self.api_key else None)
        router = Router(self.function_urls, REPO / "web", gateway)
        self._server = RouterServer(("127.0.0.1", self.router_port), router, self.max_body_bytes())
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def behind_gateway(self, api_key: str, quota_values: dict[str, int] | None = None,
                       api_key_referrers: tuple[str, ...] = ()) -> LocalStack:
        """A second router over this stack's running functions, checking keys and quotas as
        API Gateway does; its ``stop`` stops that router only."""
        other = LocalStack(bucket=self.bucket, emulator=self.emulator, extra_env=self.extra_env,
                           api_key=api_key, quota_values=dict(quota_values or {}),
                           api_key_referrers=tuple(api_key_referrers))
        other.function_urls = self.function_urls
        other.start_router()
        return other

    def max_body_bytes(self) -> int:
        """The router's body limit: the functions' own, plus room for multipart framing, so the
        functions answer every over-limit body they can with their precise 413."""
        from imgclassify.settings import Settings

        return Settings.from_env({**os.environ, **self.env()}).max_request_bytes + 2**20

    def serve(self) -> LocalStack:
        """Start every function and the router in front of them (storage is already up)."""
        for function in FUNCTIONS:
            self.start_function(function)
        self.start_router()
        return self

    def start(self, log=print) -> LocalStack:
        self.start_storage(log=log)
        return self.serve()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for process in self.functions.values():
            stop(process)
        self.functions.clear()
        if self.emulator is not None and self._owns_emulator:
            self.emulator.stop()
