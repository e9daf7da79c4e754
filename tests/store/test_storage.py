"""ObjectStore contract, for local directories and for Cloud Storage (the real emulator)."""

from __future__ import annotations

import gzip
import os
import socket
import time

import pytest

import imgclassify.store.objects as storage
from imgclassify.errors import InvalidGcsUri, PayloadTooLarge, StorageUnavailable
from imgclassify.store.objects import (
    GcsStore,
    GenerationMismatch,
    LocalStore,
    ObjectNotFound,
    open_store,
    split_gs_uri,
    split_object_uri,
)


@pytest.fixture(params=["local", "gcs"])
def store(request, tmp_path):
    """An empty store of each kind: a LocalStore directory, or a fresh bucket on the emulator."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return request.getfixturevalue("gcs_store")


# --- write / read / generations -----------------------------------------------------------

def test_write_then_read_returns_the_bytes_and_the_written_generation(store):
    generation = store.write("models/a/1/manifest.json", b'{"a": 1}')

    stored = store.read("models/a/1/manifest.json")

    assert stored.data == b'{"a": 1}'
    assert stored.generation == generation
    assert generation > 0


def test_empty_object_round_trips(store):
    store.write("empty.bin", b"")

    assert store.read("empty.bin").data == b""
    assert store.info("empty.bin").size == 0


def test_overwrite_gives_new_data_and_a_new_generation(store):
    first = store.write("obj.bin", b"one")

    second = store.write("obj.bin", b"two")

    assert second != first
    assert store.read("obj.bin") == storage.StoredObject(b"two", second)


def test_write_if_absent_creates_a_missing_object(store):
    generation = store.write("new.bin", b"fresh", if_generation_match=0)

    assert store.read("new.bin") == storage.StoredObject(b"fresh", generation)


def test_write_if_absent_refuses_to_overwrite_and_leaves_the_object_intact(store):
    generation = store.write("obj.bin", b"original")

    with pytest.raises(GenerationMismatch) as caught:
        store.write("obj.bin", b"intruder", if_generation_match=0)

    assert caught.value.code == "GENERATION_MISMATCH"
    assert caught.value.status == 412  # Precondition Failed, as storage itself says
    assert store.read("obj.bin") == storage.StoredObject(b"original", generation)


def test_compare_and_swap_with_the_current_generation_succeeds(store):
    generation = store.write("catalog.json", b"v1")

    new_generation = store.write("catalog.json", b"v2", if_generation_match=generation)

    assert new_generation != generation
    assert store.read("catalog.json") == storage.StoredObject(b"v2", new_generation)


def test_compare_and_swap_with_a_stale_generation_fails_and_keeps_the_newer_data(store):
    stale = store.write("catalog.json", b"v1")
    current = store.write("catalog.json", b"v2", if_generation_match=stale)

    with pytest.raises(GenerationMismatch):
        store.write("catalog.json", b"lost update", if_generation_match=stale)

    assert store.read("catalog.json") == storage.StoredObject(b"v2", current)


def test_compare_and_swap_on_a_missing_object_with_a_nonzero_generation_fails(store):
    with pytest.raises(GenerationMismatch):
        store.write("missing.json", b"x", if_generation_match=12345)

    assert store.info("missing.json") is None


# --- info / read of missing objects -------------------------------------------------------

def test_info_is_none_for_a_missing_object(store):
    assert store.info("nothing/here.bin") is None


def test_info_reports_size_and_generation_of_a_present_object(store):
    generation = store.write("dir/obj.bin", b"x" * 1234)

    info = store.info("dir/obj.bin")

    assert info == storage.ObjectInfo(size=1234, generation=generation)


def test_a_name_prefix_of_other_objects_is_not_an_object(store):
    store.write("models/a/1/weights.safetensors", b"w")

    assert store.info("models/a") is None
    with pytest.raises(ObjectNotFound):
        store.read("models/a")


def test_read_of_a_missing_object_raises_object_not_found_404(store):
    with pytest.raises(ObjectNotFound) as caught:
        store.read("nothing/here.bin")

    assert caught.value.status == 404
    assert caught.value.code == "OBJECT_NOT_FOUND"
    assert "nothing/here.bin" in caught.value.message


# --- delete / list ------------------------------------------------------------------------

def test_delete_removes_the_object(store):
    store.write("gone.bin", b"x")

    store.delete("gone.bin")

    assert store.info("gone.bin") is None


def test_delete_of_a_missing_object_is_not_an_error(store):
    store.delete("never/written.bin")

    assert store.info("never/written.bin") is None


def test_delete_with_a_stale_generation_fails_and_keeps_the_object(tmp_path):
    # LocalStore only: fake-gcs-server ignores ifGenerationMatch on DELETE (checked by hand), so the
    # emulator cannot prove this for GcsStore, which does pass the precondition to the client.
    store = LocalStore(tmp_path)
    stale = store.write("obj.bin", b"one")
    current = store.write("obj.bin", b"two")

    with pytest.raises(GenerationMismatch):
        store.delete("obj.bin", if_generation_match=stale)

    assert store.read("obj.bin") == storage.StoredObject(b"two", current)


def test_list_returns_only_names_under_the_prefix_sorted(store):
    for name in ("models/b/1/x", "models/a/2/x", "other/z", "models/a/1/x", "models/a/10/x"):
        store.write(name, b"x")

    assert store.list("models/a/") == ["models/a/1/x", "models/a/10/x", "models/a/2/x"]
    assert store.list("") == ["models/a/1/x", "models/a/10/x", "models/a/2/x", "models/b/1/x", "other/z"]


def test_list_of_an_unknown_prefix_is_empty(store):
    store.write("models/a/1/x", b"x")

    assert store.list("nothing/") == []


# --- progress ------------------------------------------------------------------------------

def test_upload_progress_callback_sums_to_the_object_size(store):
    data = os.urandom(300_000)
    reported: list[int] = []

    store.write("big.bin", data, progress=reported.append)

    assert sum(reported) == len(data)


def test_download_returns_the_object(store):
    data = os.urandom(10_000)
    store.write("obj.bin", data)

    assert store.download("obj.bin") == data


def test_download_of_a_missing_object_raises_object_not_found(store):
    with pytest.raises(ObjectNotFound):
        store.download("nothing.bin")


# --- Cloud Storage specifics ---------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 1, 999, 1000])
def test_read_limited_returns_an_object_up_to_the_limit(store, size):
    store.write("in/a.jpg", b"x" * size)

    assert store.read_limited("in/a.jpg", 1000) == b"x" * size


def test_read_limited_refuses_an_object_over_the_limit_with_413_and_a_missing_one_with_404(store):
    store.write("in/big.jpg", b"x" * 1001)

    with pytest.raises(PayloadTooLarge, match="the limit is 1000") as too_large:
        store.read_limited("in/big.jpg", 1000)
    with pytest.raises(ObjectNotFound) as missing:
        store.read_limited("in/none.jpg", 1000)

    assert (too_large.value.status, missing.value.status) == (413, 404)


def test_gcs_read_limited_gives_a_gzip_encoded_object_as_stored_never_inflated(new_bucket):
    from google.cloud import storage as gcs

    inflated, bucket = b"\xff" * 100_000, new_bucket()
    blob = gcs.Client().bucket(bucket).blob("in/bomb.jpg")
    blob.content_encoding = "gzip"
    blob.upload_from_string(gzip.compress(inflated), content_type="image/jpeg")
    store = GcsStore(bucket)

    assert store.read_limited("in/bomb.jpg", 50_000) == gzip.compress(inflated)


def test_gcs_download_in_slices_reassembles_the_object_exactly(new_bucket):
    slice_bytes = 64 * 1024
    store = GcsStore(new_bucket(), slice_bytes=slice_bytes, retry_seconds=2.0, timeout_seconds=10.0)
    data = os.urandom(1_000_003)  # not a multiple of the slice size: the last slice is short
    store.write("weights.bin", data)

    # (That it takes one ranged read per slice is counted at the emulator's door in
    # tests/stack/test_integration.py::test_concurrent_cold_requests_download_the_weights_exactly_once.)
    assert store.download("weights.bin") == data


def test_gcs_store_prefix_is_prepended_in_the_bucket_and_hidden_from_names(new_bucket):
    bucket = new_bucket()
    prefixed = GcsStore(bucket, "/team/models/", retry_seconds=2.0)
    whole_bucket = GcsStore(bucket, retry_seconds=2.0)

    prefixed.write("a/manifest.json", b"{}")

    assert prefixed.uri == f"gs://{bucket}/team/models"
    assert prefixed.list("") == ["a/manifest.json"]
    assert whole_bucket.list("") == ["team/models/a/manifest.json"]
    assert whole_bucket.read("team/models/a/manifest.json").data == b"{}"


def test_gcs_read_of_a_missing_bucket_is_object_not_found(emulator):
    store = GcsStore("no-such-bucket-for-this-test", retry_seconds=1.0)

    with pytest.raises(ObjectNotFound):
        store.read("x")


UNAVAILABLE_OPERATIONS = {
    "read": lambda store: store.read("a/b"),
    "info": lambda store: store.info("a/b"),
    "write": lambda store: store.write("a/b", b"data", if_generation_match=0),
    "delete": lambda store: store.delete("a/b"),
    "list": lambda store: store.list("a/"),
    "download": lambda store: store.download("a/b"),
    "read_limited": lambda store: store.read_limited("a/b", 1000),
}


@pytest.mark.parametrize("operation", sorted(UNAVAILABLE_OPERATIONS))
def test_gcs_store_without_a_server_raises_storage_unavailable_quickly(operation):
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    # A bound socket that never listens: connections are refused and nobody else can take the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        try:
            os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
            storage._storage_client.cache_clear()
            store = GcsStore("any-bucket", retry_seconds=1.0, timeout_seconds=2.0)
            started = time.monotonic()

            with pytest.raises(StorageUnavailable) as caught:
                UNAVAILABLE_OPERATIONS[operation](store)

            elapsed = time.monotonic() - started
        finally:
            if previous is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = previous
            storage._storage_client.cache_clear()

    assert elapsed < 8.0
    assert caught.value.status == 503
    assert caught.value.code == "STORAGE_UNAVAILABLE"
    assert caught.value.headers() == {"Retry-After": "5"}
    assert caught.value.to_json()["error"]["status"] == 503


# --- local directory specifics -------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "../escape", "a/../../escape", "a//b", "/etc/passwd", "a/", ".", "a/./b", ".."])
def test_local_store_rejects_names_with_dot_dot_or_empty_segments(tmp_path, name):
    store = LocalStore(tmp_path / "store")

    with pytest.raises(ValueError, match="invalid object name"):
        store.write(name, b"x")
    with pytest.raises(ValueError, match="invalid object name"):
        store.read(name)
    with pytest.raises(ValueError, match="invalid object name"):
        store.info(name)

    assert sorted(path.name for path in tmp_path.rglob("*") if path.is_file() and path.name != ".lock") == []


def test_local_store_listing_hides_its_lock_and_temporary_files(tmp_path):
    store = LocalStore(tmp_path)
    store.write("models/catalog.json", b"{}")
    (tmp_path / "models" / ".tmp-leftover").write_bytes(b"partial")

    assert store.list("") == ["models/catalog.json"]


def test_local_store_list_of_a_directory_that_does_not_exist_is_empty(tmp_path):
    assert LocalStore(tmp_path / "not-created").list("") == []


def test_local_store_keeps_objects_as_files_below_its_root(tmp_path):
    LocalStore(tmp_path).write("models/a/1/weights.safetensors", b"weights")

    assert (tmp_path / "models" / "a" / "1" / "weights.safetensors").read_bytes() == b"weights"


# --- locations -----------------------------------------------------------------------------

def test_split_gs_uri_separates_bucket_and_name():
    assert split_gs_uri("gs://bucket/path/to/obj") == ("bucket", "path/to/obj")
    assert split_gs_uri("gs://bucket") == ("bucket", "")


@pytest.mark.parametrize("uri", ["s3://bucket/x", "bucket/x", "gs://", "gs:///x", "gs://ab/x", "gs://Bucket/x",
                                 "gs://-bucket/x", "gs://bucket-/x", "gs://" + "b" * 223 + "/x"])
def test_split_gs_uri_rejects_other_uris_with_a_400_service_error(uri):
    with pytest.raises(InvalidGcsUri) as caught:
        split_gs_uri(uri)
    assert caught.value.status == 400


@pytest.mark.parametrize("uri", ["gs://bucket", "gs://bucket/", "gs://bucket/..", "gs://bucket/a\rb"])
def test_split_object_uri_needs_an_object_name_cloud_storage_could_hold(uri):
    with pytest.raises(InvalidGcsUri):
        split_object_uri(uri)


def test_open_store_opens_gs_uris_as_gcs_stores_with_their_prefix():
    store = open_store("gs://some-bucket/some/prefix", retry_seconds=1.0)

    assert isinstance(store, GcsStore)
    assert (store.bucket_name, store.prefix, store.uri) == ("some-bucket", "some/prefix/", "gs://some-bucket/some/prefix")


def test_open_store_opens_anything_else_as_a_local_directory(tmp_path):
    store = open_store(str(tmp_path / "models"))

    assert isinstance(store, LocalStore)
    assert store.root == (tmp_path / "models").resolve()
