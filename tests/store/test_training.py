"""Training a classifier on a frozen backbone (python -m imgclassify.publish train), against the emulator.

Every refusal of a bad labelled set is one ``error:`` line, exit status 1, and nothing new in
the store; a small offline set (scikit-learn's digits) trains, publishes one checked graph and
is served by the same loading code as every model.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from imgclassify.publish.cli import main
from imgclassify.publish.graphs import with_feature_output
from imgclassify.publish.sources import publish_bundled
from imgclassify.publish.training import LabelledImage, TrainOptions, assign_splits, load_backbone, train_classifier
from imgclassify.runtime.engines import EngineOptions
from imgclassify.runtime.models import load_model
from imgclassify.runtime.onnx_rules import check_onnx
from imgclassify.store.catalog import read_catalog, read_manifest
from imgclassify.store.objects import GcsStore
from tests.support.digits import digit_images, write_digit_folder
from tests.support.photos import encode

BACKBONE = "efficientnet_lite0"


@pytest.fixture
def backbone_store(new_bucket) -> GcsStore:
    """A bucket with the bundled Lite0 published (exported once per session, then only uploaded)."""
    store = GcsStore(new_bucket("train"), retry_seconds=2.0, timeout_seconds=30.0)
    publish_bundled(store, [BACKBONE], log=lambda _: None)
    return store


def run_train(store: GcsStore, source, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["--store", store.uri, "train", str(source), "--name", "digits", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(store: GcsStore, result: tuple[int, str, str], *fragments: str) -> None:
    code, _, err = result
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]
    catalog, _ = read_catalog(store)
    assert "digits" not in catalog.models
    assert store.list("models/digits/") == []


def write_csv(path, rows: list[str]) -> str:
    path.write_text("\n".join(rows) + "\n")
    return str(path)


# --- refusals ----------------------------------------------------------------------------


def test_a_set_with_one_label_is_refused(backbone_store, tmp_path, capsys):
    write_digit_folder(tmp_path / "set", 40)
    for folder in (tmp_path / "set").iterdir():
        if folder.name != "3":
            for image in folder.iterdir():
                image.unlink()
    assert_refused(backbone_store, run_train(backbone_store, tmp_path / "set", capsys), "at least two labels")


def test_a_label_with_fewer_images_than_min_per_label_is_refused(backbone_store, tmp_path, capsys):
    write_digit_folder(tmp_path / "set", 80)  # 6 to 11 of each digit
    result = run_train(backbone_store, tmp_path / "set", capsys, "--min-per-label", "7")
    assert_refused(backbone_store, result, "at least 7 images", "'4' has 6")


def test_a_label_that_is_not_a_valid_label_string_is_refused(backbone_store, tmp_path, capsys):
    write_digit_folder(tmp_path / "set", 80)
    (tmp_path / "set" / "3").rename(tmp_path / "set" / "three ")
    assert_refused(backbone_store, run_train(backbone_store, tmp_path / "set", capsys), "'three '",
                   "no space at either end")


def test_a_csv_label_with_a_control_character_is_refused(backbone_store, tmp_path, capsys):
    write_digit_folder(tmp_path / "set", 80)
    bad = "bad\tlabel"
    rows = [f"{image.relative_to(tmp_path)},{bad if image.parent.name == '1' else image.parent.name}"
            for image in sorted((tmp_path / "set").rglob("*.png"))]
    source = write_csv(tmp_path / "import.csv", rows)
    assert_refused(backbone_store, run_train(backbone_store, source, capsys), "no control characters")


def test_the_same_image_in_two_splits_of_a_csv_is_refused(backbone_store, tmp_path, capsys):
    write_digit_folder(tmp_path / "set", 80)
    images = sorted((tmp_path / "set").rglob("*.png"))
    rows = [f"TRAINING,{image},{image.parent.name}" for image in images]
    rows.append(f"TEST,{images[0]},{images[0].parent.name}")
    assert_refused(backbone_store, run_train(backbone_store, write_csv(tmp_path / "i.csv", rows), capsys),
                   "the same image is in two splits", str(images[0]))


def test_identical_bytes_in_two_splits_are_refused_after_reading(backbone_store, tmp_path, capsys):
    write_digit_folder(tmp_path / "set", 80)
    images = sorted((tmp_path / "set" / "4").glob("*.png"))
    copy = tmp_path / "set" / "4" / "copy.png"
    copy.write_bytes(images[0].read_bytes())
    rows = [f"TRAINING,{image},{image.parent.name}" for image in sorted((tmp_path / "set").rglob("*.png"))
            if image != copy]
    rows.append(f"TEST,{copy},4")
    assert_refused(backbone_store, run_train(backbone_store, write_csv(tmp_path / "i.csv", rows), capsys),
                   "the same image is in two splits", "copy.png")


def test_more_undecodable_images_than_max_bad_share_are_refused(backbone_store, tmp_path, capsys):
    write_digit_folder(tmp_path / "set", 80)
    for index in range(5):
        (tmp_path / "set" / str(index) / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    result = run_train(backbone_store, tmp_path / "set", capsys, "--max-bad-share", "0.05")
    assert_refused(backbone_store, result, "5 of 85 images cannot be used", "broken.png", "UNDECODABLE_IMAGE")


def test_a_backbone_without_a_feature_output_is_refused_naming_migrate(backbone_store, tmp_path, capsys):
    from imgclassify.publish.catalog_writes import publish
    from imgclassify.store.catalog import Manifest

    old = read_manifest(backbone_store, BACKBONE, "1")
    graph = backbone_store.download(old.artifacts["onnx"].object)
    publish(backbone_store, Manifest(name="nofeatures", version="1", architecture=old.architecture, artifacts={},
                                     labels=old.labels, preprocessing=old.preprocessing),
            {"onnx": graph})  # the graph has the output, but its manifest (as before this change) says nothing
    write_digit_folder(tmp_path / "set", 80)
    result = run_train(backbone_store, tmp_path / "set", capsys, "--backbone", "nofeatures")
    assert_refused(backbone_store, result, "no feature output", "publish migrate nofeatures")


@pytest.mark.parametrize("args, message", [
    (["--test-share", "1"], "--test-share must be at least 0 and below 1"),
    (["--min-per-label", "2"], "--min-per-label must be at least 3"),
    (["--backbone", "nosuch"], "no model named 'nosuch'"),
    (["--name", "Bad Name"], "model name must be"),
])
def test_bad_train_arguments_are_one_error_line(backbone_store, tmp_path, capsys, args, message):
    write_digit_folder(tmp_path / "set", 80)
    assert_refused(backbone_store, run_train(backbone_store, tmp_path / "set", capsys, *args), message)


def test_a_source_that_is_neither_folder_prefix_nor_csv_is_refused(backbone_store, tmp_path, capsys):
    assert_refused(backbone_store, run_train(backbone_store, tmp_path / "missing", capsys),
                   "is not a folder, a gs:// prefix or a .csv file")


def test_the_backbone_runs_as_the_batch_job_does_with_an_arena_and_no_spinning(backbone_store):
    model, _ = load_backbone(backbone_store, BACKBONE)

    assert model.engine.options == EngineOptions("onnxruntime", threads=0).for_batches()
    assert (model.engine.options.memory_arena, model.engine.options.spin) == (True, False)


# --- splits --------------------------------------------------------------------------------


def test_splits_hold_out_a_share_of_every_label_and_keep_identical_images_together():
    items = [LabelledImage(f"/x/{label}/{n}.png", label) for label in "ab" for n in range(10)]
    digests = [f"{item.label}{n % 9}" for n, item in enumerate(items)]  # the 10th of each label repeats the 1st
    options = TrainOptions(test_share=0.3, validation_share=0.25)
    splits = assign_splits(items, digests, options)
    for label in "ab":
        # 9 distinct images: 3 held out, then a quarter of the 6 left (1.5, rounded to 2) validate
        groups = {(digest, split) for item, digest, split in zip(items, digests, splits, strict=True)
                  if item.label == label}
        assert len(groups) == 9
        assert [split for _, split in groups].count("test") == 3
        assert [split for _, split in groups].count("validation") == 2
    assert splits[0] == splits[9] and splits[10] == splits[19]
    assert splits == assign_splits(items, digests, options)
    assert splits != assign_splits(items, digests, TrainOptions(test_share=0.3, validation_share=0.25, seed=1))


def test_splits_given_by_the_source_are_kept():
    items = [LabelledImage(f"/x/{label}/{n}.png", label, ("train", "validation", "test")[n % 3])
             for label in "ab" for n in range(6)]
    assert assign_splits(items, [item.uri for item in items], TrainOptions()) == [item.split for item in items]


# --- training ------------------------------------------------------------------------------


def test_a_small_gcs_set_trains_into_one_checked_graph_served_like_any_model(backbone_store, new_bucket, capsys):
    photos = GcsStore(new_bucket("photos"))
    for index, (label, image) in enumerate(digit_images(80)):
        photos.write(f"digits/{label}/{index}.png", encode(image, "PNG"))
    code, out, err = run_train(backbone_store, f"gs://{photos.bucket_name}/digits", capsys, "--augment")
    assert code == 0, err
    assert "held-out accuracy" in out and "confusion matrix" in out and "published digits@1" in out

    manifest = read_manifest(backbone_store, "digits", "1")
    assert manifest.labels == tuple(str(n) for n in range(10))
    assert set(manifest.artifacts) == {"onnx"} and manifest.feature_size == 1280
    evaluation = manifest.metadata["evaluation"]
    assert len(evaluation["confusion_matrix"]) == 10 and len(evaluation["per_label"]) == 10
    assert sum(map(sum, evaluation["confusion_matrix"])) == evaluation["images"] >= 10  # at least one per label
    assert {row["label"] for row in evaluation["per_label"]} == set(manifest.labels)
    assert manifest.metadata["training"]["augment"] is True
    assert manifest.metadata["onnx_check"]["max_logit_difference"] <= 1e-4

    data = backbone_store.download(manifest.artifacts["onnx"].object)
    signature = check_onnx(data)
    assert signature.input_shape[0] == "batch" and signature.output_shape[1] == 10
    assert signature.feature_shape == ("batch", 1280)
    assert with_feature_output(data) == (data, 1280)

    trained = load_model(backbone_store, manifest, EngineOptions())
    backbone = load_model(backbone_store, read_manifest(backbone_store, BACKBONE, "1"), EngineOptions())
    images = [trained.prepare(encode(image, "PNG"), max_pixels=10**8) for _, image in digit_images(5)]
    assert trained.classify(images, 1)[0][0]["label"] in manifest.labels
    np.testing.assert_allclose(trained.features(images), backbone.features(images), atol=1e-5)
    assert json.loads(backbone_store.read("models/catalog.json").data)["models"]["digits"]["latest"] == "1"


def test_digits_reach_the_target_held_out_accuracy_and_the_served_graph_agrees(backbone_store, tmp_path):
    """The issue's target: held-out 30 % of scikit-learn's digits, Lite0, accuracy at least 0.93."""
    write_digit_folder(tmp_path / "digits")
    result = train_classifier(backbone_store, str(tmp_path / "digits"), name="digits",
                              options=TrainOptions(test_share=0.3), log=lambda _: None)
    assert result.evaluation["images"] == 539
    assert result.evaluation["accuracy"] >= 0.93
    # the published graph, loaded as the functions load it, gives the training-time figure
    served = load_model(backbone_store, result.manifest, EngineOptions())
    hits = 0
    for start in range(0, len(result.held_out), 32):
        batch = result.held_out[start:start + 32]
        inputs = [served.prepare(open(item.uri, "rb").read(), max_pixels=10**8) for item in batch]
        hits += sum(row[0]["label"] == item.label for row, item in zip(served.classify(inputs, 1), batch,
                                                                       strict=True))
    # equal, up to one image whose two best scores are within float32 noise of each other
    assert hits / len(result.held_out) == pytest.approx(result.evaluation["accuracy"], abs=1 / 539)


# --- large sets: features from the batch job -----------------------------------------------


def run_batch(store: GcsStore, source: str, output: str, *extra: str) -> int:
    from imgclassify.batch.cli import main as batch_main

    env = {"MODEL_STORE": store.uri, "STORAGE_EMULATOR_HOST": os.environ["STORAGE_EMULATOR_HOST"]}
    return batch_main([source, output, "--model", BACKBONE, "--batch-size", "8", "--chunk-size", "16", *extra], env)


def test_features_from_the_sharded_batch_job_train_the_same_kind_of_classifier(backbone_store, new_bucket, capsys):
    photos = GcsStore(new_bucket("photos"))
    images = digit_images(80)
    for index, (label, image) in enumerate(images):
        photos.write(f"digits/{label}/{index}.png", encode(image, "PNG"))
    photos.write("digits/3/broken.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    source, output = f"gs://{photos.bucket_name}/digits", f"gs://{photos.bucket_name}/features/run1"
    for task in range(2):  # two Cloud Run tasks, each its share of the prefix
        assert run_batch(backbone_store, source, output, "--features", "--task-index", str(task),
                         "--task-count", "2") == 0
    assert run_batch(backbone_store, source, output, "--features", "--task-index", "0", "--task-count", "2") == 0
    rows = [json.loads(line) for name in photos.list("features/run1/") if name.endswith(".jsonl")
            for line in photos.read(name).data.splitlines()]
    assert len(rows) == 81 and sum("error" in row for row in rows) == 1  # resumed: nothing done twice

    backbone = load_model(backbone_store, read_manifest(backbone_store, BACKBONE, "1"), EngineOptions())
    row = next(row for row in rows if row["uri"].endswith("/digits/0/0.png"))
    mine = backbone.features([backbone.prepare(encode(images[0][1], "PNG"), max_pixels=10**8)])[0]
    np.testing.assert_allclose(row["features"], mine, atol=1e-4)

    code, out, err = run_train(backbone_store, source, capsys, "--features", output)
    assert code == 0, err
    manifest = read_manifest(backbone_store, "digits", "1")
    assert manifest.metadata["training"]["features_from"] == output
    assert manifest.metadata["training"]["skipped"] == 1
    assert sum(manifest.metadata["training"]["images"].values()) == 80
    assert "held-out accuracy" in out


def test_training_on_batch_features_refuses_predictions_another_backbone_and_augment(
        backbone_store, new_bucket, capsys):
    photos = GcsStore(new_bucket("photos"))
    for index, (label, image) in enumerate(digit_images(80)):
        photos.write(f"digits/{label}/{index}.png", encode(image, "PNG"))
    source = f"gs://{photos.bucket_name}/digits"
    assert run_batch(backbone_store, source, f"gs://{photos.bucket_name}/labels") == 0
    assert_refused(backbone_store, run_train(backbone_store, source, capsys, "--features",
                                             f"gs://{photos.bucket_name}/labels"), "not features")
    assert_refused(backbone_store, run_train(backbone_store, source, capsys, "--features",
                                             f"gs://{photos.bucket_name}/nothing"), "holds no batch job")
    assert run_batch(backbone_store, source, f"gs://{photos.bucket_name}/features", "--features") == 0
    assert_refused(backbone_store, run_train(backbone_store, source, capsys, "--features",
                                             f"gs://{photos.bucket_name}/features", "--backbone",
                                             "efficientnet_lite1"), "computed by efficientnet_lite0@1")
    assert_refused(backbone_store, run_train(backbone_store, source, capsys, "--features",
                                             f"gs://{photos.bucket_name}/features", "--augment"), "--augment")


def test_training_reads_the_batch_jobs_own_job_object_name():
    from imgclassify.batch import plan
    from imgclassify.publish import training

    assert training.JOB_OBJECT == plan.JOB_OBJECT  # publish may not import batch: the name is held here
