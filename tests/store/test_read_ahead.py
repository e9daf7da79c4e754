"""A cold start's reads of the bucket made by a forked process (imgclassify/store/read_ahead.py), the
store answering from what it read, and the worker's cue to connect its own, against the storage emulator."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Request

from devstack.processes import free_port
from imgclassify.errors import ObjectNotFound, StorageUnavailable
from imgclassify.publish.catalog_writes import publish
from imgclassify.serving.bootstrap import build_app
from imgclassify.settings import Settings
from imgclassify.store.catalog import CATALOG_OBJECT, manifest_object, read_catalog
from imgclassify.store.objects import GcsStore, LocalStore, ObjectStore, StoredObject
from imgclassify.store.read_ahead import ReadAhead, default_model_reads
from imgclassify.store.snapshot import write_snapshot
from tests.support.manifests import tiny_draft
from tests.support.onnx_graphs import colour_classifier, serialized
from tests.support.photos import cat_jpeg

pytestmark = pytest.mark.integration


def publish_tiny(store: ObjectStore, *versions: str) -> None:
    for version in versions:
        publish(store, tiny_draft(version), {"onnx": serialized(colour_classifier(3, seed=0))}, make_default=True)


@pytest.fixture
def published(new_bucket) -> GcsStore:
    """A bucket with tiny@1 and tiny@2 published, tiny the default."""
    store = GcsStore(new_bucket("ahead"), retry_seconds=2.0, timeout_seconds=10.0)
    publish_tiny(store, "1", "2")
    return store


def test_the_reads_are_the_catalog_and_the_latest_manifest_of_the_default_model(published):
    answers = default_model_reads(published, default_model=None)

    assert list(answers) == [CATALOG_OBJECT, manifest_object("tiny", "2")]
    assert answers[CATALOG_OBJECT] == published.read(CATALOG_OBJECT)
    assert answers[manifest_object("tiny", "2")] == published.read(manifest_object("tiny", "2"))


def test_a_configured_default_is_the_one_whose_manifest_is_read(published):
    assert list(default_model_reads(published, default_model="tiny@1")) == [CATALOG_OBJECT,
                                                                             manifest_object("tiny", "1")]


def test_an_empty_bucket_answers_with_the_catalogs_404(gcs_store):
    answers = default_model_reads(gcs_store, default_model=None)

    assert list(answers) == [CATALOG_OBJECT] and isinstance(answers[CATALOG_OBJECT], ObjectNotFound)


def test_a_seeded_store_answers_each_seeded_read_once_then_reads_the_bucket(published):
    seen = published.read(CATALOG_OBJECT)
    published.seed({CATALOG_OBJECT: seen})
    publish_tiny(GcsStore(published.bucket_name), "3")  # another store: this one's reads are the test's

    assert published.read(CATALOG_OBJECT) == seen  # what the bucket said before the publish
    assert read_catalog(published)[0].resolve("tiny", None) == "3"  # then the bucket itself


def test_answers_the_start_did_not_read_are_forgotten(published):
    published.seed({CATALOG_OBJECT: StoredObject(b"{}", 1), manifest_object("tiny", "2"): StoredObject(b"{}", 1)})
    published.read(CATALOG_OBJECT)
    ReadAhead.forget(published)

    assert published.read(manifest_object("tiny", "2")).data != b"{}"  # the bucket's, not the seed's


def test_a_seeded_error_is_raised_once(published):
    published.seed({CATALOG_OBJECT: StorageUnavailable("Cloud Storage did not answer")})

    with pytest.raises(StorageUnavailable, match="did not answer"):
        published.read(CATALOG_OBJECT)
    assert read_catalog(published)[0].resolve("tiny", None) == "2"


# Run in a fresh interpreter: the fork needs a process with no other thread (pytest's has some),
# and whether the storage client was imported is a fact about the whole process.
START = textwrap.dedent("""
    import json, os, sys, threading
    from imgclassify.settings import Settings
    from imgclassify.store.catalog_view import CatalogView
    from imgclassify.store.objects import open_store
    from imgclassify.store.read_ahead import ReadAhead

    case = sys.argv[1]
    if case == "one CPU":
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if case == "a thread running":
        threading.Thread(target=threading.Event().wait, args=(5,), daemon=True).start()
    settings = Settings.from_env()
    ahead = ReadAhead.start(settings)
    store = open_store(settings.model_store, **settings.gcs_options())
    waited = ahead.hand_to(store) if ahead is not None else None
    client_before = "google.cloud.storage" in sys.modules
    view = CatalogView(store, catalog_ttl_seconds=30, default_model=settings.default_model)
    try:
        manifest = view.manifest(*view.resolve(None)).version
    except Exception as error:
        manifest = type(error).__name__
    print(json.dumps({"started": ahead is not None, "waited_ms": waited, "client_before_reads": client_before,
                      "client_after_reads": "google.cloud.storage" in sys.modules, "manifest": manifest}))
""")


def start_in_a_fresh_process(case: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", START, case], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def start_env(published, emulator, tmp_path) -> dict:
    snapshot = tmp_path / "model_snapshot"
    write_snapshot(published, snapshot)
    return {"PATH": "/usr/bin:/bin", "STORAGE_EMULATOR_HOST": emulator.url, "GOOGLE_CLOUD_PROJECT": "t",
            "MODEL_STORE": f"gs://{published.bucket_name}", "MODEL_SNAPSHOT_DIR": str(snapshot)}


def test_a_start_with_a_snapshot_gets_its_reads_from_the_forked_process_without_importing_the_client(start_env):
    started = start_in_a_fresh_process("as deployed", start_env)

    assert started["started"] and started["waited_ms"] > 0
    assert started["manifest"] == "2"
    # both reads were answered from the child's: the parent never imported the client library
    assert started["client_before_reads"] is False and started["client_after_reads"] is False


def test_an_outage_met_by_the_forked_process_is_the_parents_answer_with_no_second_wait(start_env):
    closed = f"http://127.0.0.1:{free_port()}"
    started = start_in_a_fresh_process("as deployed", {**start_env, "STORAGE_EMULATOR_HOST": closed,
                                                       "STORAGE_RETRY_SECONDS": "1"})

    assert started["started"] and started["manifest"] == "StorageUnavailable"
    assert started["client_after_reads"] is False  # the parent did not retry the bucket itself


@pytest.mark.parametrize("case, change", [
    ("no snapshot", {"MODEL_SNAPSHOT_DIR": "/nonexistent"}),
    ("no preload", {"PRELOAD_DEFAULT_MODEL": "false"}),
    ("one CPU", {}),
    ("a thread running", {}),
])
def test_no_process_is_forked_where_it_cannot_gain_and_the_reads_are_the_parents_own(start_env, case, change):
    started = start_in_a_fresh_process(case, {**start_env, **change})

    assert started["started"] is False and started["manifest"] == "2"
    assert started["client_after_reads"] is True


def test_a_local_store_reads_nothing_ahead(start_env, tmp_path):
    publish_tiny(LocalStore(tmp_path / "local-store"), "1", "2")
    started = start_in_a_fresh_process("a local store", {**start_env, "MODEL_STORE": str(tmp_path / "local-store")})

    assert started == {"started": False, "waited_ms": None, "client_before_reads": False,
                       "client_after_reads": False, "manifest": "2"}


def test_stored_objects_survive_the_pipe_between_the_processes():
    import pickle

    answers = {"a": StoredObject(b"\x00bytes", 7), "b": ObjectNotFound("gs://b/x does not exist")}
    back = pickle.loads(pickle.dumps(answers))

    assert back["a"] == answers["a"]
    assert type(back["b"]) is ObjectNotFound and back["b"].message == "gs://b/x does not exist"


def test_the_classify_app_says_it_has_answered_once_a_request_succeeds(models_bucket):
    # a forked worker connects its store then (serving/classify_app.get_ready_after_fork)
    settings = Settings.from_env({"MODEL_STORE": f"gs://{models_bucket}", "PRELOAD_DEFAULT_MODEL": "false"})
    app = build_app("classify", settings)
    client = Client(lambda environ, start_response: app(Request(environ))(environ, start_response))

    refused = client.post("/v1/classify", data=b"not a photo", content_type="image/jpeg")
    assert refused.status_code == 415 and not app.answered.is_set()
    answered = client.post("/v1/classify", data=cat_jpeg(), content_type="image/jpeg")
    assert answered.status_code == 200 and app.answered.is_set()
