"""Publishing and removing models: write order, immutability, recovery and concurrent publishers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading

import pytest
import torch
import torchvision
from safetensors.torch import load as load_safetensors

from imgclassify import errors as api_errors
from imgclassify.errors import InvalidRequest, UnknownVersion
from imgclassify.publish import errors as publish_errors
from imgclassify.publish import export as onnx_export
from imgclassify.publish.catalog_writes import next_version, publish, remove, update_catalog
from imgclassify.publish.cli import main
from imgclassify.publish.errors import PublishError
from imgclassify.publish.sources import publish_framework_model, serialize_weights
from imgclassify.store.catalog import (
    CATALOG_OBJECT,
    Architecture,
    ArtifactRef,
    Catalog,
    Manifest,
    Preprocessing,
    manifest_object,
    onnx_object,
    read_catalog,
    read_manifest,
    weights_object,
)
from imgclassify.store.objects import LocalStore


def tiny_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3).state_dict()


def tiny_weights(seed: int = 0) -> bytes:
    return serialize_weights(tiny_state_dict(seed))


def tiny_files(seed: int = 0) -> dict[str, bytes]:
    return {"safetensors": tiny_weights(seed)}


def tiny_manifest(name: str = "tiny", version: str = "1") -> Manifest:
    return Manifest(
        name=name,
        version=version,
        architecture=Architecture("torch", "linear", {"in_features": 4, "out_features": 3}),
        artifacts={"safetensors": ArtifactRef("", 0, "0" * 64)},  # publish() fills in the real ones
        labels=("cat", "dog", "bird"),
        preprocessing=Preprocessing(resize=8, crop_size=8),
        random_init=True,
        metadata={"description": "a tiny linear layer"},
    )


def snapshot(store) -> dict:
    """Every object in the store with its bytes and generation."""
    return {name: store.read(name) for name in store.list("")}


def assert_plain_safetensors(data: bytes) -> dict:
    """Check ``data`` is a safetensors file (8-byte little-endian header length, JSON header); return the header."""
    header_length = int.from_bytes(data[:8], "little")
    assert 2 <= header_length <= len(data) - 8
    assert data[8:9] == b"{"
    header = json.loads(data[8:8 + header_length])
    assert all("dtype" in entry for key, entry in header.items() if key != "__metadata__")
    return header


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "models")


# --- publish -------------------------------------------------------------------------------

def test_publish_writes_weights_manifest_and_catalog_entry(store):
    weights = tiny_weights()

    published = publish(store, tiny_manifest(), {"safetensors": weights})

    assert store.list("") == [CATALOG_OBJECT, manifest_object("tiny", "1"), weights_object("tiny", "1")]
    assert store.read(weights_object("tiny", "1")).data == weights
    assert read_manifest(store, "tiny", "1") == published
    catalog, _ = read_catalog(store)
    assert catalog.resolve("tiny", None) == "1"
    assert catalog.models["tiny"]["versions"]["1"] == published.summary()
    assert catalog.default_model == "tiny"


def test_published_manifest_records_size_and_sha256_of_the_stored_weights(store):
    weights = tiny_weights()

    publish(store, tiny_manifest(), {"safetensors": weights})

    manifest = read_manifest(store, "tiny", "1")
    ref = manifest.artifacts["safetensors"]
    stored = store.read(ref.object).data
    assert ref.object == weights_object("tiny", "1")
    assert ref.bytes == len(stored) == len(weights)
    assert ref.sha256 == hashlib.sha256(stored).hexdigest()
    assert manifest.published_at  # filled in when not given


def test_published_weights_are_plain_safetensors_without_pickle(store):
    state = tiny_state_dict()

    publish(store, tiny_manifest(), {"safetensors": serialize_weights(state)})

    data = store.read(weights_object("tiny", "1")).data
    assert set(assert_plain_safetensors(data)) - {"__metadata__"} == {"weight", "bias"}
    loaded = load_safetensors(data)
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_serialize_weights_accepts_tensors_sharing_storage():
    shared = torch.arange(6.0)
    state = {"whole": shared, "view": shared[:3]}

    loaded = load_safetensors(serialize_weights(state))

    assert torch.equal(loaded["view"], torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(loaded["whole"], shared)


def test_publish_records_random_init_in_manifest_and_catalog(store):
    publish(store, tiny_manifest(), tiny_files())

    catalog, _ = read_catalog(store)
    assert read_manifest(store, "tiny", "1").random_init is True
    assert catalog.models["tiny"]["versions"]["1"]["random_init"] is True


def test_publishing_the_same_version_twice_is_refused_and_changes_nothing(store):
    publish(store, tiny_manifest(), tiny_files(seed=1))
    before = snapshot(store)

    with pytest.raises(PublishError) as caught:
        publish(store, tiny_manifest(), tiny_files(seed=2))

    assert caught.value.code == "VERSION_EXISTS"
    assert caught.value.status == 409
    assert snapshot(store) == before


def test_publish_with_an_invalid_name_writes_nothing(store):
    with pytest.raises(InvalidRequest):
        publish(store, tiny_manifest(name="../escape"), tiny_files())

    assert store.list("") == []


def test_next_version_is_one_for_a_new_model_and_counts_up_numerically(store):
    assert next_version(store, "tiny") == "1"
    publish(store, tiny_manifest(version="1"), tiny_files())
    assert next_version(store, "tiny") == "2"
    publish(store, tiny_manifest(version="9"), tiny_files())
    publish(store, tiny_manifest(version="beta"), tiny_files())

    assert next_version(store, "tiny") == "10"
    assert next_version(store, "other") == "1"


def test_make_default_marks_the_model_as_the_catalog_default(store):
    publish(store, tiny_manifest(name="first"), tiny_files())

    publish(store, tiny_manifest(name="second"), tiny_files(), make_default=True)

    assert read_catalog(store)[0].default_model == "second"


def test_half_finished_publish_is_completed_by_publishing_the_same_weights_again(store):
    weights = tiny_weights()
    store.write(weights_object("tiny", "1"), weights)  # a publish that died after the weights

    published = publish(store, tiny_manifest(), {"safetensors": weights})

    assert read_manifest(store, "tiny", "1") == published
    assert published.artifacts["safetensors"].sha256 == hashlib.sha256(weights).hexdigest()
    assert read_catalog(store)[0].resolve("tiny", None) == "1"


def test_half_finished_publish_with_different_weights_is_refused_and_left_alone(store):
    leftover = tiny_weights(seed=1)
    store.write(weights_object("tiny", "1"), leftover)
    before = snapshot(store)

    with pytest.raises(PublishError) as caught:
        publish(store, tiny_manifest(), tiny_files(seed=2))

    assert caught.value.code == "VERSION_EXISTS"
    assert snapshot(store) == before
    assert store.info(manifest_object("tiny", "1")) is None


# --- catalog compare-and-swap --------------------------------------------------------------

def test_update_catalog_retries_when_another_writer_changed_the_catalog_meanwhile(store):
    publish(store, tiny_manifest(name="first"), tiny_files())
    calls = []

    def change(catalog: Catalog) -> Catalog:
        calls.append(sorted(catalog.models))
        if len(calls) == 1:  # another publisher wins the race after we read the catalog
            store.write(CATALOG_OBJECT, catalog.with_version(tiny_manifest(name="rival")).to_bytes())
        return catalog.with_version(tiny_manifest(name="mine"))

    update_catalog(store, change)

    assert calls == [["first"], ["first", "rival"]]
    assert sorted(read_catalog(store)[0].models) == ["first", "mine", "rival"]


def test_concurrent_publishers_of_different_models_all_reach_the_catalog(gcs_store):
    names = [f"model{i}" for i in range(8)]
    start = threading.Barrier(len(names), timeout=30)
    errors: list[BaseException] = []

    def publisher(name: str) -> None:
        try:
            start.wait()
            publish(gcs_store, tiny_manifest(name=name), tiny_files())
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=publisher, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    catalog, _ = read_catalog(gcs_store)
    assert sorted(catalog.models) == names
    assert all(catalog.resolve(name, None) == "1" for name in names)


def test_concurrent_publishers_of_the_same_version_exactly_one_wins(store):
    weights = tiny_weights()
    start = threading.Barrier(4, timeout=30)
    outcomes: list[object] = []

    def publisher() -> None:
        try:
            start.wait()
            outcomes.append(publish(store, tiny_manifest(), {"safetensors": weights}))
        except PublishError as error:
            outcomes.append(error.code)

    threads = [threading.Thread(target=publisher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert not any(thread.is_alive() for thread in threads)
    winners = [outcome for outcome in outcomes if isinstance(outcome, Manifest)]
    assert len(winners) == 1
    assert sorted(outcome for outcome in outcomes if isinstance(outcome, str)) == ["VERSION_EXISTS"] * 3
    assert read_manifest(store, "tiny", "1") == winners[0]
    assert list(read_catalog(store)[0].models["tiny"]["versions"]) == ["1"]


def test_publish_and_remove_on_cloud_storage(gcs_store):
    weights = tiny_weights()

    published = publish(gcs_store, tiny_manifest(), {"safetensors": weights})

    stored = gcs_store.download(published.artifacts["safetensors"].object)
    assert hashlib.sha256(stored).hexdigest() == published.artifacts["safetensors"].sha256
    assert_plain_safetensors(stored)
    assert read_manifest(gcs_store, "tiny", "1") == published
    assert read_catalog(gcs_store)[0].resolve("tiny", None) == "1"

    remove(gcs_store, "tiny", "1")

    assert gcs_store.list("models/tiny/") == []
    assert read_catalog(gcs_store)[0].models == {}


# --- remove --------------------------------------------------------------------------------

def test_remove_of_latest_makes_the_previous_version_latest(store):
    publish(store, tiny_manifest(version="1"), tiny_files(seed=1))
    publish(store, tiny_manifest(version="2"), tiny_files(seed=2))

    remove(store, "tiny", "2")

    catalog, _ = read_catalog(store)
    assert catalog.resolve("tiny", None) == "1"
    assert list(catalog.models["tiny"]["versions"]) == ["1"]
    assert store.list("models/tiny/") == [manifest_object("tiny", "1"), weights_object("tiny", "1")]


def test_remove_of_the_only_version_drops_the_model(store):
    publish(store, tiny_manifest(), tiny_files())

    remove(store, "tiny", "1")

    catalog, _ = read_catalog(store)
    assert catalog.models == {}
    assert catalog.default_model is None
    assert store.list("models/tiny/") == []


@pytest.mark.parametrize("leftovers", [("weights",), ("weights", "manifest")])
def test_remove_cleans_up_a_half_finished_publish_not_in_the_catalog(store, leftovers):
    publish(store, tiny_manifest(name="other"), tiny_files())
    store.write(weights_object("tiny", "1"), tiny_weights())
    if "manifest" in leftovers:
        store.write(manifest_object("tiny", "1"), tiny_manifest().to_bytes())
    catalog_before = store.read(CATALOG_OBJECT)

    remove(store, "tiny", "1")

    assert store.list("models/tiny/") == []
    assert store.read(CATALOG_OBJECT) == catalog_before
    publish(store, tiny_manifest(), tiny_files(seed=5))  # the version can now be published afresh


@pytest.mark.parametrize("name, version", [("nothing", "1"), ("tiny", "2")])
def test_remove_of_an_unknown_version_is_an_error_and_changes_nothing(store, name, version):
    publish(store, tiny_manifest(), tiny_files())
    before = snapshot(store)

    with pytest.raises(UnknownVersion) as caught:
        remove(store, name, version)

    assert caught.value.code == "UNKNOWN_VERSION"
    assert snapshot(store) == before


def test_remove_rejects_an_invalid_name(store):
    with pytest.raises(InvalidRequest):
        remove(store, "../models", "1")


# --- framework models and the command line -------------------------------------------------

def publish_mobilenet(store, **options):
    """What `python -m imgclassify.publish torchvision mobilenet_v3_small --random-init ...` calls."""
    return publish_framework_model(store, "torchvision", "mobilenet_v3_small", **{"random_init": True, **options})


def test_publish_framework_model_records_random_init_classes_and_labels(store, tmp_path):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("".join(f"label {i}\n" for i in range(10)) + "\n", encoding="utf-8")

    manifest = publish_mobilenet(store, name="mnv3", num_classes=10, labels_file=str(labels_file), torch_only=True)

    assert (manifest.name, manifest.version) == ("mnv3", "1")
    assert manifest.random_init is True
    assert manifest.metadata["source"] == "random initialisation (untrained)"
    assert manifest.metadata["top1_accuracy"] is None
    assert manifest.architecture == Architecture("torchvision", "mobilenet_v3_small", {"num_classes": 10})
    assert manifest.labels == tuple(f"label {i}" for i in range(10))
    assert manifest.preprocessing.crop_size == 224
    weights = store.read(manifest.artifacts["safetensors"].object).data
    import torchvision

    torchvision.models.mobilenet_v3_small(num_classes=10).load_state_dict(load_safetensors(weights), strict=True)


def test_a_torch_only_publish_writes_the_weights_alone_for_the_torch_engine(store):
    manifest = publish_mobilenet(store, num_classes=5, torch_only=True)

    assert manifest.engine == "torch"
    assert set(manifest.artifacts) == {"safetensors"}
    assert "onnx_check" not in manifest.metadata
    assert store.list("models/mobilenet_v3_small/") == [manifest_object("mobilenet_v3_small", "1"),
                                                        weights_object("mobilenet_v3_small", "1")]


def test_publish_framework_model_with_the_same_seed_publishes_identical_weights(store):
    first = publish_mobilenet(store, num_classes=5, seed=3, torch_only=True)
    second = publish_mobilenet(store, num_classes=5, seed=3, torch_only=True)
    other = publish_mobilenet(store, num_classes=5, seed=4, torch_only=True)

    assert (first.version, second.version, other.version) == ("1", "2", "3")
    sha = [manifest.artifacts["safetensors"].sha256 for manifest in (first, second, other)]
    assert sha[0] == sha[1] != sha[2]
    assert first.labels == tuple(f"class_{i}" for i in range(5))


def test_cli_publishes_lists_and_removes_a_random_init_torchvision_model_with_onnx(tmp_path, capsys):
    store_dir = str(tmp_path / "models")

    assert main(["--store", store_dir, "torchvision", "mobilenet_v3_small", "--random-init"]) == 0
    stored = LocalStore(store_dir)
    out = capsys.readouterr().out
    assert out.startswith("published mobilenet_v3_small@1 (") and out.endswith(f") to {stored.uri}\n")
    assert stored.list("models/mobilenet_v3_small/1/") == [
        manifest_object("mobilenet_v3_small", "1"), onnx_object("mobilenet_v3_small", "1"),
        weights_object("mobilenet_v3_small", "1")]
    assert_plain_safetensors(stored.read(weights_object("mobilenet_v3_small", "1")).data)
    served = stored.read(onnx_object("mobilenet_v3_small", "1")).data
    assert read_manifest(stored, "mobilenet_v3_small", "1").engine == "onnxruntime"

    assert main(["--store", store_dir, "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["default_model"] == "mobilenet_v3_small"
    [row] = listed["models"]
    assert (row["name"], row["version"], row["random_init"], row["num_classes"]) == ("mobilenet_v3_small", "1",
                                                                                   True, 1000)
    assert (row["engine"], row["weights_bytes"]) == ("onnxruntime", len(served))
    assert row["versions"] == ["1"]

    assert main(["--store", store_dir, "remove", "mobilenet_v3_small@1"]) == 0
    assert f"removed mobilenet_v3_small@1 from {stored.uri}" in capsys.readouterr().out
    assert main(["--store", store_dir, "list"]) == 0
    assert json.loads(capsys.readouterr().out) == {"store": stored.uri, "default_model": None, "models": []}
    assert LocalStore(store_dir).list("models/mobilenet_v3_small/") == []


def test_cli_list_of_a_local_directory_that_does_not_exist_says_so_instead_of_passing_for_empty(
        tmp_path, capsys):
    missing = tmp_path / "typo"

    assert main(["--store", str(missing), "list"]) == 0

    captured = capsys.readouterr()
    assert json.loads(captured.out)["store"] == str(missing)
    assert captured.err == (f"note: {missing} does not exist; set MODEL_STORE or --store to the store you mean "
                            "(make dev prints the lines for its own)\n")
    assert not missing.exists()


def test_cli_names_a_bucket_on_the_emulator_as_such(gcs_store, emulator, capsys):
    publish(gcs_store, tiny_manifest(), tiny_files())
    capsys.readouterr()

    assert main(["--store", gcs_store.uri, "remove", "tiny@1"]) == 0

    assert capsys.readouterr().out == f"removed tiny@1 from {gcs_store.uri} (the storage emulator at {emulator.url})\n"


def test_cli_without_google_cloud_credentials_prints_one_error_line(tmp_path):
    # A clean process: no emulator, no credentials file, and no probe of the metadata server
    # (NO_GCE_CHECK), so nothing is contacted.
    env = {key: value for key, value in os.environ.items()
           if key not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path), NO_GCE_CHECK="true")

    done = subprocess.run([sys.executable, "-m", "imgclassify.publish", "--store", "gs://some-bucket", "list"],
                          env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == ("error: no Google Cloud credentials: run `gcloud auth application-default login`, "
                           "or set STORAGE_EMULATOR_HOST to use a storage emulator "
                           "(make dev prints the lines for its own)\n")


@pytest.mark.parametrize("ref, message", [
    ("tiny", "remove needs NAME@VERSION"),
    ("tiny@latest", "remove needs NAME@VERSION"),
    ("tiny@9", "tiny@9 is not published"),
    ("../tiny@1", "model name must be"),
])
def test_cli_remove_reports_errors_with_exit_status_one(tmp_path, capsys, ref, message):
    store_dir = tmp_path / "models"
    publish(LocalStore(store_dir), tiny_manifest(), tiny_files())
    capsys.readouterr()

    status = main(["--store", str(store_dir), "remove", ref])

    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.startswith("error: ")
    assert message in captured.err
    assert read_catalog(LocalStore(store_dir))[0].resolve("tiny", None) == "1"


def test_cli_refuses_to_publish_an_existing_version_before_exporting_it(tmp_path, capsys, monkeypatch):
    store_dir = tmp_path / "models"
    publish(LocalStore(store_dir), tiny_manifest(name="mobilenet_v3_small"), tiny_files())
    before = snapshot(LocalStore(store_dir))
    exports = []
    monkeypatch.setattr(onnx_export, "export_checked", lambda *args: exports.append(args))  # seconds saved

    status = main(["--store", str(store_dir), "torchvision", "mobilenet_v3_small", "--random-init",
                   "--version", "1", "--num-classes", "3"])

    assert status == 1
    assert "already published" in capsys.readouterr().err
    assert snapshot(LocalStore(store_dir)) == before
    assert exports == []


@pytest.mark.parametrize("lines", [9, 11])
@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_cli_refuses_a_labels_file_whose_count_is_not_the_models_classes_and_writes_nothing(
        source, lines, tmp_path, capsys):
    store_dir = tmp_path / "models"
    publish(LocalStore(store_dir), tiny_manifest(name="kept"), tiny_files())
    before = snapshot(LocalStore(store_dir))
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("".join(f"kind {i}\n" for i in range(lines)), encoding="utf-8")
    builder = "mobilenet_v3_small" if source == "torchvision" else "resnet18"

    status = main(["--store", str(store_dir), source, builder, "--random-init", "--num-classes", "10",
                   "--labels", str(labels_file), "--torch-only"])

    assert status == 1
    error = capsys.readouterr().err
    assert error == f"error: {labels_file} holds {lines} labels; the model has 10 classes\n"
    assert snapshot(LocalStore(store_dir)) == before


@pytest.mark.parametrize("checkpoint, message", [
    (lambda: torchvision.models.resnet18(num_classes=10).state_dict(),
     "does not fit torchvision mobilenet_v3_small: 210 tensors missing (first 'features.0.0.weight'), "
     "122 unexpected tensors (first 'conv1.weight'); is it a state dict of this architecture (and --num-classes)?"),
    (lambda: torchvision.models.mobilenet_v3_small(num_classes=10).state_dict(),
     "does not fit torchvision mobilenet_v3_small: 2 tensors have another shape; the first, classifier.3.weight: "
     "copying a param with shape torch.Size([10, 1024]) from checkpoint, the shape in current model is "
     "torch.Size([1000, 1024])."),
], ids=["other-architecture", "other-class-count"])
def test_cli_refuses_a_state_dict_that_does_not_fit_the_architecture_in_one_line(checkpoint, message, tmp_path,
                                                                                  capsys):
    store_dir = tmp_path / "models"
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint(), path)

    status = main(["--store", str(store_dir), "torchvision", "mobilenet_v3_small", "--state-dict", str(path)])

    assert status == 1
    assert capsys.readouterr().err == f"error: {path} {message}\n"
    assert not store_dir.exists()


def test_a_labels_file_with_one_label_per_class_names_the_classes(tmp_path):
    store = LocalStore(tmp_path / "models")
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("".join(f"kind {i}\n" for i in range(4)), encoding="utf-8")

    manifest = publish_mobilenet(store, num_classes=4, labels_file=str(labels_file), torch_only=True)

    assert manifest.labels == ("kind 0", "kind 1", "kind 2", "kind 3")


def test_the_publishers_errors_have_one_code_each_none_an_api_code_and_stand_outside_the_api_hierarchy():
    classes = [PublishError, *PublishError.__subclasses__()]
    codes = [cls.code for cls in classes]

    assert {cls.__name__ for cls in classes} == {
        "PublishError", "VersionExists", "InvalidWeights", "InvalidModelFile", "ExportMismatch",
        "InvalidTrainingSet", "AgreementTooLow"}
    assert all(cls.__module__ == publish_errors.__name__ for cls in classes)
    assert len(codes) == len(set(codes))
    assert not set(codes) & {cls.code for cls in api_errors.all_error_classes()}
    assert not any(issubclass(cls, api_errors.ServiceError) for cls in classes)
