"""Shared fixtures: the real storage emulator, buckets, published models, the running stack.

Everything listens on 127.0.0.1 and is stopped in teardown.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from devstack.emulator import StorageEmulator
from devstack.stack import LocalStack
from imgclassify.publish.sources import publish_bundled
from imgclassify.store.objects import GcsStore

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def emulator():
    """fake-gcs-server in memory; STORAGE_EMULATOR_HOST points every client at it."""
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    with StorageEmulator() as running:
        os.environ["STORAGE_EMULATOR_HOST"] = running.url
        yield running
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture
def new_bucket(emulator):
    """A factory of fresh, empty, uniquely named buckets on the emulator."""

    def make(prefix: str = "test") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        emulator.create_bucket(name)
        return name

    return make


@pytest.fixture
def gcs_store(new_bucket) -> GcsStore:
    """An empty GcsStore on the emulator, with short retries so failures show quickly."""
    return GcsStore(new_bucket(), retry_seconds=2.0, timeout_seconds=10.0)


@pytest.fixture(scope="session")
def models_bucket(emulator) -> str:
    """A bucket holding the three bundled EfficientNet-Lite models, published once per session."""
    name = "bundled-models"
    emulator.create_bucket(name)
    publish_bundled(GcsStore(name), log=lambda _: None)
    return name


@pytest.fixture(scope="session")
def stack(emulator, models_bucket, tmp_path_factory):
    """Both functions under functions-framework and the local router, over the bundled models."""
    log_dir = tmp_path_factory.mktemp("stack-logs")
    # URL input is off: fuzzed URLs must not make the stack resolve or reach any host (the
    # fetcher has its own tests, behind a socket hook that allows 127.0.0.1 only).
    local = LocalStack(bucket=models_bucket, emulator=emulator, log_dir=log_dir,
                       extra_env={"ALLOWED_GCS_BUCKETS": "photos-allowed", "CORS_ALLOWED_ORIGINS":
                                  "http://allowed.example", "URL_FETCH_ENABLED": "false"})
    try:
        yield local.start(log=lambda _: None)
    finally:
        local.stop()


LOCAL_API_KEY = "local-test-key-7f3a"


@pytest.fixture(scope="session")
def keyed_stack(stack):
    """The stack's functions behind a router that checks keys and quotas as API Gateway does
    (LOCAL_API_KEY), with quotas no test run spends."""
    keyed = stack.behind_gateway(LOCAL_API_KEY, {"classify_requests_per_minute": 10**6,
                                                 "list_models_requests_per_minute": 10**6})
    yield keyed
    keyed.stop()


@pytest.fixture
def gateway_with_quotas(stack):
    """``gateway_with_quotas(classify=N, list_models=M)``: a keyed router with small quotas, fresh for the test."""
    started = []

    def start(classify: int = 120, list_models: int = 600):
        started.append(stack.behind_gateway(LOCAL_API_KEY, {"classify_requests_per_minute": classify,
                                                            "list_models_requests_per_minute": list_models}))
        return started[-1]

    yield start
    for each in started:
        each.stop()
