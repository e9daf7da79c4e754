"""A Python client generated from the served contract calls every operation of it.

openapi-python-client (the version pinned in pyproject.toml) generates the client from
``GET /v1/openapi.json`` of the running stack with ``docs/openapi-python-client.yaml`` and
``--fail-on-warning``; the tests then call each operation through the generated code only:
raw bytes, multipart with two images and JSON for both classify operations and embed, the listing, one
model, the document itself, the CORS preflights, and a typed 404."""

from __future__ import annotations

import base64
import importlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.photos import cat_jpeg, coffee_jpeg

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "docs" / "openapi-python-client.yaml"
CAT_LABELS = {"Egyptian cat", "tiger cat", "tabby"}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def generated(stack, tmp_path_factory):
    """The generated package ``imgclassify_client``, importable for this module's tests."""
    out = tmp_path_factory.mktemp("generated-client")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("openapi-python-client")), "generate", "--url",
         f"{stack.url}/v1/openapi.json", "--config", str(CONFIG), "--meta", "none", "--fail-on-warning",
         "--output-path", str(out / "imgclassify_client")],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Warning" not in done.stdout + done.stderr
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("imgclassify_client")
    finally:
        sys.path.remove(str(out))
        for name in [name for name in sys.modules if name.split(".")[0] == "imgclassify_client"]:
            del sys.modules[name]


@pytest.fixture
def client(generated, stack):
    return generated.Client(base_url=stack.url, timeout=60)


def operation(generated, name: str):
    return importlib.import_module(f"imgclassify_client.api.default.{name}")


def top_labels(classification) -> list[str]:
    return [result.predictions[0].label for result in classification.results]


def bodies(generated) -> dict[str, object]:
    """One request body of each kind the classify operations take, built with the client's types."""
    from imgclassify_client.models import ClassifyForm, ClassifyJson
    from imgclassify_client.types import File

    return {
        "raw": File(payload=io.BytesIO(cat_jpeg()), file_name="chelsea.jpg", mime_type="image/jpeg"),
        "multipart": ClassifyForm(image=[File(payload=io.BytesIO(cat_jpeg()), file_name="chelsea.jpg",
                                              mime_type="image/jpeg"),
                                         File(payload=io.BytesIO(coffee_jpeg()), file_name="coffee.jpg",
                                              mime_type="image/jpeg")], top_k=3),
        "json": ClassifyJson.from_dict({"instances": [{"b64": base64.b64encode(coffee_jpeg()).decode()}],
                                        "top_k": 2}),
    }


EXPECTED = {"raw": ([CAT_LABELS], 5), "multipart": ([CAT_LABELS, {"espresso"}], 3), "json": ([{"espresso"}], 2)}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_the_generated_client_classifies_with_the_model_in_the_path(generated, client, kind):
    answer = operation(generated, "classify_with_model").sync_detailed(
        "efficientnet_lite0", client=client, body=bodies(generated)[kind])

    assert answer.status_code == 200, answer.content
    wanted, top_k = EXPECTED[kind]
    assert answer.parsed.model.name == "efficientnet_lite0"
    assert [label in labels for label, labels in zip(top_labels(answer.parsed), wanted, strict=True)] == \
        [True] * len(wanted)
    assert {len(result.predictions) for result in answer.parsed.results} == {top_k}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_the_generated_client_classifies_with_the_model_in_the_query(generated, client, kind):
    answer = operation(generated, "classify").sync_detailed(client=client, body=bodies(generated)[kind],
                                                            model="efficientnet_lite1")

    assert answer.status_code == 200, answer.content
    wanted, _ = EXPECTED[kind]
    assert answer.parsed.model.name == "efficientnet_lite1"
    assert [label in labels for label, labels in zip(top_labels(answer.parsed), wanted, strict=True)] == \
        [True] * len(wanted)


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_the_generated_client_embeds_with_the_model_in_the_path(generated, client, kind):
    answer = operation(generated, "embed_with_model").sync_detailed(
        "efficientnet_lite0", client=client, body=bodies(generated)[kind])

    assert answer.status_code == 200, answer.content
    assert answer.parsed.dimensions == 1280
    assert len(answer.parsed.results) == len(EXPECTED[kind][0])
    assert {len(result.embedding) for result in answer.parsed.results} == {1280}


def test_the_generated_client_lists_the_models_and_reads_one(generated, client):
    listing = operation(generated, "list_models").sync(client=client)
    detail = operation(generated, "get_model").sync("efficientnet_lite1", client=client)

    assert listing.default_model == "efficientnet_lite0"
    assert {model.name for model in listing.models} >= {"efficientnet_lite0", "efficientnet_lite1",
                                                        "efficientnet_lite2"}
    assert (detail.name, len(detail.labels)) == ("efficientnet_lite1", 1000)


def test_the_generated_client_reads_the_contract_and_answers_preflights(generated, stack):
    preflight_client = generated.Client(base_url=stack.url, timeout=60, headers={
        "Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"})

    document = operation(generated, "get_open_api").sync_detailed(client=preflight_client)
    answers = {name: operation(generated, f"{name}_preflight").sync_detailed(client=preflight_client, **args)
               for name, args in (("list_models", {}), ("get_model", {"name": "efficientnet_lite0"}),
                                  ("classify", {}), ("classify_with_model", {"name": "efficientnet_lite0"}),
                                  ("embed_with_model", {"name": "efficientnet_lite0"}),
                                  ("get_open_api", {}))}

    assert document.status_code == 200
    assert {name: answer.status_code for name, answer in answers.items()} == dict.fromkeys(answers, 204)
    assert {answer.headers["access-control-allow-origin"] for answer in answers.values()} == {
        "http://allowed.example"}


def test_an_error_comes_back_as_the_generated_error_type(generated, client):
    answer = operation(generated, "classify_with_model").sync_detailed(
        "no_such_model", client=client, body=bodies(generated)["raw"])

    assert answer.status_code == 404
    assert type(answer.parsed).__name__ == "Error404"
    assert answer.parsed.error.code.value == "UNKNOWN_MODEL"
