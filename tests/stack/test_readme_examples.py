"""The README's examples work as printed: its shell blocks run whole against a local stack laid
out as ``make dev`` leaves it (bucket ``imgclassify-models`` with the bundled models, the default
catalog TTL of 30 s), and its sample answers are what that stack answers. Its promise about
removals holds there too: a removed version is refused at once, not after the TTL.

Only the addresses are changed (the stack's own ports instead of 8080 and 9023); curl is run
with ``--fail-with-body``, so any non-2xx answer fails the block."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from devstack.stack import LocalStack
from imgclassify.publish.catalog_writes import remove
from imgclassify.publish.cli import main as publish_cli
from imgclassify.store.objects import GcsStore
from tests.support.onnx_graphs import colour_classifier, serialized
from tests.support.photos import cat_jpeg, encode, real_photo

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DEV_URL, DEV_EMULATOR = "http://127.0.0.1:8080", "http://127.0.0.1:9023"

pytestmark = pytest.mark.integration


def section(heading: str) -> str:
    return README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def blocks(heading: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(heading), re.S)


@pytest.fixture(scope="module")
def dev_stack(emulator, models_bucket, tmp_path_factory):
    """make dev's bucket name, holding the bundled models (copied, not published again)."""
    emulator.create_bucket("imgclassify-models")
    source, target = GcsStore(models_bucket), GcsStore("imgclassify-models")
    for name in source.list(""):
        target.write(name, source.download(name))
    stack = LocalStack(bucket="imgclassify-models", emulator=emulator,
                       log_dir=tmp_path_factory.mktemp("readme-stack-logs"))
    try:
        yield stack.start(log=lambda _: None)
    finally:
        stack.stop()


def run_block(block: str, stack: LocalStack, cwd: Path = REPO) -> list[dict]:
    """Run a README shell block with bash; return every JSON line it printed."""
    script = block.replace(DEV_URL, stack.url).replace(DEV_EMULATOR, stack.emulator.url)
    prelude = ("set -euo pipefail\n"
               "curl() { command curl -sS --fail-with-body -w '\\n' \"$@\"; }\n"
               f"export PATH={Path(sys.executable).parent}:$PATH\n")
    done = subprocess.run(["bash", "-c", prelude + script], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "STORAGE_EMULATOR_HOST": stack.emulator.url,
                               "MODEL_STORE": stack.model_store})
    assert done.returncode == 0, f"{script}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def predictions(answer: dict) -> list[list[tuple[str, int, float]]]:
    return [[(p["label"], p["index"], p["score"]) for p in result["predictions"]] for result in answer["results"]]


def assert_same_predictions(got: dict, shown: dict) -> None:
    assert got["model"] == shown["model"]
    for got_result, shown_result in zip(predictions(got), predictions(shown), strict=True):
        assert [row[:2] for row in got_result] == [row[:2] for row in shown_result]
        # The README prints served scores (6 decimals); another CPU may differ in the last digit.
        assert [row[2] for row in got_result] == pytest.approx([row[2] for row in shown_result], abs=2e-6)


def test_the_quick_start_classification_gives_the_answer_the_readme_shows(dev_stack):
    command, shown = blocks("Quick start", "sh")[1], json.loads(blocks("Quick start", "json")[0])

    [answer] = run_block(command, dev_stack)

    assert_same_predictions(answer, shown)


def test_the_quick_start_first_publish_is_served_at_once_and_removed(dev_stack):
    first_publish = blocks("Quick start", "sh")[2]

    [answer] = run_block(first_publish, dev_stack)

    assert answer["model"] == {"name": "first_model", "version": "1", "random_init": True}
    assert GcsStore("imgclassify-models").list("models/first_model/") == []


def test_every_api_example_answers_200_and_the_sample_answer_is_the_multipart_one(dev_stack):
    examples = blocks("API (v1)", "sh")[0]
    shown = json.loads(blocks("API (v1)", "json")[0])

    listing, one_model, raw, multipart, embedded, base64_json = run_block(examples, dev_stack)

    assert listing["default_model"] == "efficientnet_lite0"
    assert one_model["name"] == "efficientnet_lite1"
    assert raw["results"][0]["predictions"][0]["label"] == "Egyptian cat"
    assert_same_predictions(multipart, shown)
    assert base64_json["results"][0]["predictions"][0]["label"] == "espresso"
    assert embedded["dimensions"] == 1280 and len(embedded["results"]) == 2


def test_the_base64_example_takes_a_photo_too_big_for_a_command_line(dev_stack, tmp_path):
    """The JSON body is built in a pipe: a 0.6 MB base64 string (over Linux's 128 KB limit for
    one argument) goes through."""
    examples = blocks("API (v1)", "sh")[0]
    base64_example = examples[examples.index("{ printf"):]
    big = tmp_path / "astronaut.png"
    big.write_bytes(encode(real_photo("astronaut"), "PNG"))
    assert big.stat().st_size * 4 / 3 > 128 * 1024

    [answer] = run_block(base64_example.replace("scripts/data/coffee.jpg", str(big)), dev_stack)

    assert len(answer["results"]) == 1


def test_the_bring_your_own_onnx_export_publishes_and_serves(dev_stack, tmp_path):
    text = section("Publishing models").split("**Bring your own ONNX.**", 1)[1]
    export_code = re.search(r"```python\n(.*?)```", text, re.S)[1]
    publish_and_classify = re.search(r"```sh\n(.*?)```", text, re.S)[1]
    subprocess.run([sys.executable, "-c", export_code], cwd=tmp_path, check=True, capture_output=True, timeout=300)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["classifier.onnx", "labels.txt"]  # no .onnx.data

    photo = REPO / "scripts" / "data" / "chelsea.jpg"
    [answer] = run_block(publish_and_classify.replace(".venv/bin/python", sys.executable)
                         .replace("@scripts/data/chelsea.jpg", f"@{photo}"),
                         dev_stack, cwd=tmp_path)

    assert answer["model"]["name"] == "my_classifier"
    assert len(answer["results"][0]["predictions"]) == 5


def test_a_removed_version_is_refused_or_replaced_at_once_not_after_the_catalog_ttl(dev_stack, tmp_path):
    """The instance's cached catalog still lists what was removed; the version it does not hold
    warm is refused (404) or replaced by the new latest at once."""
    model_file, labels_file = tmp_path / "colours.onnx", tmp_path / "labels.txt"
    model_file.write_bytes(serialized(colour_classifier(3)))
    labels_file.write_text("red\ngreen\nblue\n")
    store = GcsStore("imgclassify-models")

    def publish(name: str) -> None:
        assert publish_cli(["--store", store.uri, "onnx", str(model_file), "--labels", str(labels_file),
                            "--name", name, "--crop-size", "32"]) == 0

    def classify(ref: str) -> requests.Response:
        return requests.post(f"{dev_stack.url}/v1/models/{ref}:classify", data=cat_jpeg(),
                             headers={"Content-Type": "image/jpeg"}, timeout=60)

    publish("short_lived"), publish("short_lived"), publish("gone_soon")
    # A name the instance does not know makes it read the catalog, at most once a second.
    deadline = time.monotonic() + 5
    while classify("short_lived@1").status_code != 200:  # then its catalog lists all three versions
        assert time.monotonic() < deadline, "a published model is not served within 5 s"
        time.sleep(0.2)
    remove(store, "short_lived", "2")
    remove(store, "gone_soon", "1")

    latest, gone = classify("short_lived"), classify("gone_soon")
    remove(store, "short_lived", "1")

    assert (latest.status_code, latest.json().get("model", latest.json())) == (200, {
        "name": "short_lived", "version": "1", "random_init": False})
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "UNKNOWN_MODEL")


def test_the_train_your_own_classifier_example_trains_publishes_and_serves(dev_stack, tmp_path):
    [example] = blocks("Train your own classifier", "sh")
    script = f"export PYTHONPATH={REPO}\n" + example.replace(".venv/bin/python", sys.executable)
    try:
        classified, described = run_block(script, dev_stack, cwd=tmp_path)
    finally:
        if GcsStore("imgclassify-models").list("models/digits/"):
            remove(GcsStore("imgclassify-models"), "digits", "1")

    assert classified["model"]["name"] == "digits"
    assert classified["results"][0]["predictions"][0]["label"] == "7"
    assert described["evaluation"]["accuracy"] >= 0.93 and described["evaluation"]["images"] == 539
