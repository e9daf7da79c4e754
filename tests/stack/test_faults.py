"""Storage faults against the real emulator: stopped, tampered, half-written, planted."""

from __future__ import annotations

import hashlib
import json
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from devstack.processes import rss_kib
from devstack.stack import LocalStack
from imgclassify.publish.catalog_writes import publish, remove, update_catalog
from imgclassify.store.catalog import ArtifactRef, manifest_object, onnx_object, read_manifest
from imgclassify.store.objects import GcsStore
from tests.support.apps import client_for
from tests.support.counting_proxy import CountingProxy
from tests.support.onnx_graphs import colour_classifier, serialized, with_external_data, with_foreign_node
from tests.support.photos import CAT_INDICES, cat_jpeg, coffee_jpeg

pytestmark = pytest.mark.integration


def copy_model(source_bucket: str, target: GcsStore, name: str, *, kind: str = "onnx", data: bytes | None = None,
               keep_manifest_sha: bool = False) -> None:
    """Copy ``name@1`` into ``target``; ``data`` replaces the bytes of its ``kind`` artifact (tampering),
    and the manifest names the new bytes' size and sha256 unless ``keep_manifest_sha``."""
    source = GcsStore(source_bucket)
    manifest = read_manifest(source, name, "1")
    artifacts = dict(manifest.artifacts)
    for each, ref in manifest.artifacts.items():
        content = data if each == kind and data is not None else source.read(ref.object).data
        if each == kind and data is not None and not keep_manifest_sha:
            artifacts[each] = ArtifactRef(ref.object, len(content), hashlib.sha256(content).hexdigest())
        target.write(ref.object, content)
    manifest = replace(manifest, artifacts=artifacts)
    target.write(manifest_object(name, "1"), manifest.to_bytes())
    update_catalog(target, lambda catalog: catalog.with_version(manifest))


def classify(client, model: str):
    return client.post(f"/v1/models/{model}:classify", data=cat_jpeg(), content_type="image/jpeg")


def test_a_model_file_altered_by_one_byte_is_refused_loudly_and_other_models_keep_working(
        models_bucket, new_bucket, capsys):
    bucket = new_bucket("tampered")
    store = GcsStore(bucket)
    original = GcsStore(models_bucket).read(onnx_object("efficientnet_lite0", "1")).data
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    copy_model(models_bucket, store, "efficientnet_lite0", data=bytes(tampered), keep_manifest_sha=True)
    copy_model(models_bucket, store, "efficientnet_lite1")
    client = client_for(bucket)

    first = classify(client, "efficientnet_lite0")
    healthy = classify(client, "efficientnet_lite1")
    again = classify(client, "efficientnet_lite0")

    assert first.status_code == again.status_code == 500
    assert first.get_json()["error"]["code"] == "INTEGRITY_ERROR"
    assert "sha256" in first.get_json()["error"]["message"]
    assert healthy.status_code == 200
    assert healthy.get_json()["results"][0]["predictions"][0]["index"] in CAT_INDICES
    logged = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert any(e["severity"] == "ERROR" and "refusing to serve" in e["message"] for e in logged)


def test_a_manifest_pointing_at_a_missing_model_file_is_an_integrity_error(models_bucket, new_bucket):
    bucket = new_bucket("noweights")
    store = GcsStore(bucket)
    copy_model(models_bucket, store, "efficientnet_lite0")
    store.delete(onnx_object("efficientnet_lite0", "1"))

    response = classify(client_for(bucket), "efficientnet_lite0")

    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "INTEGRITY_ERROR"
    assert "missing" in response.get_json()["error"]["message"]


def test_a_catalog_listing_a_missing_manifest_is_an_integrity_error(models_bucket, new_bucket):
    bucket = new_bucket("nomanifest")
    store = GcsStore(bucket)
    copy_model(models_bucket, store, "efficientnet_lite0")
    store.delete(manifest_object("efficientnet_lite0", "1"))

    response = classify(client_for(bucket), "efficientnet_lite0")

    assert response.status_code == 500
    assert "manifest is missing" in response.get_json()["error"]["message"]


def test_a_half_written_publish_is_invisible_and_can_be_finished_or_cleaned_up(models_bucket, new_bucket):
    bucket = new_bucket("half")
    store = GcsStore(bucket)
    copy_model(models_bucket, store, "efficientnet_lite1")
    manifest = read_manifest(GcsStore(models_bucket), "efficientnet_lite0", "1")
    files = {kind: GcsStore(models_bucket).read(ref.object).data for kind, ref in manifest.artifacts.items()}
    store.write(onnx_object("efficientnet_lite0", "1"), files["onnx"])   # killed after the first file
    client = client_for(bucket, CATALOG_TTL_SECONDS="0")

    before = classify(client, "efficientnet_lite0")
    publish(store, replace(manifest, published_at=""), files)           # the publisher finishes
    after = classify(client, "efficientnet_lite0")
    remove(store, "efficientnet_lite0", "1")
    removed = classify(client, "efficientnet_lite0")

    assert before.status_code == 404
    assert before.get_json()["error"]["code"] == "UNKNOWN_MODEL"
    assert after.status_code == 200
    assert removed.status_code == 404
    assert store.list("models/efficientnet_lite0/") == []


class _Planted:
    """Unpickling this creates the marker file: proof that somebody unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind, engine, refusal", [
    ("onnx", "onnxruntime", "not an ONNX model"),
    ("safetensors", "torch", "not a valid safetensors file"),
])
def test_a_planted_pickle_is_refused_and_never_unpickled(models_bucket, new_bucket, tmp_path, kind, engine,
                                                         refusal):
    bucket = new_bucket("pickle")
    marker = tmp_path / "unpickled"
    payload = pickle.dumps({"_conv_stem.weight": _Planted(marker)})
    copy_model(models_bucket, GcsStore(bucket), "efficientnet_lite0", kind=kind, data=payload)

    response = classify(client_for(bucket, ENGINE=engine), "efficientnet_lite0")

    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "INTEGRITY_ERROR"
    assert refusal in response.get_json()["error"]["message"]
    assert not marker.exists()
    assert b"Traceback" not in response.data


@pytest.mark.parametrize("planted, refusal", [
    (with_external_data(colour_classifier(1000), "/etc/passwd"), "refers to external data"),
    (with_foreign_node(colour_classifier(1000), "com.microsoft"), "non-standard domains ['com.microsoft']"),
    (with_foreign_node(colour_classifier(1000), "evil.custom", "Exfiltrate"), "non-standard domains ['evil.custom']"),
], ids=["external-data", "vendor-domain", "custom-domain"])
def test_a_planted_model_onnx_matching_its_tampered_manifest_is_refused_never_served(
        models_bucket, new_bucket, capsys, planted, refusal):
    # Whoever can write to the bucket can also rewrite the manifest's sha256: the file itself
    # must still pass the serving rules at every load.
    bucket = new_bucket("planted")
    copy_model(models_bucket, GcsStore(bucket), "efficientnet_lite0", kind="onnx", data=serialized(planted))

    first = classify(client_for(bucket), "efficientnet_lite0")
    again = classify(client_for(bucket), "efficientnet_lite0")

    for response in (first, again):
        assert response.status_code == 500
        error = response.get_json()["error"]
        assert error["code"] == "INTEGRITY_ERROR"
        assert "model.onnx of efficientnet_lite0@1 is refused" in error["message"]
        assert refusal in error["message"]
        assert "root:" not in response.get_data(as_text=True)


@pytest.mark.parametrize("classes", [10, 1200])
def test_a_planted_model_onnx_whose_width_is_not_the_label_count_is_refused_never_served(
        models_bucket, new_bucket, classes):
    # Fewer scores than labels would be served under the wrong names; more would overrun the labels.
    bucket = new_bucket("width")
    copy_model(models_bucket, GcsStore(bucket), "efficientnet_lite0", kind="onnx",
               data=serialized(colour_classifier(classes)))

    response = classify(client_for(bucket), "efficientnet_lite0")

    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "INTEGRITY_ERROR"
    assert (f"efficientnet_lite0@1 gives [{classes}] scores per image but its manifest has 1000 labels"
            in response.get_json()["error"]["message"])


def test_storage_down_on_a_cold_request_is_503_and_the_instance_recovers(emulator, models_bucket, tmp_path):
    proxy = CountingProxy(emulator.url)
    proxy.up()
    stack = LocalStack(bucket=models_bucket, emulator=emulator, log_dir=tmp_path)
    try:
        url = stack.start_function("classify", env={
            "STORAGE_EMULATOR_HOST": proxy.url, "PRELOAD_DEFAULT_MODEL": "false",
            "STORAGE_RETRY_SECONDS": "1", "STORAGE_TIMEOUT_SECONDS": "2"})
        proxy.down()
        while_down = requests.post(f"{url}/v1/models/efficientnet_lite2:classify", data=cat_jpeg(),
                                   headers={"Content-Type": "image/jpeg"}, timeout=60)
        proxy.up()
        after = requests.post(f"{url}/v1/models/efficientnet_lite2:classify", data=cat_jpeg(),
                              headers={"Content-Type": "image/jpeg"}, timeout=60)
    finally:
        stack.stop()
        proxy.down()

    assert while_down.status_code == 503
    assert while_down.json()["error"]["code"] == "STORAGE_UNAVAILABLE"
    assert int(while_down.headers["Retry-After"]) > 0
    assert after.status_code == 200
    assert after.json()["results"][0]["predictions"][0]["index"] in CAT_INDICES


def test_a_cache_smaller_than_two_models_serves_alternating_requests_in_bounded_memory(
        emulator, models_bucket, tmp_path):
    stack = LocalStack(bucket=models_bucket, emulator=emulator, log_dir=tmp_path)
    models = ["efficientnet_lite0", "efficientnet_lite1"]
    try:
        url = stack.start_function("classify", env={"CACHE_BUDGET_MB": "30", "PRELOAD_DEFAULT_MODEL": "false"})
        pid = stack.functions["classify"].pid

        def sequential(count: int) -> list[int]:
            statuses = []
            for index in range(count):
                response = requests.post(f"{url}/v1/models/{models[index % 2]}:classify", data=coffee_jpeg(),
                                         headers={"Content-Type": "image/jpeg"}, timeout=120)
                statuses.append(response.status_code)
            return statuses

        def mixed_round(clients: int) -> list[int]:
            statuses = sequential(8)
            with ThreadPoolExecutor(clients) as pool:
                statuses += [s for batch in pool.map(lambda _: sequential(2), range(clients)) for s in batch]
            return statuses

        # The first rounds reach the largest micro-batches of both models at once: the peak.
        statuses = mixed_round(8) + mixed_round(8)
        samples = []
        for _ in range(8):
            statuses += mixed_round(4)
            samples.append(rss_kib(pid, children_only=True))
    finally:
        stack.stop()

    assert statuses == [200] * 176
    # Every request swaps a ~20 MB model in and out (over 150 loads, 3 GB in all). Resident
    # memory between rounds swings by up to ~80 MB (which model is in, ONNX Runtime's arenas),
    # but a leak grows with the number of loads: the mean of the last four samples must not
    # exceed the first four's by 30 MB, i.e. under 0.5 MB for each of the 64 loads between them.
    first, last = sum(samples[:4]) / 4, sum(samples[4:]) / 4
    assert last - first < 30 * 1024, samples
