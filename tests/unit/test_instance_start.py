"""What a function instance's start (serving/bootstrap.py) leaves in the process gunicorn forks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from imgclassify.publish.catalog_writes import publish
from imgclassify.store.objects import LocalStore
from imgclassify.store.snapshot import write_snapshot
from tests.support.manifests import tiny_draft
from tests.support.onnx_graphs import colour_classifier, serialized

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="OpenBLAS starts no thread on one CPU")

# A fresh interpreter: which threads a process runs is a fact about the whole process (pytest's has
# its own), and numpy reads its BLAS settings once, at its first import.
START = textwrap.dedent("""
    import json, os, time
    from imgclassify.serving.bootstrap import create_http_app

    create_http_app("classify")
    # a thread just joined may take a moment to leave the kernel's list; a BLAS thread never does
    deadline = time.monotonic() + 2
    while len(os.listdir("/proc/self/task")) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    print(json.dumps({"threads": len(os.listdir("/proc/self/task")),
                      "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}))
""")


def start(store_root, **environment: str) -> tuple[dict, dict]:
    """What the started process runs, and its start-up phases (the ready line's)."""
    env = {"PATH": "/usr/bin:/bin", "MODEL_STORE": str(store_root), **environment}
    done = subprocess.run([sys.executable, "-c", START], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    ready = next(line for line in lines if line.get("message", "").startswith("classify ready"))
    return lines[-1], ready["startup_ms"]


@pytest.fixture
def store_root(tmp_path):
    store = LocalStore(tmp_path / "store")
    publish(store, tiny_draft("1"), {"onnx": serialized(colour_classifier(3, seed=0))}, make_default=True)
    return tmp_path / "store"


def test_a_started_classify_instance_runs_one_thread_numpy_starting_no_blas_threads(store_root):
    started, phases = start(store_root)

    assert "check" in phases  # the model was preloaded (numpy and ONNX Runtime imported)
    assert started == {"threads": 1, "blas_threads": "1"}  # and no thread crosses the fork


def test_an_operators_own_blas_threads_setting_stands(store_root):
    assert start(store_root, OPENBLAS_NUM_THREADS="2")[0] == {"threads": 2, "blas_threads": "2"}


def test_a_start_from_a_snapshot_prepares_it_and_joins_the_thread_that_did(store_root, tmp_path):
    write_snapshot(LocalStore(store_root), tmp_path / "snapshot")
    started, phases = start(store_root, MODEL_SNAPSHOT_DIR=str(tmp_path / "snapshot"), ENGINE_THREADS="2",
                            TMPDIR=str(tmp_path))

    assert "snapshot" in phases and "prepared_ahead" in phases and "download" not in phases
    assert started["threads"] == 1
