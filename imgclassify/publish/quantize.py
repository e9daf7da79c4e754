"""int8 twins: a published fp32 ONNX model quantized statically, measured, then published as a new model.

The recipe (:data:`RECIPE`): ONNX Runtime's ``quantize_static`` in the QDQ format (standard
``QuantizeLinear``/``DequantizeLinear`` nodes only, so the twin obeys the serving rules of
:mod:`imgclassify.runtime.onnx_rules`; the QOperator format emits ``com.microsoft`` nodes),
int8 per-channel weights, uint8 activations, calibrated on augmented crops of
:data:`CALIBRATION_PHOTOS` with 99.99th-percentile ranges (rare large values of the linear
bottleneck outputs set their MinMax ranges to +-46..60, 0.35-0.45 per step); the classifier
(pooling and the linear layer) stays in float. docs/int8.md has the measurements.

Agreement with the source is measured on crops of :data:`HELD_OUT_PHOTOS`, photos calibration
never sees: top-1 agreement, mean top-5 overlap and the largest probability difference. A twin
below the asked top-1 agreement is refused before anything is written.

int8 answers depend on the CPU (a CPU without VNNI adds u8 x s8 pairs in saturating 16-bit
arithmetic): the manifest carries :data:`GOLDEN_PHOTOS` and their top-5 as computed here, and the
service checks them where it loads the twin (:mod:`imgclassify.runtime.golden`).
"""

from __future__ import annotations

import importlib.resources
import io
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from imgclassify.errors import InvalidRequest
from imgclassify.imaging.preprocess import preprocess
from imgclassify.runtime.golden import GOLDEN_TOLERANCE, golden_batch, golden_entries
from imgclassify.runtime.onnx_rules import OnnxRuleViolation, check_onnx
from imgclassify.runtime.scores import scores
from imgclassify.store.catalog import (
    Architecture,
    Manifest,
    Preprocessing,
    parse_model_ref,
    read_catalog,
    read_manifest,
)
from imgclassify.store.objects import ObjectStore

from .catalog_writes import next_version, publish, refuse_existing
from .errors import AgreementTooLow, PublishError
from .export import session

# (package, file): real photos that ship inside the scikit-image and scikit-learn wheels.
CALIBRATION_PHOTOS = (
    ("skimage", "astronaut.png"), ("skimage", "motorcycle_left.png"), ("skimage", "motorcycle_right.png"),
    ("skimage", "camera.png"), ("skimage", "coins.png"), ("skimage", "grass.png"), ("skimage", "brick.png"),
    ("skimage", "gravel.png"), ("skimage", "retina.jpg"), ("skimage", "ihc.png"),
    ("skimage", "hubble_deep_field.jpg"), ("sklearn", "china.jpg"),
)
HELD_OUT_PHOTOS = (
    ("skimage", "chelsea.png"), ("skimage", "coffee.png"), ("skimage", "rocket.jpg"), ("skimage", "moon.png"),
    ("sklearn", "flower.jpg"),
)
GOLDEN_PHOTOS = (("skimage", "chelsea.png"), ("skimage", "coffee.png"), ("skimage", "rocket.jpg"))
HELD_OUT_CROPS = 320
MIN_HELD_OUT_CROPS = 300
DEFAULT_MIN_TOP1_AGREEMENT = 0.97
_PACKAGES = {"skimage": "skimage.data", "sklearn": "sklearn.datasets.images"}


@dataclass(frozen=True)
class Recipe:
    """How a graph is quantized; the defaults are the recipe that measured best here."""

    calibration_crops: int = 128
    calibrate_method: str = "percentile"      # "minmax", "entropy" or "percentile"
    percentile: float = 99.99
    exclude_stem: bool = False
    exclude_classifier: bool = True
    reduce_range: bool = False
    seed: int = 0

    def describe(self) -> dict:
        return {"format": "QDQ", "weights": "int8 per-channel", "activations": "uint8",
                "calibration": self.calibrate_method, **({"percentile": self.percentile}
                                                         if self.calibrate_method == "percentile" else {}),
                "calibration_crops": self.calibration_crops, "reduce_range": self.reduce_range,
                "float_nodes": [part for part, kept in (("stem", self.exclude_stem),
                                                        ("classifier", self.exclude_classifier)) if kept]}


RECIPE = Recipe()


def photo(package: str, name: str):
    """One shipped photo as an RGB PIL image (grey photos converted)."""
    from PIL import Image

    with importlib.resources.as_file(importlib.resources.files(_PACKAGES[package]) / name) as path:
        with Image.open(path) as image:
            return image.convert("RGB")


def augmented_crops(photos: Sequence[tuple[str, str]], count: int, preprocessing: Preprocessing,
                    seed: int) -> np.ndarray:
    """``count`` preprocessed crops, round-robin over ``photos``: random area (15-100 %), aspect
    ratio (3/4 to 4/3), position and horizontal flip, then the model's own preprocessing."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = [photo(*entry) for entry in photos]
    batch = np.empty((count, 3, preprocessing.crop_size, preprocessing.crop_size), dtype=np.float32)
    for index in range(count):
        image = images[index % len(images)]
        width, height = image.size
        area = width * height * rng.uniform(0.15, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        crop_w = int(min(width, round(np.sqrt(area * aspect))))
        crop_h = int(min(height, round(np.sqrt(area / aspect))))
        left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
        crop = image.crop((left, top, left + crop_w, top + crop_h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        batch[index] = preprocess(crop, preprocessing)
    return batch


def run_batches(model, batch: np.ndarray, size: int = 16) -> np.ndarray:
    name = model.get_inputs()[0].name
    return np.concatenate([model.run(None, {name: batch[start:start + size]})[0]
                           for start in range(0, len(batch), size)])


def _float_nodes(data: bytes, recipe: Recipe) -> list[str]:
    """Names of the nodes the recipe keeps in float: the stem (the Conv reading the input) and the
    classifier (every node after the last Conv: pooling, reshape, the linear layer)."""
    import onnx

    graph = onnx.load_from_string(data).graph
    names = [node.name for node in graph.node]  # ONNX lists nodes in topological order
    convs = [index for index, node in enumerate(graph.node) if node.op_type == "Conv"]
    excluded = []
    if recipe.exclude_stem and convs:
        excluded += [names[convs[0]]]
    if recipe.exclude_classifier:
        # Quantizing the pooled features and the logits costs the most agreement: uint8 logits
        # step by about 0.1, enough to swap two classes that fp32 separates.
        excluded += names[convs[-1] + 1:] if convs else names
    return excluded


def quantize_graph(data: bytes, calibration: np.ndarray, recipe: Recipe = RECIPE) -> bytes:
    """``data`` (an fp32 ONNX graph) statically quantized to QDQ by ``recipe``, calibrated on ``calibration``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    input_name = session(data).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[start:start + 8] for start in range(0, len(calibration), 8))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="imgclassify-quantize-") as work:
        source, target = os.path.join(work, "fp32.onnx"), os.path.join(work, "int8.onnx")
        with open(source, "wb") as handle:
            handle.write(data)
        quantize_static(
            source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=recipe.reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=methods[recipe.calibrate_method], nodes_to_exclude=_float_nodes(data, recipe),
            extra_options={"CalibPercentile": recipe.percentile, "CalibTensorRangeSymmetric": False})
        with open(target, "rb") as handle:
            return handle.read()


def agreement(source_probabilities: np.ndarray, twin_probabilities: np.ndarray) -> dict:
    """Top-1 agreement, mean top-5 overlap (0..1) and the largest probability difference of two models."""
    top5_source = np.argsort(-source_probabilities, axis=1, kind="stable")[:, :5]
    top5_twin = np.argsort(-twin_probabilities, axis=1, kind="stable")[:, :5]
    overlap = [len(set(a) & set(b)) / 5 for a, b in zip(top5_source, top5_twin, strict=True)]
    return {
        "held_out_crops": len(source_probabilities),
        "top1_agreement": round(float(np.mean(top5_source[:, 0] == top5_twin[:, 0])), 4),
        "top5_overlap": round(float(np.mean(overlap)), 4),
        "max_probability_difference": round(float(np.abs(source_probabilities - twin_probabilities).max()), 4),
    }


def measure(source: bytes, twin: bytes, preprocessing: Preprocessing, output: str,
            crops: int = HELD_OUT_CROPS, seed: int = 1) -> dict:
    """:func:`agreement` of ``twin`` with ``source`` on ``crops`` augmented crops of the held-out photos."""
    held_out = augmented_crops(HELD_OUT_PHOTOS, crops, preprocessing, seed)
    return agreement(scores(run_batches(session(source, threads=1), held_out), output),
                     scores(run_batches(session(twin, threads=1), held_out), output))


def golden_png(preprocessing: Preprocessing) -> bytes:
    """``golden.png``: the centre square of each golden photo at the model's input size, one under another."""
    from PIL import Image

    from imgclassify.imaging.preprocess import RESAMPLE

    crop = preprocessing.crop_size
    strip = Image.new("RGB", (crop, crop * len(GOLDEN_PHOTOS)))
    for row, entry in enumerate(GOLDEN_PHOTOS):
        image = photo(*entry)
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        square = image.crop((left, top, left + side, top + side))
        strip.paste(square.resize((crop, crop), RESAMPLE[preprocessing.interpolation]), (0, row * crop))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()


def publish_int8_twin(store: ObjectStore, ref: str, *, name: str | None = None, version: str | None = None,
                      min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT, recipe: Recipe = RECIPE,
                      make_default: bool = False, log=print) -> Manifest:
    """Quantize published model ``ref`` (``NAME[@VERSION]``), measure it, publish it as ``name`` (NAME_int8).

    Raises AgreementTooLow, writing nothing, if its top-1 agreement with the source on held-out
    photos is below ``min_top1_agreement``.
    """
    if not 0 <= min_top1_agreement <= 1:
        raise InvalidRequest(f"--min-top1-agreement must be between 0 and 1, found {min_top1_agreement}")
    source_name, source_version = parse_model_ref(ref)
    catalog, _ = read_catalog(store)
    source_version = catalog.resolve(source_name, source_version)
    source = read_manifest(store, source_name, source_version)
    if "onnx" not in source.artifacts:
        raise InvalidRequest(f"{source_name}@{source_version} has no model.onnx to quantize "
                             "(run `migrate` first)")
    if source.metadata.get("precision", "fp32") != "fp32":
        raise InvalidRequest(f"{source_name}@{source_version} is {source.metadata['precision']} already; "
                             "quantize its fp32 source")
    name = name or f"{source_name}_int8"
    version = version or next_version(store, name)
    refuse_existing(store, name, version)  # before a calibration that takes a minute
    data = store.download(source.artifacts["onnx"].object)
    started = time.perf_counter()
    calibration = augmented_crops(CALIBRATION_PHOTOS, recipe.calibration_crops, source.preprocessing, recipe.seed)
    twin = quantize_graph(data, calibration, recipe)
    try:
        check_onnx(twin)
    except OnnxRuleViolation as error:
        raise PublishError(f"the quantized graph breaks a serving rule: {error}") from None
    measured = measure(data, twin, source.preprocessing, source.output)
    log(f"{source_name}@{source_version} -> int8 in {time.perf_counter() - started:.0f} s: top-1 agreement "
        f"{measured['top1_agreement']:.2%}, top-5 overlap {measured['top5_overlap']:.2%}, largest probability "
        f"difference {measured['max_probability_difference']:.3f} on {measured['held_out_crops']} held-out crops")
    if measured["top1_agreement"] < min_top1_agreement:
        raise AgreementTooLow(
            f"the int8 twin of {source_name}@{source_version} agrees with it on {measured['top1_agreement']:.2%} "
            f"of {measured['held_out_crops']} held-out crops, below --min-top1-agreement "
            f"{min_top1_agreement:g}; nothing was published")
    png = golden_png(source.preprocessing)
    golden = golden_entries(scores(run_batches(session(twin, threads=1), golden_batch(png, source.preprocessing)),
                                   source.output), [name for _, name in GOLDEN_PHOTOS])
    manifest = replace(
        source, name=name, version=version, artifacts={}, published_at="", publish_id="",
        architecture=Architecture("onnx", f"int8 twin of {source_name}@{source_version}"),
        engine="onnxruntime",
        metadata={
            **{key: value for key, value in source.metadata.items() if key not in ("onnx_check", "migrated_from")},
            "description": f"{source.metadata.get('description') or source_name} (int8)",
            "precision": "int8",
            "quantized_from": {"name": source_name, "version": source_version,
                               "sha256": source.artifacts["onnx"].sha256},
            "quantization": {**recipe.describe(), "quantized_at": datetime.now(UTC).isoformat(timespec="seconds")},
            "agreement": measured,
            "golden": {"tolerance": GOLDEN_TOLERANCE, "photos": golden},
            # the published ImageNet accuracy was the fp32 model's: not measured for the twin
            "top1_accuracy": None,
        },
    )
    return publish(store, manifest, {"onnx": twin, "golden": png}, make_default=make_default)


def published_twin(store: ObjectStore, source: Manifest) -> str | None:
    """``name@version`` of a published int8 twin of exactly ``source`` (its name, version and
    graph's sha256), or None."""
    catalog, _ = read_catalog(store)
    wanted = {"name": source.name, "version": source.version, "sha256": source.artifacts["onnx"].sha256}
    for name, entry in sorted(catalog.models.items()):
        for version, summary in entry["versions"].items():
            if summary.get("quantized_from") == wanted:
                return f"{name}@{version}"
    return None


def publish_missing_twins(store: ObjectStore, names: Sequence[str], *, log=print, **options) -> list[Manifest]:
    """An int8 twin of the latest version of each of ``names`` that has none yet (``make dev``).

    A twin of that exact source version already published is not made again; one the recipe
    cannot make well enough (AgreementTooLow) is one logged line, and the others go on.
    ``options`` are :func:`publish_int8_twin`'s (recipe, min_top1_agreement).
    """
    catalog, _ = read_catalog(store)
    published = []
    for name in names:
        source = read_manifest(store, name, catalog.resolve(name, None))
        existing = published_twin(store, source)
        if existing:
            log(f"{source.name}@{source.version}: int8 twin {existing} is published")
            continue
        log(f"{source.name}@{source.version}: quantizing its int8 twin (a minute or two, once)")
        try:
            published.append(publish_int8_twin(store, f"{source.name}@{source.version}", log=log, **options))
        except AgreementTooLow as error:
            log(f"{source.name}@{source.version}: no int8 twin: {error.message}")
    return published
