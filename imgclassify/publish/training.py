"""Train a classifier on a frozen backbone from labelled photos, and publish it as one ONNX graph.

The recipe of TF Lite Model Maker's image classifier: the backbone's penultimate features
(its published graph's feature output) under a regularised multinomial logistic regression.

1. **List** the labelled set (:func:`list_source`): a folder or ``gs://`` prefix in the
   ImageFolder layout (``SOURCE/<label>/<image>``), or a CSV in Vertex AI's import format
   (``[ML_USE,]URI,LABEL``). Refused before any work: invalid labels, an image listed twice
   with different labels or splits, fewer than two labels, a label with fewer than
   ``min_per_label`` images.
2. **Features** (:func:`extract_features`): every image is read, decoded and preprocessed by
   the code that serves requests (:meth:`imgclassify.runtime.models.LoadedModel.prepare`),
   then run through the backbone's verified published graph. ``augment`` adds flipped and
   cropped views of each training image (between decode and preprocessing). Undecodable
   images are listed and skipped, up to ``max_bad_share`` of the set.
3. **Splits** (:func:`assign_splits`): the CSV's ML_USE where given; the rest per label by a
   content hash (identical images always land in one split; the same on every run).
4. **Head** (:func:`fit_head`): scikit-learn's ``LogisticRegression`` on standardised
   features, its strength ``C`` chosen on the validation split, classes weighted when
   unbalanced, then refitted on training + validation; the scaler is folded into the weights.
5. **Evaluation** on the held-out split (:func:`evaluate`): accuracy, per-label precision and
   recall, the confusion matrix.
6. **One graph** (:func:`checked_graph`): the backbone with its final layer replaced by the
   head, checked on real photos (scores equal the backbone's features times the head within
   1e-4), then published like every other model.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import random
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from imgclassify.errors import ObjectNotFound, ServiceError
from imgclassify.imaging.decode import is_image_name
from imgclassify.runtime.engines import MIGRATE_COMMAND, EngineOptions
from imgclassify.runtime.models import LoadedModel, load_model
from imgclassify.settings import Settings
from imgclassify.store.catalog import (
    Architecture,
    Manifest,
    check_name,
    parse_model_ref,
    read_catalog,
    read_manifest,
    verify_artifact,
)
from imgclassify.store.objects import GcsStore, LocalStore, ObjectStore, open_store, split_gs_uri

from .catalog_writes import next_version, publish, refuse_existing
from .errors import ExportMismatch, InvalidTrainingSet

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
# Vertex AI's ML_USE values -> our splits (None: assigned here)
ML_USE = {"TRAINING": "train", "VALIDATION": "validation", "TEST": "test", "UNASSIGNED": None, "": None}
# A label: 1-100 characters, none of them a control character, no space at either end.
LABEL = re.compile(r"[^\x00-\x1f\x7f]{1,100}")
# Strengths tried (scikit-learn's C, the inverse of the L2 penalty), weakest penalty last.
STRENGTHS = (0.001, 0.01, 0.1, 1.0, 10.0)
DEFAULT_BACKBONE = "efficientnet_lite0"
JOB_OBJECT = "job.json"  # what the batch job writes first into its output (imgclassify.batch.plan)
HEAD_TOLERANCE = 1e-4
_SCALE_FLOOR = 0.1  # of the median feature's standard deviation
_SHOWN = 5  # offending images or labels named in one message


@dataclass(frozen=True)
class LabelledImage:
    """One image of a labelled set: where it is, its label, and its split if the source says."""

    uri: str
    label: str
    split: str | None = None


@dataclass(frozen=True)
class TrainOptions:
    """How a classifier is trained (the ``train`` command's options)."""

    min_per_label: int = 5
    max_bad_share: float = 0.05
    test_share: float = 0.2
    validation_share: float = 0.2
    augment: bool = False
    seed: int = 0
    batch_size: int = 32
    workers: int = 4


# --- 1. listing ------------------------------------------------------------------------------


def _shown(items: Iterable[str]) -> str:
    items = list(items)
    more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def list_image_folder(store: ObjectStore) -> list[LabelledImage]:
    """``<label>/<image>`` below ``store`` (sub-folders of a label included; hidden names and
    files outside a label folder ignored), sorted by name."""
    found = []
    for name in store.list(""):
        parts = name.split("/")
        if len(parts) < 2 or any(part.startswith(".") for part in parts) or not is_image_name(name):
            continue
        found.append(LabelledImage(f"{store.uri}/{name}", parts[0]))
    return found


def _read_text(location: str) -> str:
    if location.startswith("gs://"):
        bucket, name = split_gs_uri(location)
        data = GcsStore(bucket).read(name).data
    else:
        with open(location, "rb") as handle:
            data = handle.read()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidTrainingSet(f"{location} is not UTF-8 text") from None


def read_import_csv(location: str) -> list[LabelledImage]:
    """The rows of a Vertex AI image classification import CSV, ``[ML_USE,]URI,LABEL``.

    URIs are ``gs://`` objects, or (in a local CSV) paths relative to the CSV's folder.
    """
    base = os.path.dirname(os.path.abspath(location)) if not location.startswith("gs://") else None
    found = []
    for number, row in enumerate(csv.reader(io.StringIO(_read_text(location))), start=1):
        row = [value.strip() for value in row]
        if not any(row):
            continue
        if len(row) == 3 and row[0].upper() in ML_USE:
            use, uri, label = row
        elif len(row) == 2:
            use, (uri, label) = "", row
        else:
            raise InvalidTrainingSet(f"{location} line {number}: expected [ML_USE,]URI,LABEL with ML_USE one of "
                                     f"TRAINING, VALIDATION, TEST; found {len(row)} fields {row[:4]}")
        if not label:
            raise InvalidTrainingSet(f"{location} line {number}: {uri} has no label")
        if not uri.startswith("gs://"):
            if base is None:
                raise InvalidTrainingSet(f"{location} line {number}: {uri!r} is not a gs:// URI")
            uri = os.path.normpath(os.path.join(base, uri))
        found.append(LabelledImage(uri, label, ML_USE[use.upper()]))
    return found


def list_source(source: str) -> list[LabelledImage]:
    """The labelled images of ``source``: a Vertex AI import CSV, a ``gs://`` prefix or a local folder."""
    if source.lower().endswith(".csv"):
        return read_import_csv(source)
    if source.startswith("gs://") or os.path.isdir(source):
        return list_image_folder(open_store(source.rstrip("/")))
    raise InvalidTrainingSet(f"{source} is not a folder, a gs:// prefix or a .csv file")


def check_listing(items: list[LabelledImage], min_per_label: int) -> None:
    """Refuse a labelled set that cannot train a classifier, before any image is read."""
    bad_labels = sorted({item.label for item in items
                         if not LABEL.fullmatch(item.label) or item.label != item.label.strip()})
    if bad_labels:
        raise InvalidTrainingSet(f"labels must be 1-100 characters, no control characters, no space at either "
                                 f"end; found {_shown(repr(label) for label in bad_labels)}")
    seen: dict[str, LabelledImage] = {}
    for item in items:
        first = seen.setdefault(item.uri, item)
        if first.label != item.label:
            raise InvalidTrainingSet(f"{item.uri} is listed with two labels, {first.label!r} and {item.label!r}")
        if first.split != item.split:
            raise InvalidTrainingSet(f"the same image is in two splits: {item.uri} ({first.split or 'unassigned'} "
                                     f"and {item.split or 'unassigned'})")
    counts = Counter(item.label for item in items)
    if len(counts) < 2:
        raise InvalidTrainingSet(f"a classifier needs at least two labels; found {len(counts)} "
                                 f"({_shown(counts) or 'no labelled images'})")
    few = sorted(label for label, count in counts.items() if count < min_per_label)
    if few:
        raise InvalidTrainingSet(f"every label needs at least {min_per_label} images (--min-per-label); "
                                 f"{_shown(f'{label!r} has {counts[label]}' for label in few)}")


# --- 2. features -----------------------------------------------------------------------------


class ImageReader:
    """Reads a labelled image's bytes, ``gs://`` or local, under the API's size limit."""

    def __init__(self, max_bytes: int = Settings.max_request_bytes) -> None:
        self.max_bytes = max_bytes
        self._stores: dict[str, ObjectStore] = {}

    def __call__(self, uri: str) -> bytes:
        if uri.startswith("gs://"):
            bucket, name = split_gs_uri(uri)
            store = self._stores.setdefault(bucket, GcsStore(bucket))
        else:
            folder, name = os.path.split(os.path.abspath(uri))
            store = self._stores.setdefault(folder, LocalStore(folder))
        return store.read_limited(name, self.max_bytes)


def augmented_views(image, rng: random.Random) -> list:
    """Three more views of a decoded image for training: mirrored, a random crop, the crop mirrored.

    The crop keeps 50-100 % of the area at an aspect ratio of 3/4 to 4/3 (torchvision's
    RandomResizedCrop); serving's preprocessing then resizes and centre-crops each view.
    """
    from PIL import Image

    width, height = image.size
    area = width * height * rng.uniform(0.5, 1.0)
    aspect = rng.uniform(3 / 4, 4 / 3)
    crop_width = max(1, min(width, round((area * aspect) ** 0.5)))
    crop_height = max(1, min(height, round((area / aspect) ** 0.5)))
    left, top = rng.randint(0, width - crop_width), rng.randint(0, height - crop_height)
    crop = image.crop((left, top, left + crop_width, top + crop_height))
    return [image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), crop, crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]


@dataclass
class Features:
    """What feature extraction found: the images that decoded, their digests and feature rows."""

    items: list[LabelledImage]
    digests: list[str]
    features: np.ndarray                       # (images, width): each image as it is
    augmented: list[np.ndarray]                # per image, (views, width) of its augmented views (or empty)
    bad: list[tuple[str, str]] = field(default_factory=list)   # (uri, why) of the images skipped
    seconds: float = 0.0


def _progress(total: int, description: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc=description, disable=not sys.stderr.isatty(), leave=False)


def extract_features(backbone: LoadedModel, items: list[LabelledImage], *, read: Callable[[str], bytes],
                     augment: bool = False, seed: int = 0, batch_size: int = 32, workers: int = 4,
                     max_pixels: int = Settings.max_image_pixels) -> Features:
    """Every image's penultimate features through the backbone's graph, decoded and preprocessed
    by serving's code on ``workers`` threads (a bounded lookahead) while this thread runs batches."""
    started = time.perf_counter()

    def prepare(item: LabelledImage) -> tuple[str, list[np.ndarray]] | str:
        try:
            data = read(item.uri)
            image = backbone.decode(data, max_pixels=max_pixels)
            views = [image]
            if augment:
                views += augmented_views(image, random.Random(f"{seed}:{item.uri}"))
            return hashlib.sha256(data).hexdigest(), [backbone.preprocess(view) for view in views]
        except ServiceError as error:
            return f"{error.code}: {error.message}"
        except OSError as error:
            return f"{error.strerror or error}"

    kept, digests, rows, bad = [], [], [], []
    waiting: list[tuple[int, int]] = []       # (kept image, view) of each array in ``arrays``
    arrays: list[np.ndarray] = []
    per_image: list[list[np.ndarray]] = []

    def run_batch() -> None:
        for (image, _), row in zip(waiting, backbone.features(arrays), strict=True):
            per_image[image].append(row)
        waiting.clear()
        arrays.clear()

    with ThreadPoolExecutor(workers, thread_name_prefix="prepare") as pool, \
            _progress(len(items), f"features ({backbone.manifest.name}@{backbone.manifest.version})") as bar:
        pending: deque = deque()
        remaining = iter(items)
        for item in remaining:
            pending.append((item, pool.submit(prepare, item)))
            if len(pending) >= workers + batch_size:
                break
        while pending:
            item, future = pending.popleft()
            following = next(remaining, None)
            if following is not None:
                pending.append((following, pool.submit(prepare, following)))
            result = future.result()
            bar.update(1)
            if isinstance(result, str):
                bad.append((item.uri, result))
                continue
            digest, views = result
            kept.append(item)
            digests.append(digest)
            per_image.append([])
            for view, array in enumerate(views):
                waiting.append((len(kept) - 1, view))
                arrays.append(array)
            if len(arrays) >= batch_size:
                run_batch()
        if arrays:
            run_batch()
    for image in per_image:
        rows.append(image[0])
    width = backbone.manifest.feature_size or 0
    return Features(kept, digests, np.asarray(rows, dtype=np.float32).reshape(len(kept), width),
                    [np.asarray(image[1:], dtype=np.float32).reshape(-1, width) for image in per_image],
                    bad, time.perf_counter() - started)


def read_batch_features(location: str, items: list[LabelledImage], *, workers: int = 8) -> tuple[Features, str]:
    """The features of ``items`` from a batch job's output (``imgclassify-batch --features``), and
    the job's ``model@version``. An image without a row, or whose row is an error, is bad."""
    started = time.perf_counter()
    store = open_store(location.rstrip("/"))
    try:
        job = json.loads(store.read(JOB_OBJECT).data)
    except ObjectNotFound:
        raise InvalidTrainingSet(f"{store.uri} holds no batch job ({JOB_OBJECT}): run imgclassify-batch "
                                 "--features into it first") from None
    if job.get("rows") != "features":
        raise InvalidTrainingSet(f"{store.uri} holds a batch job's predictions, not features: run it with --features")
    chunks = [name for name in store.list("") if "/chunk-" in name and name.endswith(".jsonl")]

    def rows_of(name: str) -> list[dict]:
        return [json.loads(line) for line in store.read(name).data.splitlines() if line.strip()]

    rows: dict[str, dict] = {}
    with ThreadPoolExecutor(workers) as pool:
        for chunk in pool.map(rows_of, chunks):
            rows.update((row["uri"], row) for row in chunk)
    kept, features, bad = [], [], []
    for item in items:
        row = rows.get(item.uri)
        if row is None:
            bad.append((item.uri, f"no row in {store.uri} (not under the job's input {job.get('input')}, or its "
                                  "task has not finished)"))
        elif "error" in row:
            bad.append((item.uri, f"{row['error']['code']}: {row['error']['message']}"))
        else:
            kept.append(item)
            features.append(row["features"])
    matrix = np.asarray(features, dtype=np.float32) if features else np.zeros((0, 0), dtype=np.float32)
    empty = np.zeros((0, matrix.shape[1]), dtype=np.float32)
    return (Features(kept, [item.uri for item in kept], matrix, [empty] * len(kept), bad,
                     time.perf_counter() - started), f"{job['model']}@{job['version']}")


def check_decoded(found: Features, listed: int, options: TrainOptions) -> None:
    """Refuse a set with too many undecodable images, or with a label left short by them."""
    if len(found.bad) > options.max_bad_share * listed:
        raise InvalidTrainingSet(
            f"{len(found.bad)} of {listed} images cannot be used, more than --max-bad-share {options.max_bad_share:g} "
            f"allows: {_shown(f'{uri} ({why})' for uri, why in found.bad)}")
    counts = Counter(item.label for item in found.items)
    few = sorted(label for label, count in counts.items() if count < options.min_per_label)
    labels = {item.label for item in found.items}
    if few or len(labels) < 2:
        raise InvalidTrainingSet(f"after skipping {len(found.bad)} undecodable images, every label needs at least "
                                 f"{options.min_per_label} images: "
                                 f"{_shown(f'{label!r} has {counts[label]}' for label in few) or 'one label left'}")


# --- 3. splits -------------------------------------------------------------------------------


def assign_splits(items: list[LabelledImage], digests: list[str], options: TrainOptions) -> list[str]:
    """Each image's split: its own where the source gives one, else assigned per label.

    Identical images (same sha256) are one group and always share a split: a group given two
    splits, or two labels, is refused. Unassigned groups of a label are ordered by a hash of
    seed and digest; ``test_share`` of them (at least one) are held out, and when the source
    names no validation images ``validation_share`` of each label's training groups (at least
    one, leaving one) validate.
    """
    groups: dict[str, list[int]] = {}
    for index, digest in enumerate(digests):
        groups.setdefault(digest, []).append(index)
    group_split: dict[str, str | None] = {}
    for digest, members in groups.items():
        labels = {items[i].label for i in members}
        splits = {items[i].split for i in members} - {None}
        uris = [items[i].uri for i in members]
        if len(labels) > 1:
            raise InvalidTrainingSet(f"the same image has two labels: {_shown(uris)} ({', '.join(sorted(labels))})")
        if len(splits) > 1:
            raise InvalidTrainingSet(f"the same image is in two splits: {_shown(uris)} ({', '.join(sorted(splits))})")
        group_split[digest] = splits.pop() if splits else None

    def order(digest: str) -> str:
        return hashlib.sha256(f"{options.seed}:{digest}".encode()).hexdigest()

    by_label: dict[str, list[str]] = {}
    for digest, members in sorted(groups.items(), key=lambda entry: order(entry[0])):
        by_label.setdefault(items[members[0]].label, []).append(digest)
    for digests_of_label in by_label.values():
        unassigned = [d for d in digests_of_label if group_split[d] is None]
        held_out = max(1, round(len(unassigned) * options.test_share)) if len(unassigned) >= 2 else 0
        for position, digest in enumerate(unassigned):
            group_split[digest] = "test" if position < held_out else "train"
    if "validation" not in group_split.values():
        for digests_of_label in by_label.values():
            training = [d for d in digests_of_label if group_split[d] == "train"]
            validating = min(len(training) - 1, max(1, round(len(training) * options.validation_share)))
            for digest in training[:validating]:
                group_split[digest] = "validation"
    splits = [group_split[digest] for digest in digests]
    if "test" not in splits:
        raise InvalidTrainingSet("no held-out images to evaluate on: mark some TEST in the CSV or leave some "
                                 "unassigned")
    untrained = sorted({item.label for item in items} - {item.label for item, split in zip(items, splits,
                                                                                            strict=True)
                                                         if split == "train"})
    if untrained:
        raise InvalidTrainingSet(f"labels with no training image: {_shown(untrained)}")
    return splits


# --- 4. the head -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    """A linear head on raw backbone features: ``logits = features @ weight.T + bias``."""

    weight: np.ndarray          # (classes, width), float32
    bias: np.ndarray            # (classes,)
    strength: float             # the C chosen
    validation_accuracy: dict[str, float]
    class_weight: str | None

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float64) @ self.weight.T.astype(np.float64) + self.bias


def _fit(features: np.ndarray, targets: np.ndarray, strength: float, class_weight: str | None):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(features)
    # Features that barely vary would get weights of 1/scale once the scaler is folded into the
    # head, and float32 sums of such weights drift from the float64 head: floor the scale.
    scaler.scale_ = np.maximum(scaler.scale_, _SCALE_FLOOR * np.median(scaler.scale_))
    model = LogisticRegression(C=strength, max_iter=3000, class_weight=class_weight)
    model.fit(scaler.transform(features), targets)
    return scaler, model


def fit_head(train: np.ndarray, train_targets: np.ndarray, validation: np.ndarray, validation_targets: np.ndarray,
             classes: int, strengths: tuple[float, ...] = STRENGTHS) -> Head:
    """A regularised multinomial logistic regression; C chosen on the validation split (best
    accuracy, then lowest log loss, then the stronger penalty), refitted on both splits."""
    from sklearn.metrics import log_loss

    counts = np.bincount(train_targets, minlength=classes)
    class_weight = "balanced" if counts.min() != counts.max() else None
    scored, accuracy = [], {}
    for strength in strengths:
        scaler, model = _fit(train, train_targets, strength, class_weight)
        probabilities = model.predict_proba(scaler.transform(validation))
        hit = float(np.mean(model.classes_[probabilities.argmax(axis=1)] == validation_targets))
        loss = log_loss(validation_targets, probabilities, labels=model.classes_)
        accuracy[f"{strength:g}"] = round(hit, 4)
        scored.append((-hit, loss, strength))
    strength = min(scored)[2]
    scaler, model = _fit(np.concatenate([train, validation]), np.concatenate([train_targets, validation_targets]),
                         strength, class_weight)
    coef, intercept = model.coef_, model.intercept_
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row; softmax([0, z]) is its sigmoid
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    weight = coef / scaler.scale_                      # fold the standardisation into the head
    bias = intercept - weight @ scaler.mean_
    return Head(weight.astype(np.float32), bias.astype(np.float32), strength, accuracy, class_weight)


# --- 5. evaluation ---------------------------------------------------------------------------


def evaluate(head: Head, features: np.ndarray, targets: np.ndarray, labels: tuple[str, ...]) -> dict:
    """Accuracy, per-label precision and recall, and the confusion matrix (rows: true label,
    columns: predicted) of ``head`` on held-out features."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted = head.logits(features).argmax(axis=1)
    indices = list(range(len(labels)))
    precision, recall, _, support = precision_recall_fscore_support(targets, predicted, labels=indices,
                                                                    zero_division=0)
    return {
        "split": "test",
        "images": len(targets),
        "accuracy": round(float(np.mean(predicted == targets)), 6),
        "per_label": [{"label": label, "precision": round(float(p), 4), "recall": round(float(r), 4),
                       "images": int(n)} for label, p, r, n in zip(labels, precision, recall, support, strict=True)],
        "confusion_matrix": confusion_matrix(targets, predicted, labels=indices).tolist(),
    }


def format_evaluation(evaluation: dict) -> str:
    """The evaluation as text: accuracy, a precision/recall table, the confusion matrix."""
    labels = [row["label"] for row in evaluation["per_label"]]
    width = max(8, *(len(label) for label in labels))
    lines = [f"held-out accuracy {evaluation['accuracy']:.4f} on {evaluation['images']} images",
             f"{'label':<{width}}  precision  recall  images"]
    lines += [f"{row['label']:<{width}}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  {row['images']:>6}"
              for row in evaluation["per_label"]]
    cell = max(4, *(len(str(value)) for row in evaluation["confusion_matrix"] for value in row)) + 1
    lines.append("confusion matrix (rows: true label, columns: predicted, in the order above)")
    lines += [f"{label:<{width}} " + "".join(f"{value:>{cell}}" for value in row)
              for label, row in zip(labels, evaluation["confusion_matrix"], strict=True)]
    return "\n".join(lines)


# --- 6. one graph ----------------------------------------------------------------------------


def checked_graph(backbone: LoadedModel, backbone_onnx: bytes, head: Head) -> tuple[bytes, dict]:
    """The backbone's graph with the head appended, proven on real photos: its scores equal the
    backbone's features times the head (and its features the backbone's) within 1e-4."""
    from imgclassify.runtime.onnx_rules import OnnxRuleViolation, check_onnx

    from .export import check_batch, compare_logits, session
    from .graphs import append_head

    try:
        data = append_head(backbone_onnx, head.weight, head.bias)
        signature = check_onnx(data)
    except (ValueError, OnnxRuleViolation) as error:
        raise ExportMismatch(f"the head cannot be appended to the backbone's graph: {error}") from None
    batch = check_batch(backbone.manifest.preprocessing)
    expected_features = backbone.features(list(batch))
    scores, features = session(data).run(None, {signature.input_name: batch})
    for what, problem in (("scores", compare_logits(head.logits(expected_features), scores, HEAD_TOLERANCE)),
                          ("features", compare_logits(expected_features, features, HEAD_TOLERANCE))):
        if problem:
            raise ExportMismatch(f"the appended graph's {what} differ from the backbone's features times the head "
                                 f"on real photos: {problem}")
    return data, {"photos": len(batch),
                  "max_logit_difference": float(np.abs(head.logits(expected_features) - scores).max()),
                  "max_feature_difference": float(np.abs(expected_features - features).max())}


# --- all of it -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingResult:
    """A published classifier, its evaluation, and the held-out images it was measured on."""

    manifest: Manifest
    evaluation: dict
    held_out: list[LabelledImage]
    skipped: list[tuple[str, str]]
    seconds: dict[str, float]


def load_backbone(store: ObjectStore, ref: str) -> tuple[LoadedModel, bytes]:
    """The backbone ``ref`` as the functions load it (verified, ONNX Runtime), and its graph's bytes."""
    name, version = parse_model_ref(ref)
    catalog, _ = read_catalog(store)
    manifest = read_manifest(store, name, catalog.resolve(name, version))
    if "onnx" not in manifest.artifacts or manifest.feature_size is None:
        raise InvalidTrainingSet(f"backbone {manifest.name}@{manifest.version} has no feature output; run "
                                 f"`{MIGRATE_COMMAND} {manifest.name}` to republish it with one")
    # Every core for one batched forward at a time, beside the threads preparing the next batch, as in
    # the batch job (extract_features, 256 photos, 6 rounds: 137.3 spinning, 139.7 images/s not).
    model = load_model(store, manifest, EngineOptions("onnxruntime", threads=0).for_batches())
    data = store.download(manifest.artifacts["onnx"].object)
    verify_artifact(manifest, manifest.artifacts["onnx"], data)
    return model, data


def _batch_backbone(asked: str | None, job_model: str) -> str:
    """The backbone of a training on batch features: the job's model, which ``asked`` must name."""
    if asked is not None:
        name, version = parse_model_ref(asked)
        job_name, job_version = parse_model_ref(job_model)
        if name != job_name or version not in (None, job_version):
            raise InvalidTrainingSet(f"the features were computed by {job_model}, not by the backbone {asked}")
    return job_model


def train_classifier(store: ObjectStore, source: str, *, name: str, backbone: str | None = None,
                     version: str | None = None, options: TrainOptions = TrainOptions(),
                     features_from: str | None = None, description: str | None = None,
                     make_default: bool = False, log: Callable[[str], object] = print) -> TrainingResult:
    """Train a classifier on ``source``'s labelled photos over ``backbone`` (default
    :data:`DEFAULT_BACKBONE`) and publish it as ``name``. ``features_from`` takes the features
    from a batch job's output (``imgclassify-batch --features``) instead of computing them here."""
    started = time.perf_counter()
    name = check_name(name)
    version = version or next_version(store, name)
    refuse_existing(store, name, version)
    if features_from and options.augment:
        raise InvalidTrainingSet("--augment needs the images themselves; it cannot be used with --features")
    items = list_source(source)
    check_listing(items, options.min_per_label)
    if features_from:
        found, job_model = read_batch_features(features_from, items)
        model, backbone_onnx = load_backbone(store, _batch_backbone(backbone, job_model))
        if found.features.shape[1] not in (0, model.manifest.feature_size):
            raise InvalidTrainingSet(f"{features_from} holds {found.features.shape[1]} features per image; "
                                     f"{job_model} gives {model.manifest.feature_size}")
    else:
        model, backbone_onnx = load_backbone(store, backbone or DEFAULT_BACKBONE)
    base = model.manifest
    log(f"{len(items)} images, {len({item.label for item in items})} labels; features from {base.name}@{base.version}")
    if not features_from:
        found = extract_features(model, items, read=ImageReader(), augment=options.augment, seed=options.seed,
                                 batch_size=options.batch_size, workers=options.workers)
    check_decoded(found, len(items), options)
    for uri, why in found.bad:
        log(f"skipped {uri}: {why}")
    splits = np.asarray(assign_splits(found.items, found.digests, options))
    labels = tuple(sorted({item.label for item in found.items}))
    targets = np.asarray([labels.index(item.label) for item in found.items])
    fit_started = time.perf_counter()
    train, validation, test = (splits == split for split in SPLITS)
    train_x, train_y = found.features[train], targets[train]
    if options.augment:  # the augmented views of training images only
        views = [found.augmented[i] for i in np.flatnonzero(train)]
        train_x = np.concatenate([train_x, *views])
        train_y = np.concatenate([train_y, *[np.full(len(v), targets[i]) for v, i in zip(
            views, np.flatnonzero(train), strict=True)]])
    head = fit_head(train_x, train_y, found.features[validation], targets[validation], len(labels))
    evaluation = evaluate(head, found.features[test], targets[test], labels)
    fitted = time.perf_counter()
    graph, measured = checked_graph(model, backbone_onnx, head)
    manifest = Manifest(
        name=name, version=version,
        architecture=Architecture("trained", "linear_head", {"backbone": f"{base.name}@{base.version}"}),
        artifacts={}, labels=labels, preprocessing=base.preprocessing, engine="onnxruntime",
        feature_size=base.feature_size,
        metadata={
            "description": description or f"{len(labels)}-label classifier trained on {base.name}@{base.version}",
            "source": source,
            "top1_accuracy": round(evaluation["accuracy"] * 100, 2),
            "evaluation": evaluation,
            "training": {
                "backbone": f"{base.name}@{base.version}",
                "images": {split: int(np.sum(splits == split)) for split in SPLITS},
                "augment": options.augment, "skipped": len(found.bad),
                "features_from": features_from,
                "head": "multinomial logistic regression (scikit-learn), L2-regularised",
                "strength": head.strength, "validation_accuracy": head.validation_accuracy,
                "class_weight": head.class_weight,
                "seconds": {"features": round(found.seconds, 2), "fit_and_evaluate": round(fitted - fit_started, 2)},
            },
            "onnx_check": measured,
        })
    manifest = publish(store, manifest, {"onnx": graph}, make_default=make_default)
    finished = time.perf_counter()
    seconds = {"features": round(found.seconds, 2), "fit_and_evaluate": round(fitted - fit_started, 2),
               "total": round(finished - started, 2)}
    return TrainingResult(manifest, evaluation, [item for item, split in zip(found.items, splits, strict=True)
                                                 if split == "test"], found.bad, seconds)
