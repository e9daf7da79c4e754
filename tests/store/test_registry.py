"""Model resolution through the catalog: TTL, new versions without redeploy, defaults."""

from __future__ import annotations

import time

import pytest

from imgclassify.errors import IntegrityError, UnknownModel, UnknownVersion
from imgclassify.publish.catalog_writes import publish, remove
from imgclassify.runtime.registry import ModelRegistry
from imgclassify.store.catalog import Architecture, ArtifactRef, Manifest, Preprocessing, manifest_object
from imgclassify.store.objects import LocalStore
from tests.support.onnx_graphs import colour_classifier, serialized


def tiny_manifest(name: str, version: str) -> Manifest:
    return Manifest(name=name, version=version, architecture=Architecture("onnx", "tests"),
                    artifacts={"onnx": ArtifactRef("", 0, "0" * 64)}, labels=("a", "b", "c"),
                    preprocessing=Preprocessing(resize=40, crop_size=32), random_init=True)


def publish_tiny(store, name: str, version: str, seed: int = 0) -> None:
    publish(store, tiny_manifest(name, version), {"onnx": serialized(colour_classifier(3, seed=seed))})


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path)


def test_latest_resolves_to_the_newest_version_once_the_ttl_has_passed(store):
    publish_tiny(store, "tiny", "1")
    registry = ModelRegistry.over(store, cache_budget_bytes=2**30, catalog_ttl_seconds=0.3)
    assert registry.resolve("tiny") == ("tiny", "1")

    publish_tiny(store, "tiny", "2", seed=1)
    still_cached = registry.resolve("tiny")
    time.sleep(0.4)

    assert still_cached == ("tiny", "1")
    assert registry.resolve("tiny") == ("tiny", "2")
    assert registry.resolve("tiny@1") == ("tiny", "1")


def test_a_model_published_after_start_is_found_at_once_despite_a_long_ttl(store):
    publish_tiny(store, "first", "1")
    registry = ModelRegistry.over(store, cache_budget_bytes=2**30, catalog_ttl_seconds=3600)
    registry.resolve("first")

    publish_tiny(store, "second", "1")
    time.sleep(1.1)

    assert registry.resolve("second") == ("second", "1")


def test_unknown_names_and_versions_raise_404_errors(store):
    publish_tiny(store, "tiny", "1")
    registry = ModelRegistry.over(store, cache_budget_bytes=2**30, catalog_ttl_seconds=60)

    with pytest.raises(UnknownModel):
        registry.resolve("nope")
    with pytest.raises(UnknownVersion):
        registry.resolve("tiny@7")


def test_no_model_means_a_clear_unknown_model_error_for_the_default(store):
    registry = ModelRegistry.over(store, cache_budget_bytes=2**30, catalog_ttl_seconds=60)

    with pytest.raises(UnknownModel, match="no model is published"):
        registry.resolve(None)


def test_configured_default_wins_over_the_catalogs(store):
    publish_tiny(store, "a", "1")
    publish_tiny(store, "b", "1")
    registry = ModelRegistry.over(store, cache_budget_bytes=2**30, catalog_ttl_seconds=60, default_model="b")

    assert registry.resolve(None) == ("b", "1")


def test_get_loads_once_and_reports_cold_then_warm(store):
    publish_tiny(store, "tiny", "1")
    registry = ModelRegistry.over(store, cache_budget_bytes=2**30, catalog_ttl_seconds=60)

    first, first_cold = registry.get("tiny")
    second, second_cold = registry.get("tiny@1")

    assert (first_cold, second_cold) == (True, False)
    assert first is second
    assert first.manifest.random_init is True
    assert set(first.load_ms) == {"download", "verify", "check"}


def test_a_loaded_model_is_built_on_first_use_and_once(store):
    publish_tiny(store, "tiny", "1")
    registry = ModelRegistry.over(store, cache_budget_bytes=2**30, catalog_ttl_seconds=60)
    model, _ = registry.get("tiny")
    assert not model.built

    network = model.network()

    assert model.built
    assert model.network() is network
    assert set(model.load_ms) == {"download", "verify", "check", "build", "warmup"}
    assert model.engine.name == "onnxruntime"


def test_a_version_removed_after_the_catalog_was_read_is_a_404_at_once_not_an_integrity_error(store):
    publish_tiny(store, "tiny", "1")
    publish_tiny(store, "other", "1")
    registry = ModelRegistry.over(store, cache_budget_bytes=2**30, catalog_ttl_seconds=3600)
    assert registry.resolve("tiny") == ("tiny", "1")  # the instance's catalog now lists tiny@1, just read

    remove(store, "tiny", "1")

    with pytest.raises(UnknownModel):
        registry.get("tiny@1")
    assert registry.get("other")[0].manifest.name == "other"


@pytest.mark.parametrize("ref", ["tiny", "tiny@latest"])
def test_a_removed_latest_version_is_replaced_by_the_new_latest_at_once(store, ref):
    publish_tiny(store, "tiny", "1")
    publish_tiny(store, "tiny", "2")
    registry = ModelRegistry.over(store, cache_budget_bytes=2**30, catalog_ttl_seconds=3600)
    assert registry.resolve(ref) == ("tiny", "2")

    remove(store, "tiny", "2")

    assert registry.get(ref)[0].manifest.version == "1"
    with pytest.raises(UnknownVersion):
        registry.get("tiny@2")


def test_a_manifest_missing_while_the_fresh_catalog_still_lists_it_is_an_integrity_error(store):
    publish_tiny(store, "tiny", "1")
    registry = ModelRegistry.over(store, cache_budget_bytes=2**30, catalog_ttl_seconds=3600)
    store.delete(manifest_object("tiny", "1"))

    with pytest.raises(IntegrityError, match="the catalog lists tiny@1 but its manifest is missing"):
        registry.get("tiny@1")
