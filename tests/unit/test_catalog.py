"""Model references, manifests and the catalog that indexes them."""

from __future__ import annotations

import copy
import json

import pytest

from imgclassify.errors import IntegrityError, InvalidRequest, UnknownModel, UnknownVersion
from imgclassify.store.catalog import (
    CATALOG_OBJECT,
    SCHEMA_VERSION,
    Architecture,
    ArtifactRef,
    Catalog,
    Manifest,
    Preprocessing,
    check_name,
    manifest_object,
    onnx_object,
    parse_model_ref,
    read_catalog,
    read_manifest,
    weights_object,
)
from imgclassify.store.objects import LocalStore

SHA = "ab" * 32


def make_manifest(name: str = "resnet", version: str = "1", *, published_at: str = "2024-01-01T00:00:00+00:00",
                  **changes) -> Manifest:
    fields = dict(
        name=name,
        version=version,
        architecture=Architecture("torchvision", "resnet18", {"num_classes": 3}),
        artifacts={"onnx": ArtifactRef(onnx_object(name, version), 1234, SHA),
                   "safetensors": ArtifactRef(weights_object(name, version), 1200, "cd" * 32)},
        labels=("cat", "dog", "bird"),
        preprocessing=Preprocessing(resize=256, crop_size=224, interpolation="bicubic"),
        random_init=True,
        metadata={"description": "a test model", "licence": "MIT", "top1_accuracy": 12.5},
        published_at=published_at,
    )
    fields.update(changes)
    return Manifest(**fields)


# --- model references ----------------------------------------------------------------------

def test_parse_model_ref_without_a_version_means_latest():
    assert parse_model_ref("resnet50") == ("resnet50", None)


def test_parse_model_ref_with_a_version_returns_it():
    assert parse_model_ref("efficientnet_lite0@3") == ("efficientnet_lite0", "3")


def test_parse_model_ref_at_latest_is_the_same_as_no_version():
    assert parse_model_ref("resnet50@latest") == ("resnet50", None)


def test_parse_model_ref_accepts_names_of_64_characters():
    name = "a" * 64

    assert parse_model_ref(name) == (name, None)


@pytest.mark.parametrize("ref", [
    "../x", "%2e%2e", "a%2fb", "model\x00", "mod\u00e8le", "\u0455ikuli", "a" * 65, "a" * 200, "", "ResNet",
    "a/b", "..", "a..b", "-lead", ".hidden", "@3", " resnet", "resnet ",
])
def test_parse_model_ref_rejects_invalid_names_with_400(ref):
    with pytest.raises(InvalidRequest) as caught:
        parse_model_ref(ref)

    assert caught.value.code == "INVALID_MODEL_NAME"
    assert caught.value.status == 400


@pytest.mark.parametrize("ref", [
    "resnet@", "resnet@../1", "resnet@1/2", "resnet@1@2", "resnet@" + "9" * 33, "resnet@v\x00", "resnet@-1",
])
def test_parse_model_ref_rejects_invalid_versions_with_400(ref):
    with pytest.raises(InvalidRequest) as caught:
        parse_model_ref(ref)

    assert caught.value.status == 400


@pytest.mark.parametrize("ref", [None, 3, ["resnet"], b"resnet"])
def test_parse_model_ref_rejects_non_strings_with_400(ref):
    with pytest.raises(InvalidRequest) as caught:
        parse_model_ref(ref)

    assert caught.value.code == "INVALID_MODEL_NAME"
    assert caught.value.status == 400


def test_invalid_name_message_is_truncated():
    with pytest.raises(InvalidRequest) as caught:
        check_name("X" * 10_000)

    assert len(caught.value.message) < 400


def test_bucket_layout_puts_each_version_in_its_own_directory():
    assert manifest_object("resnet", "2") == "models/resnet/2/manifest.json"
    assert onnx_object("resnet", "2") == "models/resnet/2/model.onnx"
    assert weights_object("resnet", "2") == "models/resnet/2/weights.safetensors"


# --- preprocessing and manifests -----------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"resize": 200, "crop_size": 224},
    {"resize": 256, "crop_size": 0},
    {"resize": 5000, "crop_size": 224},
    {"resize": 256, "crop_size": 224.0},
    {"resize": 256, "crop_size": 224, "interpolation": "area"},
    {"resize": 256, "crop_size": 224, "mean": (0.5, 0.5)},
    {"resize": 256, "crop_size": 224, "std": (0.5, 0.0, 0.5)},
    {"resize": 256, "crop_size": 224, "mean": ("a", "b", "c")},
])
def test_preprocessing_rejects_impossible_settings(kwargs):
    with pytest.raises(ValueError):
        Preprocessing(**kwargs)


def test_manifest_survives_a_json_round_trip():
    manifest = make_manifest()

    parsed = Manifest.from_json(json.loads(manifest.to_bytes()))

    assert parsed == manifest


def test_manifest_json_states_input_size_and_number_of_classes():
    data = make_manifest().to_json()

    assert data["input_size"] == [3, 224, 224]
    assert data["num_classes"] == 3
    assert data["labels"] == ["cat", "dog", "bird"]
    assert data["random_init"] is True


def test_manifest_from_json_fills_optional_fields_with_defaults():
    data = make_manifest().to_json()
    for optional in ("random_init", "metadata", "published_at", "publish_id", "output"):
        del data[optional]
    del data["architecture"]["kwargs"]
    del data["preprocessing"]["interpolation"]

    parsed = Manifest.from_json(data)

    assert (parsed.random_init, parsed.metadata, parsed.published_at, parsed.publish_id) == (False, {}, "", "")
    assert parsed.output == "logits"
    assert parsed.architecture.kwargs == {}
    assert parsed.preprocessing.interpolation == "bilinear"


@pytest.mark.parametrize("path", [
    ("name",), ("version",), ("labels",), ("engine",), ("artifacts",), ("artifacts", "onnx", "object"),
    ("artifacts", "onnx", "bytes"), ("artifacts", "safetensors", "sha256"), ("architecture",),
    ("architecture", "library"), ("architecture", "builder"),
    ("preprocessing",), ("preprocessing", "resize"), ("preprocessing", "crop_size"), ("preprocessing", "mean"),
    ("preprocessing", "std"),
])
def test_manifest_from_json_rejects_a_missing_field(path):
    data = make_manifest().to_json()
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]

    with pytest.raises(ValueError):
        Manifest.from_json(data)


@pytest.mark.parametrize("sha256", ["", "ab" * 31, "ab" * 33, "AB" * 32, "zz" * 32, "ab" * 32 + "\n"])
def test_manifest_from_json_rejects_a_bad_sha256(sha256):
    data = make_manifest().to_json()
    data["artifacts"]["onnx"]["sha256"] = sha256

    with pytest.raises(ValueError, match="sha256"):
        Manifest.from_json(data)


@pytest.mark.parametrize("labels", [[], ["cat", 3], [None], "cat", {"cat": 1}, None])
def test_manifest_from_json_rejects_labels_that_are_not_a_non_empty_list_of_strings(labels):
    data = make_manifest().to_json()
    data["labels"] = labels

    with pytest.raises(ValueError):
        Manifest.from_json(data)


@pytest.mark.parametrize("field, value", [
    ("name", "../etc"), ("name", "UPPER"), ("version", "a/b"), ("version", ""),
    ("architecture", {"library": "timm", "builder": "x", "kwargs": [1, 2]}),
    ("preprocessing", {"resize": 10, "crop_size": 20, "mean": [0, 0, 0], "std": [1, 1, 1]}),
    ("artifacts", {"onnx": {"object": "x", "bytes": "many", "sha256": SHA}}),
    ("artifacts", {}), ("artifacts", {"pickle": {"object": "x", "bytes": 1, "sha256": SHA}}), ("artifacts", []),
    ("output", "softmax"),
])
def test_manifest_from_json_rejects_a_field_of_the_wrong_shape(field, value):
    data = make_manifest().to_json()
    data[field] = value

    with pytest.raises(ValueError):
        Manifest.from_json(data)


def test_a_new_manifest_is_schema_two_naming_each_artifact_and_its_engine():
    data = make_manifest().to_json()

    assert data["schema_version"] == SCHEMA_VERSION == 2
    assert data["engine"] == "onnxruntime"
    assert data["artifacts"] == {
        "onnx": {"object": "models/resnet/1/model.onnx", "bytes": 1234, "sha256": SHA},
        "safetensors": {"object": "models/resnet/1/weights.safetensors", "bytes": 1200, "sha256": "cd" * 32},
    }
    assert "weights" not in data


def schema_one_json(name: str = "resnet", version: str = "1") -> dict:
    """A manifest as publishers wrote them before ONNX: one ``weights`` object, no engine."""
    data = make_manifest(name, version).to_json()
    del data["artifacts"], data["engine"], data["output"]
    data["schema_version"] = 1
    data["weights"] = {"object": weights_object(name, version), "bytes": 1200, "sha256": "cd" * 32}
    return data


def test_a_schema_one_manifest_reads_as_a_torch_only_model():
    manifest = Manifest.from_json(schema_one_json())

    assert manifest.schema_version == 1
    assert manifest.engine == "torch"
    assert manifest.artifacts == {"safetensors": ArtifactRef(weights_object("resnet", "1"), 1200, "cd" * 32)}
    assert manifest.served_artifact() == manifest.artifacts["safetensors"]
    assert manifest.summary()["engine"] == "torch"
    assert manifest.summary()["weights_bytes"] == 1200


def test_a_manifest_without_a_schema_version_is_schema_one():
    data = schema_one_json()
    del data["schema_version"]

    assert Manifest.from_json(data).artifacts.keys() == {"safetensors"}


def test_the_served_artifact_is_model_onnx_where_there_is_one():
    manifest = make_manifest()

    assert manifest.served_artifact().object == onnx_object("resnet", "1")
    assert manifest.summary()["weights_bytes"] == manifest.artifacts["onnx"].bytes


@pytest.mark.parametrize("data", [None, [], "manifest", 42])
def test_manifest_from_json_rejects_a_document_that_is_not_an_object(data):
    with pytest.raises(ValueError):
        Manifest.from_json(data)


def test_manifest_summary_is_what_the_catalog_lists():
    summary = make_manifest().summary()

    assert summary == {
        "name": "resnet", "version": "1", "description": "a test model", "architecture": "torchvision/resnet18",
        "input_size": [3, 224, 224], "num_classes": 3, "engine": "onnxruntime", "feature_size": None,
        "weights_bytes": 1234, "random_init": True,
        "top1_accuracy": 12.5, "licence": "MIT", "source": None, "published_at": "2024-01-01T00:00:00+00:00",
        "precision": "fp32", "agreement": None, "quantized_from": None,
    }


# --- the catalog ---------------------------------------------------------------------------

def test_with_version_lists_the_version_as_latest_and_makes_the_first_model_default():
    catalog = Catalog().with_version(make_manifest("resnet", "1"))

    assert catalog.models["resnet"]["latest"] == "1"
    assert catalog.models["resnet"]["versions"]["1"] == make_manifest("resnet", "1").summary()
    assert catalog.default_model == "resnet"


def test_with_version_makes_a_newer_version_latest_and_keeps_older_ones():
    catalog = Catalog().with_version(make_manifest("resnet", "1")).with_version(make_manifest("resnet", "2"))

    assert catalog.resolve("resnet", None) == "2"
    assert sorted(catalog.models["resnet"]["versions"]) == ["1", "2"]


def test_with_version_keeps_the_existing_default_unless_asked_to_replace_it():
    catalog = Catalog().with_version(make_manifest("resnet"))

    kept = catalog.with_version(make_manifest("vit"))
    replaced = catalog.with_version(make_manifest("vit"), make_default=True)

    assert kept.default_model == "resnet"
    assert replaced.default_model == "vit"


def test_with_version_leaves_the_original_catalog_unchanged():
    original = Catalog().with_version(make_manifest("resnet", "1"))
    snapshot = copy.deepcopy(original.models)

    original.with_version(make_manifest("resnet", "2"))
    original.with_version(make_manifest("vit", "1"), make_default=True)

    assert original.models == snapshot
    assert original.default_model == "resnet"


def test_without_version_of_latest_falls_back_to_the_newest_remaining_version():
    catalog = Catalog()
    for version, published_at in (("1", "2024-01-01T00:00:00+00:00"), ("3", "2024-03-01T00:00:00+00:00"),
                                  ("2", "2024-02-01T00:00:00+00:00"), ("4", "2024-04-01T00:00:00+00:00")):
        catalog = catalog.with_version(make_manifest("resnet", version, published_at=published_at))

    catalog = catalog.without_version("resnet", "4")

    assert catalog.resolve("resnet", None) == "3"
    assert sorted(catalog.models["resnet"]["versions"]) == ["1", "2", "3"]


def test_without_version_of_latest_orders_numeric_versions_published_in_the_same_second_by_number():
    same_second = "2024-01-01T00:00:00+00:00"
    catalog = Catalog()
    for version in ("2", "9", "10", "11"):
        catalog = catalog.with_version(make_manifest("resnet", version, published_at=same_second))

    catalog = catalog.without_version("resnet", "11")

    assert catalog.resolve("resnet", None) == "10"


def test_without_version_of_an_older_version_keeps_latest():
    catalog = Catalog().with_version(make_manifest("resnet", "1")).with_version(make_manifest("resnet", "2"))

    catalog = catalog.without_version("resnet", "1")

    assert catalog.models["resnet"] == {"latest": "2", "versions": {"2": make_manifest("resnet", "2").summary()}}


def test_without_the_last_version_drops_the_model_and_clears_it_as_default():
    catalog = Catalog().with_version(make_manifest("resnet")).with_version(make_manifest("vit"))
    assert catalog.default_model == "resnet"

    catalog = catalog.without_version("resnet", "1")

    assert "resnet" not in catalog.models
    assert catalog.default_model is None
    assert catalog.default_name() == "vit"


def test_without_the_last_version_of_another_model_keeps_the_default():
    catalog = Catalog().with_version(make_manifest("resnet")).with_version(make_manifest("vit"))

    catalog = catalog.without_version("vit", "1")

    assert list(catalog.models) == ["resnet"]
    assert catalog.default_model == "resnet"


def test_without_version_leaves_the_original_catalog_unchanged():
    original = Catalog().with_version(make_manifest("resnet", "1")).with_version(make_manifest("resnet", "2"))
    snapshot = copy.deepcopy(original.models)

    original.without_version("resnet", "2")

    assert original.models == snapshot


def test_without_an_unknown_model_or_version_raises_404():
    catalog = Catalog().with_version(make_manifest("resnet", "1"))

    with pytest.raises(UnknownModel):
        catalog.without_version("vit", "1")
    with pytest.raises(UnknownVersion):
        catalog.without_version("resnet", "2")


def test_resolve_returns_latest_or_the_named_version():
    catalog = Catalog().with_version(make_manifest("resnet", "1")).with_version(make_manifest("resnet", "2"))

    assert catalog.resolve("resnet", None) == "2"
    assert catalog.resolve("resnet", "1") == "1"


def test_resolve_of_an_unknown_model_raises_unknown_model_404_naming_the_known_ones():
    catalog = Catalog().with_version(make_manifest("resnet"))

    with pytest.raises(UnknownModel) as caught:
        catalog.resolve("vit", None)

    assert caught.value.status == 404
    assert caught.value.code == "UNKNOWN_MODEL"
    assert "resnet" in caught.value.message


def test_resolve_of_an_unknown_version_raises_unknown_version_404():
    catalog = Catalog().with_version(make_manifest("resnet", "1"))

    with pytest.raises(UnknownVersion) as caught:
        catalog.resolve("resnet", "7")

    assert caught.value.status == 404
    assert caught.value.code == "UNKNOWN_VERSION"


def test_resolve_on_an_empty_catalog_raises_unknown_model():
    with pytest.raises(UnknownModel):
        Catalog().resolve("resnet", None)


def test_default_name_is_the_marked_default_else_the_first_name_else_none():
    catalog = Catalog().with_version(make_manifest("zeta")).with_version(make_manifest("alpha"))

    assert catalog.default_name() == "zeta"
    assert Catalog(models=catalog.models).default_name() == "alpha"
    assert Catalog().default_name() is None


def test_listing_shows_latest_versions_default_first_then_by_name():
    catalog = (Catalog().with_version(make_manifest("zeta")).with_version(make_manifest("beta"))
               .with_version(make_manifest("alpha")).with_version(make_manifest("beta", "2")))

    rows = catalog.listing()

    assert [(row["name"], row["version"], row["default"], row["versions"]) for row in rows] == [
        ("zeta", "1", True, ["1"]), ("alpha", "1", False, ["1"]), ("beta", "2", False, ["1", "2"]),
    ]


def test_catalog_survives_a_bytes_round_trip():
    catalog = Catalog().with_version(make_manifest("resnet", "1")).with_version(make_manifest("vit", "3"))

    parsed = Catalog.from_bytes(catalog.to_bytes())

    assert parsed == catalog


@pytest.mark.parametrize("raw", [
    b"", b"not json at all", b"\xff\xfe\x00garbage", b"[]", b"null", b"{}", b'{"models": []}',
    b'{"models": {"resnet": 1}}', b'{"models": {"resnet": {"versions": {}}}}',
    b'{"models": {"resnet": {"latest": "2", "versions": {"1": {}}}}}',
    b'{"models": {"resnet": {"latest": ["1"], "versions": {"1": {}}}}}',
])
def test_catalog_from_bytes_of_garbage_raises_integrity_error(raw):
    with pytest.raises(IntegrityError) as caught:
        Catalog.from_bytes(raw)

    assert caught.value.status == 500
    assert CATALOG_OBJECT in caught.value.message


# --- reading from a store ------------------------------------------------------------------

def test_read_catalog_of_an_empty_store_is_an_empty_catalog_at_generation_zero(tmp_path):
    catalog, generation = read_catalog(LocalStore(tmp_path))

    assert catalog == Catalog()
    assert generation == 0


def test_read_catalog_returns_the_stored_catalog_and_its_generation(tmp_path):
    store = LocalStore(tmp_path)
    catalog = Catalog().with_version(make_manifest())
    generation = store.write(CATALOG_OBJECT, catalog.to_bytes())

    assert read_catalog(store) == (catalog, generation)


def test_read_catalog_of_a_corrupt_catalog_raises_integrity_error(tmp_path):
    store = LocalStore(tmp_path)
    store.write(CATALOG_OBJECT, b"{ truncated")

    with pytest.raises(IntegrityError):
        read_catalog(store)


def test_read_manifest_returns_the_stored_manifest(tmp_path):
    store = LocalStore(tmp_path)
    manifest = make_manifest("resnet", "2")
    store.write(manifest_object("resnet", "2"), manifest.to_bytes())

    assert read_manifest(store, "resnet", "2") == manifest


def test_read_manifest_of_a_missing_manifest_raises_integrity_error(tmp_path):
    with pytest.raises(IntegrityError) as caught:
        read_manifest(LocalStore(tmp_path), "resnet", "1")

    assert caught.value.code == "INTEGRITY_ERROR"
    assert "resnet@1" in caught.value.message


@pytest.mark.parametrize("raw", [b"not json", b"\xff\xfe", b"{}", b'{"name": "resnet"}'])
def test_read_manifest_of_a_malformed_manifest_raises_integrity_error(tmp_path, raw):
    store = LocalStore(tmp_path)
    store.write(manifest_object("resnet", "1"), raw)

    with pytest.raises(IntegrityError, match="malformed"):
        read_manifest(store, "resnet", "1")


@pytest.mark.parametrize("value", [0, -1, "1280", 2.5, True])
def test_a_manifest_feature_size_that_is_not_a_positive_whole_number_is_malformed(value):
    data = make_manifest().to_json()
    data["feature_size"] = value
    with pytest.raises(ValueError, match="feature_size"):
        Manifest.from_json(data)


def test_a_manifest_feature_size_survives_a_round_trip_and_older_manifests_have_none():
    from dataclasses import replace

    manifest = replace(make_manifest(), feature_size=1280)
    assert Manifest.from_json(manifest.to_json()).feature_size == 1280
    data = make_manifest().to_json()
    del data["feature_size"]
    assert Manifest.from_json(data).feature_size is None
