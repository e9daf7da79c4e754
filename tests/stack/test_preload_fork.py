"""Start-up of the real classify function under functions-framework (gunicorn: import and preload
in the parent, then fork the worker): the worker serves what the parent preloaded, and a preload
that fails does not stop the instance."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from devstack.stack import LocalStack
from tests.support.counting_proxy import CountingProxy
from tests.support.photos import CAT_INDICES, cat_jpeg

pytestmark = pytest.mark.integration


def log_entries(path: Path) -> list[dict]:
    """The JSON log lines the function wrote (gunicorn's own lines are not JSON)."""
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def wait_for_entry(path: Path, message_start: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [entry for entry in log_entries(path) if entry["message"].startswith(message_start)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no log line {message_start!r} within {timeout} s:\n{path.read_text()[-3000:]}")


def children(pid: int) -> set[int]:
    return {int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()}


def classify(url: str) -> requests.Response:
    return requests.post(f"{url}/v1/models/efficientnet_lite0:classify", data=cat_jpeg(),
                         headers={"Content-Type": "image/jpeg"}, timeout=120)


def test_the_forked_worker_serves_the_model_the_parent_preloaded_warm(emulator, models_bucket, tmp_path):
    log = tmp_path / "classify.log"
    stack = LocalStack(bucket=models_bucket, emulator=emulator, log_dir=tmp_path)
    try:
        url = stack.start_function("classify", env={"DEFAULT_MODEL": "efficientnet_lite0",
                                                    "PRELOAD_DEFAULT_MODEL": "true"})
        parent = stack.functions["classify"].pid
        built = wait_for_entry(log, "built efficientnet_lite0@1 in the worker")
        workers = children(parent)
        first = classify(url)
    finally:
        stack.stop()

    assert first.status_code == 200, first.text
    assert first.json()["cold_start"] is False
    assert first.json()["results"][0]["predictions"][0]["index"] in CAT_INDICES
    entries = log_entries(log)
    ready = next(entry for entry in entries if entry["message"].startswith("classify ready"))
    # The parent downloaded, verified and checked the model, and built nothing...
    assert ready["pid"] == parent
    assert {"catalog", "download", "verify", "check"} <= set(ready["startup_ms"])
    assert not {"build", "warmup"} & set(ready["startup_ms"])
    # ...the worker, forked after, built the network itself and answered the request.
    assert built["pid"] in workers and built["pid"] != parent
    assert {"download", "verify", "check", "build", "warmup"} <= set(built["build_ms"])
    assert entries.index(ready) < entries.index(built)


def test_a_failed_preload_does_not_stop_start_up_and_the_model_is_served_once_storage_is_back(
        emulator, models_bucket, tmp_path):
    proxy = CountingProxy(emulator.url)  # not up yet: its port refuses connections, like storage down
    log = tmp_path / "classify.log"
    stack = LocalStack(bucket=models_bucket, emulator=emulator, log_dir=tmp_path)
    try:
        url = stack.start_function("classify", env={
            "STORAGE_EMULATOR_HOST": proxy.url, "DEFAULT_MODEL": "efficientnet_lite0",
            "PRELOAD_DEFAULT_MODEL": "true", "STORAGE_RETRY_SECONDS": "1", "STORAGE_TIMEOUT_SECONDS": "2"})
        while_down = classify(url)
        proxy.up()
        after = classify(url)
    finally:
        stack.stop()
        proxy.down()

    assert while_down.status_code == 503
    assert while_down.json()["error"]["code"] == "STORAGE_UNAVAILABLE"
    assert int(while_down.headers["Retry-After"]) > 0
    assert after.status_code == 200, after.text
    assert after.json()["cold_start"] is True
    assert after.json()["results"][0]["predictions"][0]["index"] in CAT_INDICES
    warnings = [entry for entry in log_entries(log) if entry["severity"] == "WARNING"]
    assert any(entry["message"].startswith("could not read the catalog at start-up") for entry in warnings)
