"""A bundle's model snapshot: written verified from the store's default, and used only where it
holds exactly the files the store's manifest names (imgclassify/store/snapshot.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgclassify.errors import IntegrityError, UnknownModel
from imgclassify.publish.catalog_writes import publish
from imgclassify.store.catalog import Architecture, ArtifactRef, Manifest, Preprocessing, read_manifest
from imgclassify.store.objects import LocalStore
from imgclassify.store.snapshot import ModelSnapshot, snapshot_directory, write_snapshot

GRAPH = b"the bytes of a model.onnx " * 100


def draft(name: str, version: str) -> Manifest:
    return Manifest(name=name, version=version, architecture=Architecture("onnx", "tests"),
                    artifacts={"onnx": ArtifactRef("", 0, "0" * 64)}, labels=("a", "b"),
                    preprocessing=Preprocessing(resize=40, crop_size=32))


@pytest.fixture
def store(tmp_path) -> LocalStore:
    store = LocalStore(tmp_path / "store")
    publish(store, draft("tiny", "1"), {"onnx": GRAPH}, make_default=True)
    return store


@pytest.fixture
def snapshot_dir(tmp_path, store) -> Path:
    directory = tmp_path / "bundle" / "model_snapshot"
    write_snapshot(store, directory)
    return directory


def test_a_snapshot_of_the_default_serves_its_verified_bytes_for_the_same_version(store, snapshot_dir):
    look = ModelSnapshot(snapshot_dir).take(read_manifest(store, "tiny", "1"), ["onnx"])
    assert look.files == {"onnx": GRAPH}
    assert "matches" in look.reason and not look.broken
    assert sorted(path.name for path in snapshot_dir.iterdir()) == ["manifest.json", "model.onnx"]


def test_another_model_name_is_downloaded(store, snapshot_dir):
    publish(store, draft("other", "1"), {"onnx": GRAPH})
    look = ModelSnapshot(snapshot_dir).take(read_manifest(store, "other", "1"), ["onnx"])
    assert look.files is None and not look.broken
    assert look.reason == "the snapshot holds tiny@1, not other@1"


def test_a_newer_version_of_the_same_model_is_downloaded(store, snapshot_dir):
    publish(store, draft("tiny", "2"), {"onnx": GRAPH + b"v2"})
    look = ModelSnapshot(snapshot_dir).take(read_manifest(store, "tiny", "2"), ["onnx"])
    assert look.files is None and not look.broken
    assert look.reason == "the snapshot holds tiny@1, not tiny@2"


def test_a_snapshot_whose_sha256_differs_from_the_stores_manifest_is_not_used(store, snapshot_dir):
    # The same name and version with other bytes: a store rebuilt from scratch, say.
    manifest = json.loads((snapshot_dir / "manifest.json").read_text())
    manifest["artifacts"]["onnx"]["sha256"] = "ee" * 32
    (snapshot_dir / "manifest.json").write_text(json.dumps(manifest))
    look = ModelSnapshot(snapshot_dir).take(read_manifest(store, "tiny", "1"), ["onnx"])
    assert look.files is None
    assert "sha256 " + "ee" * 32 in look.reason and "the store's manifest" in look.reason


def test_a_snapshot_without_a_file_the_load_needs_is_not_used(store, snapshot_dir):
    look = ModelSnapshot(snapshot_dir).take(read_manifest(store, "tiny", "1"), ["safetensors"])
    assert look.files is None
    assert look.reason == "the snapshot of tiny@1 has no weights.safetensors"


def test_a_missing_model_file_is_reported_as_broken_and_not_used(store, snapshot_dir):
    (snapshot_dir / "model.onnx").unlink()
    look = ModelSnapshot(snapshot_dir).take(read_manifest(store, "tiny", "1"), ["onnx"])
    assert look.files is None and look.broken
    assert "model.onnx is unreadable" in look.reason


def test_corrupt_bytes_under_a_matching_manifest_are_refused(store, snapshot_dir):
    (snapshot_dir / "model.onnx").write_bytes(GRAPH[:-1] + b"!")  # same size, other bytes
    look = ModelSnapshot(snapshot_dir).take(read_manifest(store, "tiny", "1"), ["onnx"])
    assert look.files is None and look.broken
    assert look.reason.startswith("the snapshot is corrupt: model.onnx of tiny@1 has sha256")


def test_bytes_read_ahead_by_prefetch_are_verified_against_the_stores_manifest_as_well(store, snapshot_dir):
    (snapshot_dir / "model.onnx").write_bytes(GRAPH[:-1] + b"!")
    snapshot = ModelSnapshot(snapshot_dir)
    snapshot.prefetch()
    (snapshot_dir / "model.onnx").write_bytes(GRAPH)  # repaired on disk, too late: the read bytes are what counts
    look = snapshot.take(read_manifest(store, "tiny", "1"), ["onnx"])
    assert look.files is None and look.broken and "corrupt" in look.reason


def test_a_prefetched_snapshot_serves_the_bytes_it_read_once(store, snapshot_dir):
    snapshot = ModelSnapshot(snapshot_dir)
    snapshot.prefetch()
    assert snapshot.take(read_manifest(store, "tiny", "1"), ["onnx"]).files == {"onnx": GRAPH}
    (snapshot_dir / "model.onnx").unlink()  # a second load reads the files again, and finds none
    assert snapshot.take(read_manifest(store, "tiny", "1"), ["onnx"]).broken


def test_no_snapshot_directory_means_a_download_without_alarm(store, tmp_path):
    look = ModelSnapshot(tmp_path / "absent").take(read_manifest(store, "tiny", "1"), ["onnx"])
    assert look.files is None and not look.broken
    assert look.reason == f"there is no snapshot in {tmp_path / 'absent'}"


def test_an_unreadable_snapshot_manifest_is_broken_and_not_used(store, snapshot_dir):
    (snapshot_dir / "manifest.json").write_text("{not json")
    look = ModelSnapshot(snapshot_dir).take(read_manifest(store, "tiny", "1"), ["onnx"])
    assert look.files is None and look.broken
    assert "manifest.json is unreadable" in look.reason


def test_writing_a_snapshot_replaces_the_previous_one_with_the_current_default(store, snapshot_dir):
    publish(store, draft("tiny", "2"), {"onnx": GRAPH + b"v2"})
    write_snapshot(store, snapshot_dir)
    look = ModelSnapshot(snapshot_dir).take(read_manifest(store, "tiny", "2"), ["onnx"])
    assert look.files == {"onnx": GRAPH + b"v2"}
    assert [path.name for path in snapshot_dir.parent.iterdir()] == ["model_snapshot"]  # no staging left


def test_writing_a_snapshot_refuses_a_stored_file_that_does_not_match_its_manifest(store, tmp_path):
    (store.root / "models" / "tiny" / "1" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="model.onnx of tiny@1 has 8 bytes"):
        write_snapshot(store, tmp_path / "bundle" / "model_snapshot")
    assert not (tmp_path / "bundle" / "model_snapshot").exists()


def test_writing_a_snapshot_of_an_empty_store_says_nothing_is_published(tmp_path):
    with pytest.raises(UnknownModel, match="no published model yet"):
        write_snapshot(LocalStore(tmp_path / "empty"), tmp_path / "bundle" / "model_snapshot")


def test_a_relative_snapshot_directory_is_taken_from_beside_the_package(tmp_path):
    assert snapshot_directory("model_snapshot", package_root=tmp_path) == tmp_path / "model_snapshot"
    assert snapshot_directory("/srv/snapshot", package_root=tmp_path) == Path("/srv/snapshot")
