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
from tests.support.manifests import tiny_draft
from tests.support.onnx_graphs import colour_classifier, serialized

# A fresh interpreter: which threads a process runs is a fact about the whole process (pytest's has
# its own), and numpy reads its BLAS settings once, at its first import.
START = textwrap.dedent("""
    import json, os
    from imgclassify.serving.bootstrap import create_http_app

    create_http_app("classify")
    print(json.dumps({"threads": len(os.listdir("/proc/self/task")),
                      "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}))
""")


def start(store_root, **environment: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", "MODEL_STORE": str(store_root), **environment}
    done = subprocess.run([sys.executable, "-c", START], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def store_root(tmp_path):
    store = LocalStore(tmp_path / "store")
    publish(store, tiny_draft("1"), {"onnx": serialized(colour_classifier(3, seed=0))}, make_default=True)
    return tmp_path / "store"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="OpenBLAS starts no thread of its own on one CPU")
def test_a_started_classify_instance_runs_one_thread_numpy_starting_no_blas_threads(store_root):
    started = start(store_root)

    # the model was preloaded (numpy and ONNX Runtime imported), and no thread crosses the fork
    assert started == {"threads": 1, "blas_threads": "1"}


def test_an_operators_own_blas_threads_setting_stands(store_root):
    assert start(store_root, OPENBLAS_NUM_THREADS="2")["blas_threads"] == "2"
