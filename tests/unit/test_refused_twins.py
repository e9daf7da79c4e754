"""A twin refused by its golden check answers INTEGRITY_ERROR from memory: no download or build per
request, until the catalog's record of that version changes or the refusal's time runs out."""

from __future__ import annotations

import json

import pytest

from imgclassify.errors import IntegrityError
from imgclassify.publish.catalog_writes import publish, remove
from imgclassify.runtime.golden import GOLDEN_TOLERANCE, golden_batch, golden_entries
from imgclassify.runtime.registry import ModelRegistry
from imgclassify.runtime.scores import scores
from imgclassify.store.catalog import Architecture, Manifest, Preprocessing
from imgclassify.store.objects import LocalStore
from tests.support.onnx_graphs import colour_classifier, serialized
from tests.unit.test_golden import strip

PREPROCESSING = Preprocessing(resize=8, crop_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def publish_twin(store: LocalStore, *, honest: bool, published_at: str) -> None:
    """A 3-class colour classifier with golden answers: its own (honest) or another host's."""
    import onnxruntime

    data, png = serialized(colour_classifier(3)), strip()
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": golden_batch(png, PREPROCESSING)})[0]
    golden = {"tolerance": GOLDEN_TOLERANCE, "photos": golden_entries(scores(logits, "logits"), ["a", "b", "c"])}
    if not honest:
        golden = json.loads(json.dumps(golden))
        golden["photos"][0]["top5"][0]["probability"] -= 0.05
    manifest = Manifest(name="twin", version="1", architecture=Architecture("onnx", "test"), artifacts={},
                        labels=("red", "green", "blue"), preprocessing=PREPROCESSING, published_at=published_at,
                        metadata={"precision": "int8", "golden": golden})
    publish(store, manifest, {"onnx": data, "golden": png})


def test_a_twin_refused_by_its_golden_check_is_not_loaded_or_built_again_until_it_is_republished(tmp_path):
    store = LocalStore(tmp_path)
    publish_twin(store, honest=False, published_at="2026-12-02T09:00:00+00:00")
    registry = ModelRegistry.over(store, catalog_ttl_seconds=0, cache_budget_bytes=2**30)

    for _ in range(3):
        with pytest.raises(IntegrityError, match="does not give its golden answers on this host"):
            registry.serve("twin")
    assert registry.cache.loads == 1 and registry.cache.keys() == []

    remove(store, "twin", "1")
    publish_twin(store, honest=True, published_at="2026-12-02T09:05:00+00:00")
    model, cold = registry.serve("twin")  # a new record of twin@1 in the catalog: tried again, and served
    assert cold and model.built and registry.cache.loads == 2


def test_a_refusal_runs_out_after_refusal_seconds_and_the_twin_is_checked_again(tmp_path):
    store = LocalStore(tmp_path)
    publish_twin(store, honest=False, published_at="2026-12-02T09:00:00+00:00")
    registry = ModelRegistry.over(store, catalog_ttl_seconds=60, cache_budget_bytes=2**30)
    registry.cache.refusal_seconds = 0

    for loads in (1, 2):
        with pytest.raises(IntegrityError):
            registry.serve("twin")
        assert registry.cache.loads == loads
