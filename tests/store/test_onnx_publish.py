"""Publishing with ONNX (issue 10): torchvision and timm models exported and proven on real photos,
an export that does not match refused, ONNX files from anywhere brought through the same checks,
and a bucket of models published before ONNX served by torch until `publish migrate` republishes it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from onnx import helper, numpy_helper
from PIL import Image

from imgclassify.publish import export as onnx_export
from imgclassify.publish.catalog_writes import update_catalog
from imgclassify.publish.cli import main
from imgclassify.publish.errors import ExportMismatch
from imgclassify.publish.export import LOGIT_TOLERANCE, check_batch, compare_logits
from imgclassify.publish.graphs import with_feature_output
from imgclassify.publish.sources import publish_torch_module, serialize_weights
from imgclassify.runtime.engines import EngineOptions, TorchEngine
from imgclassify.runtime.onnx_rules import check_onnx
from imgclassify.runtime.registry import ModelRegistry
from imgclassify.store.catalog import (
    Architecture,
    ArtifactRef,
    Manifest,
    Preprocessing,
    manifest_object,
    onnx_object,
    read_catalog,
    read_manifest,
    weights_object,
)
from imgclassify.store.objects import GcsStore
from tests.support.apps import client_for
from tests.support.onnx_graphs import (
    colour_classifier,
    serialized,
    with_external_data,
    with_foreign_node,
    with_input_shape,
    with_input_type,
    with_padding,
    with_second_input,
)
from tests.support.photos import encode, real_photo

pytestmark = pytest.mark.integration

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
# name -> the command that publishes it (random initialisation, 10 classes: seconds, not minutes)
FRAMEWORK_MODELS = {
    "tv_resnet18": ["torchvision", "resnet18", "--random-init", "--num-classes", "10", "--name", "tv_resnet18"],
    "timm_lite0": ["timm", "tf_efficientnet_lite0", "--random-init", "--num-classes", "10", "--name", "timm_lite0"],
}


def registry_for(bucket: str, engine: str = "onnxruntime") -> ModelRegistry:
    return ModelRegistry.over(GcsStore(bucket), cache_budget_bytes=2**30, catalog_ttl_seconds=0,
                         engine_options=EngineOptions(engine))


def photo_bytes(name: str) -> bytes:
    return encode(real_photo(name), "PNG")


def snapshot(store, prefix: str) -> dict:
    """Every object under ``prefix`` with its bytes and generation."""
    return {name: store.read(name) for name in store.list(prefix)}


@pytest.fixture(scope="module")
def framework_bucket(emulator) -> str:
    """A bucket with one torchvision and one timm model, published with the command line."""
    bucket = "framework-models"
    emulator.create_bucket(bucket)
    for command in FRAMEWORK_MODELS.values():
        assert main(["--store", f"gs://{bucket}", *command]) == 0
    return bucket


# --- exported models ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FRAMEWORK_MODELS))
def test_publishing_a_framework_model_writes_model_onnx_and_weights_named_in_a_schema_2_manifest(
        framework_bucket, name):
    store = GcsStore(framework_bucket)
    raw = json.loads(store.read(manifest_object(name, "1")).data)
    manifest = read_manifest(store, name, "1")

    assert store.list(f"models/{name}/") == [manifest_object(name, "1"), onnx_object(name, "1"),
                                              weights_object(name, "1")]
    assert raw["schema_version"] == 2 and raw["engine"] == "onnxruntime" and "weights" not in raw
    assert set(raw["artifacts"]) == {"onnx", "safetensors"}
    for ref in manifest.artifacts.values():
        data = store.download(ref.object)
        assert (ref.bytes, ref.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    signature = check_onnx(store.download(manifest.artifacts["onnx"].object))
    assert isinstance(signature.input_shape[0], str), "the batch dimension must be dynamic"
    assert signature.output_shape[1] == 10
    check = manifest.metadata["onnx_check"]
    assert check["photos"] == 4 and 0 <= check["max_logit_difference"] <= LOGIT_TOLERANCE
    assert read_catalog(store)[0].models[name]["versions"]["1"]["engine"] == "onnxruntime"


@pytest.mark.parametrize("name", sorted(FRAMEWORK_MODELS))
def test_the_served_top5_of_a_framework_model_is_the_torch_engines_with_scores_within_1e_4(framework_bucket, name):
    served, _ = registry_for(framework_bucket).get(name)
    reference, _ = registry_for(framework_bucket, "torch").get(name)
    inputs = [served.prepare(photo_bytes(photo), max_pixels=10**8) for photo in PHOTOS]

    got, expected = served.outputs(inputs), reference.outputs(inputs)
    rows, expected_rows = served.classify(inputs, 5), reference.classify(inputs, 5)

    assert (served.engine.name, reference.engine.name) == ("onnxruntime", "torch")
    # Untrained networks can rank classes whose logits are nearly tied: make sure these are not,
    # or equal top-5 lists would prove nothing.
    gaps = -np.diff(np.sort(expected, axis=1)[:, ::-1][:, :6], axis=1)
    assert gaps.min() > 10 * np.abs(got - expected).max()
    assert [[p["index"] for p in row] for row in rows] == [[p["index"] for p in row] for row in expected_rows]
    assert max(abs(p["score"] - q["score"]) for row, other in zip(rows, expected_rows, strict=True)
               for p, q in zip(row, other, strict=True)) <= 1e-4


# --- an export that does not match --------------------------------------------------------------

def small_network(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, kernel_size=3, stride=4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()


def small_manifest() -> Manifest:
    return Manifest(name="small", version="1", architecture=Architecture("torch", "sequential"), artifacts={},
                    labels=tuple("abcde"), preprocessing=Preprocessing(resize=40, crop_size=32))


def test_an_export_that_does_not_match_fails_naming_the_measured_difference_and_writes_nothing(
        gcs_store, monkeypatch):
    module, impostor = small_network(0), small_network(1)
    real_export = onnx_export.export_onnx
    # Fault injection: the exporter hands back another network's graph.
    monkeypatch.setattr(onnx_export, "export_onnx", lambda _module, crop: real_export(impostor, crop))
    batch = torch.from_numpy(check_batch(small_manifest().preprocessing))
    with torch.inference_mode():
        difference = float((module(batch) - impostor(batch)).abs().max())

    with pytest.raises(ExportMismatch) as caught:
        publish_torch_module(gcs_store, small_manifest(), module)

    assert caught.value.code == "EXPORT_MISMATCH"
    assert f"logits differ by up to {difference:.3g} (tolerance 0.0001)" in caught.value.message
    assert gcs_store.list("") == []


def test_the_same_network_exported_for_real_is_published(gcs_store):
    # The control for the mismatch above.
    manifest = publish_torch_module(gcs_store, small_manifest(), small_network(0))

    assert set(manifest.artifacts) == {"onnx", "safetensors"}
    assert manifest.metadata["onnx_check"]["max_logit_difference"] <= 1e-6


def test_compare_logits_allows_ties_within_the_tolerance_but_not_a_reordered_top5():
    expected = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    assert compare_logits(expected, expected + 5e-5) is None
    assert compare_logits(expected, expected + np.array([[0, 0, 0, 0, 0, 2e-4]])) == \
        "logits differ by up to 0.0002 (tolerance 0.0001)"

    # Two classes 1.5e-4 apart swap places although no logit moved by more than 9e-5: refused.
    apart = np.array([[1.0, 1.00015, 0.5, 0.4, 0.3, 0.2]])
    assert compare_logits(apart, apart + np.array([[9e-5, -9e-5, 0, 0, 0, 0]])) == \
        "photo 0: top-5 [1, 0, 2, 3, 4] became [0, 1, 2, 3, 4]"
    # Two classes 8e-5 apart are a tie within the tolerance: either order is right.
    tied = np.array([[1.0, 1.00008, 0.5, 0.4, 0.3, 0.2]])
    assert compare_logits(tied, tied + np.array([[5e-5, -5e-5, 0, 0, 0, 0]])) is None


# --- bring your own ONNX -----------------------------------------------------------------------

def onnx_command(bucket: str, path, labels, *extra: str) -> list[str]:
    return ["--store", f"gs://{bucket}", "onnx", str(path), "--labels", str(labels), "--crop-size", "32",
            "--mean", "0", "0", "0", "--std", "1", "1", "1", *extra]


@pytest.fixture
def labels_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("red\ngreen\nblue\n", encoding="utf-8")
    return path


def test_a_brought_onnx_file_is_published_and_served_over_the_emulator(gcs_store, labels_file, tmp_path, capsys):
    graph = colour_classifier(3, weight=4 * np.eye(3))
    path = tmp_path / "Colour-Net.onnx"
    path.write_bytes(serialized(graph))

    assert main(onnx_command(gcs_store.bucket_name, path, labels_file)) == 0

    # the same graph with its penultimate features (the final MatMul's input) as a second output
    published, feature_size = with_feature_output(serialized(graph))
    assert feature_size == 3 and published != serialized(graph)
    assert f"published colour_net@1 (model.onnx {len(published):,} bytes)" in capsys.readouterr().out
    manifest = read_manifest(gcs_store, "colour_net", "1")
    assert (manifest.engine, manifest.architecture, set(manifest.artifacts)) == (
        "onnxruntime", Architecture("onnx", "tests"), {"onnx"})
    assert manifest.labels == ("red", "green", "blue")
    assert manifest.preprocessing == Preprocessing(resize=37, crop_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    assert gcs_store.download(manifest.artifacts["onnx"].object) == published
    assert manifest.feature_size == 3

    predictions = classify_orange(gcs_store.bucket_name, "colour_net")

    expected = softmax(orange_logits(graph))
    assert [p["label"] for p in predictions] == [("red", "green", "blue")[i] for i in np.argsort(-expected)]
    assert max(abs(p["score"] - expected[p["index"]]) for p in predictions) <= 1e-6


def test_a_brought_file_whose_output_is_probabilities_is_served_without_a_second_softmax(
        gcs_store, labels_file, tmp_path):
    graph = colour_classifier(3, weight=4 * np.eye(3))
    graph.graph.node[-1].output[0] = "raw"
    graph.graph.node.append(helper.make_node("Softmax", ["raw"], ["logits"], axis=1))
    path = tmp_path / "probabilities.onnx"
    path.write_bytes(serialized(graph))

    assert main(onnx_command(gcs_store.bucket_name, path, labels_file, "--output", "probabilities")) == 0
    predictions = classify_orange(gcs_store.bucket_name, "probabilities")

    assert read_manifest(gcs_store, "probabilities", "1").output == "probabilities"
    expected = softmax(orange_logits(graph))
    assert max(abs(p["score"] - expected[p["index"]]) for p in predictions) <= 1e-6
    assert abs(sum(p["score"] for p in predictions) - 1) <= 3e-6


def classify_orange(bucket: str, model: str) -> list[dict]:
    orange = Image.new("RGB", (64, 48), (255, 128, 0))
    response = client_for(bucket).post(f"/v1/models/{model}:classify", data=encode(orange, "PNG"),
                                       content_type="image/png")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["results"][0]["predictions"]


def orange_logits(graph) -> np.ndarray:
    """Independently of the service: the orange's mean colour (mean 0, std 1) through the graph's weights."""
    tensors = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.graph.initializer}
    return np.array([1.0, 128 / 255, 0.0]) @ tensors["weight"] + tensors["bias"]


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max())
    return exp / exp.sum()


BAD_FILES = {
    "two-inputs": (lambda: serialized(with_second_input(colour_classifier(3))), (), "2 inputs and 1 outputs"),
    "int-input": (lambda: serialized(with_input_type(colour_classifier(3), 7)), (), "must be float32"),
    "3d-input": (lambda: serialized(with_input_shape(colour_classifier(3), ["N", 3, "H"])), (),
                 "must be NCHW with 3 channels"),
    "width-not-label-count": (lambda: serialized(colour_classifier(4)), (),
                              "the output has 4 classes but 3 labels were given"),
    "vendor-domain": (lambda: serialized(with_foreign_node(colour_classifier(3))), (),
                      "non-standard domains ['com.microsoft']"),
    "custom-domain": (lambda: serialized(with_foreign_node(colour_classifier(3), "evil.custom", "Exfiltrate")),
                      (), "non-standard domains ['evil.custom']"),
    "external-data": (lambda: serialized(with_external_data(colour_classifier(3), "/etc/passwd")), (),
                      "tensor 'weight' refers to external data"),
    "fixed-batch-1": (lambda: serialized(colour_classifier(3, batch=1)), (),
                      "the input's batch dimension is fixed at 1; export it dynamic"),
    "over-max-mb": (lambda: serialized(with_padding(colour_classifier(3), 2**20)), ("--max-mb", "1"),
                    "the limit is 1,048,576"),
    "not-onnx": (lambda: encode(real_photo("chelsea")), (), "not an ONNX model"),
    "nan-output": (lambda: serialized(colour_classifier(3, weight=np.full((3, 3), np.nan))), (),
                   "NaN or infinite scores"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_onnx_file_is_refused_with_a_clear_error_and_nothing_is_written(
        gcs_store, labels_file, tmp_path, capsys, case):
    make, extra, message = BAD_FILES[case]
    path = tmp_path / "model.onnx"
    path.write_bytes(make())

    status = main(onnx_command(gcs_store.bucket_name, path, labels_file, *extra))

    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.startswith("error: ") and message in captured.err
    assert "Traceback" not in captured.err
    assert gcs_store.list("") == []


@pytest.mark.parametrize("missing", ["model", "labels"])
def test_a_model_or_labels_file_that_does_not_exist_is_a_clear_error(gcs_store, labels_file, tmp_path, capsys,
                                                                      missing):
    model = tmp_path / "model.onnx"
    if missing == "labels":
        model.write_bytes(serialized(colour_classifier(3)))
        labels_file = tmp_path / "no-labels.txt"

    status = main(onnx_command(gcs_store.bucket_name, model, labels_file))

    captured = capsys.readouterr()
    assert status == 1
    assert captured.err == f"error: No such file or directory: {model if missing == 'model' else labels_file}\n"
    assert gcs_store.list("") == []


# --- models published before ONNX ---------------------------------------------------------------

def publish_schema_one(store: GcsStore, name: str) -> bytes:
    """Write ``name@1`` as publishers did before ONNX: weights.safetensors and a schema-1 manifest."""
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    weights = serialize_weights(mobilenet_v3_small(num_classes=10).state_dict())
    ref = ArtifactRef(weights_object(name, "1"), len(weights), hashlib.sha256(weights).hexdigest())
    legacy = Manifest(name=name, version="1", architecture=Architecture("torchvision", "mobilenet_v3_small",
                                                                         {"num_classes": 10}),
                      artifacts={"safetensors": ref}, labels=tuple(f"class_{i}" for i in range(10)),
                      preprocessing=Preprocessing(resize=256, crop_size=224), engine="torch", random_init=True,
                      published_at="2026-01-01T00:00:00+00:00")
    data = legacy.to_json()
    del data["artifacts"], data["engine"], data["output"], data["publish_id"]
    data.update(schema_version=1, weights={"object": ref.object, "bytes": ref.bytes, "sha256": ref.sha256})
    store.write(ref.object, weights)
    store.write(manifest_object(name, "1"), json.dumps(data).encode())
    update_catalog(store, lambda catalog: catalog.with_version(read_manifest(store, name, "1")))
    return weights


def classify_photo(bucket: str, ref: str):
    return client_for(bucket).post(f"/v1/models/{ref}:classify", data=photo_bytes("chelsea"),
                                   content_type="image/png")


def test_a_schema_1_model_is_served_by_torch_then_migrate_republishes_it_with_onnx_leaving_it_untouched(
        gcs_store, monkeypatch, capsys):
    bucket = gcs_store.bucket_name
    weights = publish_schema_one(gcs_store, "legacy")
    old_files = snapshot(gcs_store, "models/legacy/1/")

    served_by_torch = classify_photo(bucket, "legacy")
    legacy_model, _ = registry_for(bucket).get("legacy@1")
    assert served_by_torch.status_code == 200, served_by_torch.get_data(as_text=True)
    assert legacy_model.engine.name == "torch"

    assert main(["--store", f"gs://{bucket}", "migrate"]) == 0
    assert "migrated legacy@1 -> legacy@2" in capsys.readouterr().out

    migrated = read_manifest(gcs_store, "legacy", "2")
    assert (migrated.schema_version, migrated.engine, set(migrated.artifacts)) == (
        2, "onnxruntime", {"onnx", "safetensors"})
    assert migrated.metadata["migrated_from"] == "1"
    assert migrated.feature_size is not None  # the export carries the penultimate features
    assert migrated.artifacts["safetensors"].sha256 == hashlib.sha256(weights).hexdigest()
    assert (migrated.labels, migrated.preprocessing, migrated.architecture) == (
        legacy_model.manifest.labels, legacy_model.manifest.preprocessing, legacy_model.manifest.architecture)
    assert snapshot(gcs_store, "models/legacy/1/") == old_files  # versions are immutable
    assert read_catalog(gcs_store)[0].resolve("legacy", None) == "2"

    served, _ = registry_for(bucket).get("legacy")
    inputs = [served.prepare(photo_bytes(photo), max_pixels=10**8) for photo in PHOTOS]
    assert served.engine.name == "onnxruntime"
    assert np.abs(served.outputs(inputs) - legacy_model.outputs(inputs)).max() <= LOGIT_TOLERANCE

    monkeypatch.setattr(TorchEngine, "installed", staticmethod(lambda: False))
    latest, old = classify_photo(bucket, "legacy"), classify_photo(bucket, "legacy@1")
    assert latest.status_code == 200, latest.get_data(as_text=True)
    assert latest.get_json()["model"]["version"] == "2"
    assert old.status_code == 500
    assert old.get_json()["error"]["code"] == "ENGINE_UNAVAILABLE"
    assert "python -m imgclassify.publish migrate legacy" in old.get_json()["error"]["message"]

    assert main(["--store", f"gs://{bucket}", "migrate"]) == 0
    assert "migrated 0 models" in capsys.readouterr().out


def test_a_schema_1_model_without_torch_is_refused_naming_the_migrate_command(gcs_store, monkeypatch):
    publish_schema_one(gcs_store, "legacy")
    monkeypatch.setattr(TorchEngine, "installed", staticmethod(lambda: False))

    response = classify_photo(gcs_store.bucket_name, "legacy")

    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error["code"] == "ENGINE_UNAVAILABLE"
    assert "legacy@1 has only safetensors" in error["message"]
    assert "`python -m imgclassify.publish migrate legacy`" in error["message"]


def test_migrate_adds_the_feature_output_to_an_onnx_model_published_without_one(gcs_store, capsys):
    from imgclassify.publish.catalog_writes import publish

    graph = colour_classifier(3, weight=4 * np.eye(3))
    preprocessing = Preprocessing(resize=37, crop_size=32, mean=(0, 0, 0), std=(1, 1, 1))
    publish(gcs_store, Manifest(name="colours", version="1", architecture=Architecture("onnx", "tests"),
                                artifacts={}, labels=("red", "green", "blue"), preprocessing=preprocessing),
            {"onnx": serialized(graph)})  # as published before graphs carried features
    old_files = snapshot(gcs_store, "models/colours/1/")
    bucket = gcs_store.bucket_name
    assert client_for(bucket).post("/v1/models/colours:embed", data=photo_bytes("chelsea"),
                                   content_type="image/png").get_json()["error"]["code"] == "EMBEDDINGS_UNAVAILABLE"

    assert main(["--store", f"gs://{bucket}", "migrate", "colours"]) == 0
    assert "migrated colours@1 -> colours@2" in capsys.readouterr().out

    migrated = read_manifest(gcs_store, "colours", "2")
    assert migrated.feature_size == 3 and migrated.metadata["migrated_from"] == "1"
    assert check_onnx(gcs_store.download(migrated.artifacts["onnx"].object)).feature_shape == ("N", 3)
    assert snapshot(gcs_store, "models/colours/1/") == old_files
    old, _ = registry_for(bucket).get("colours@1")
    new, _ = registry_for(bucket).get("colours@2")
    inputs = [new.prepare(photo_bytes(photo), max_pixels=10**8) for photo in PHOTOS]
    assert np.array_equal(new.outputs(inputs), old.outputs(inputs))
    embedded = client_for(bucket).post("/v1/models/colours:embed", data=photo_bytes("chelsea"),
                                       content_type="image/png")
    assert embedded.status_code == 200, embedded.get_data(as_text=True)
    mean_colour = new.features(inputs[:1])[0]  # the graph's features are the mean colour
    np.testing.assert_allclose(embedded.get_json()["results"][0]["embedding"],
                               mean_colour / np.linalg.norm(mean_colour), atol=1e-6)

    assert main(["--store", f"gs://{bucket}", "migrate"]) == 0
    assert "migrated 0 models" in capsys.readouterr().out


def test_migrate_of_an_unknown_model_is_an_error_and_writes_nothing(gcs_store, capsys):
    publish_schema_one(gcs_store, "legacy")
    before = snapshot(gcs_store, "")

    assert main(["--store", f"gs://{gcs_store.bucket_name}", "migrate", "nothing"]) == 1

    assert "no published model named nothing" in capsys.readouterr().err
    assert snapshot(gcs_store, "") == before
