"""int8 twins: a published fp32 ONNX model quantized statically, measured, then published as a new model.

The recipe (:class:`Recipe`, docs/int8.md has the measurements):

- ONNX Runtime's ``quantize_static`` in the QDQ format (standard ``QuantizeLinear`` /
  ``DequantizeLinear`` nodes only, so the twin obeys :mod:`imgclassify.runtime.onnx_rules`; the
  QOperator format emits ``com.microsoft`` nodes), uint8 activations with MinMax ranges
  calibrated on augmented crops of :data:`CALIBRATION_PHOTOS`, int8 per-channel weights
  in 7 bits (``reduce_range``): on a CPU without VNNI ONNX Runtime adds pairs of u8 x s8
  products in saturating 16-bit arithmetic, and 7-bit weights cannot saturate, so the twin's
  integer arithmetic is exact, and its answers the same, on every x86 CPU;
- bias correction: each quantized Conv's bias absorbs the mean shift its weights' rounding
  causes (the rounding error times its input's per-channel mean over the calibration crops);
- Convs kept in float, measured: on validation crops of the calibration photos (never the
  held-out ones), when the fully quantized twin's judged agreement is below
  :attr:`Recipe.target_agreement`, the first k Convs from the input on stay in float for the
  smallest k that reaches it (error made early runs through every later layer; a ranking of
  single Convs missed the stem and block 0's depthwise Conv, whose errors only show together);
  the classifier (pooling and the linear layer) is always float.

Agreement with the source is measured on crops of :data:`HELD_OUT_PHOTOS`, photos calibration
and the search never see: half random crops, half crops a person would send
(:func:`sent_crops`). Top-1 agreement is judged on the crops whose answer the *source* keeps
under :data:`NOISE_DRAWS` draws of one 8-bit step of Gaussian noise on its input
(:func:`noise_stable`: a rule that depends on the source only, never on the twin); top-1 on
all crops, top-5 overlap and the largest probability difference are over every crop, and all
are in the manifest. A twin below the asked top-1 agreement, or judged on fewer than
:data:`MIN_HELD_OUT_CROPS` crops, is refused before anything is written.

int8 answers can still depend on the CPU: the manifest carries :data:`GOLDEN_PHOTOS` and their
top-5 as computed here, and the service checks them where it loads the twin
(:mod:`imgclassify.runtime.golden`).
"""

from __future__ import annotations

import importlib.resources
import io
import os
import tempfile
import time
from collections.abc import Callable, Sequence
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
HELD_OUT_CROPS = 640          # half random crops, half crops a person would send
HELD_OUT_SEED = 1
MIN_HELD_OUT_CROPS = 300      # judged (noise-stable) crops a verdict needs
NOISE_DRAWS = 4               # draws of one 8-bit step of Gaussian noise a judged crop survives
DEFAULT_MIN_TOP1_AGREEMENT = 0.97
_PACKAGES = {"skimage": "skimage.data", "sklearn": "sklearn.datasets.images"}


@dataclass(frozen=True)
class Recipe:
    """How a graph is quantized; the defaults are the recipe that measured best here."""

    calibration_crops: int = 128
    calibrate_method: str = "minmax"          # "minmax", "entropy" or "percentile"
    percentile: float = 99.99
    reduce_range: bool = True                 # 7-bit weights: exact, and the same, on CPUs without VNNI
    bias_correction: bool = True
    exclude_classifier: bool = True
    validation_crops: int = 128               # of the calibration photos, for the search (half as sent)
    target_agreement: float = 0.98            # judged top-1 on the validation crops the search stops at
    max_float_convs: int = 4
    seed: int = 0

    def describe(self) -> dict:
        return {"format": "QDQ", "weights": "int8 per-channel" + (", 7-bit range" if self.reduce_range else ""),
                "activations": "uint8", "calibration": self.calibrate_method,
                **({"percentile": self.percentile} if self.calibrate_method == "percentile" else {}),
                "calibration_crops": self.calibration_crops, "reduce_range": self.reduce_range,
                "bias_correction": self.bias_correction, "validation_crops": self.validation_crops,
                "target_agreement": self.target_agreement}


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


def sent_crops(photos: Sequence[tuple[str, str]], count: int, preprocessing: Preprocessing,
               seed: int) -> np.ndarray:
    """``count`` preprocessed crops a person would send, round-robin over ``photos``: each whole
    photo first, then centred crops of 50-100 % of each side shifted by up to 10 % of it, a
    horizontal flip half the time, brightness and contrast within 10 %, saved as JPEG at quality
    70-95; then the model's own preprocessing."""
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(seed)
    images = [photo(*entry) for entry in photos]
    batch = np.empty((count, 3, preprocessing.crop_size, preprocessing.crop_size), dtype=np.float32)
    for index in range(count):
        image = images[index % len(images)]
        if index >= len(images):
            width, height = image.size
            crop_w, crop_h = (max(1, round(side * rng.uniform(0.5, 1.0))) for side in (width, height))
            left = int(np.clip((width - crop_w) / 2 + rng.uniform(-0.1, 0.1) * width, 0, width - crop_w))
            top = int(np.clip((height - crop_h) / 2 + rng.uniform(-0.1, 0.1) * height, 0, height - crop_h))
            image = image.crop((left, top, left + crop_w, top + crop_h))
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.9, 1.1))
            image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.9, 1.1))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
            with Image.open(buffer) as decoded:
                image = decoded.convert("RGB")
        batch[index] = preprocess(image, preprocessing)
    return batch


def crop_set(photos: Sequence[tuple[str, str]], count: int, preprocessing: Preprocessing, seed: int) -> np.ndarray:
    """``count`` crops of ``photos``: the first half random (:func:`augmented_crops`), the rest as sent."""
    random_count = count // 2
    return np.concatenate([augmented_crops(photos, random_count, preprocessing, seed),
                           sent_crops(photos, count - random_count, preprocessing, seed + 1)])


def run_batches(model, batch: np.ndarray, size: int = 1) -> np.ndarray:
    """``model``'s first output on ``batch``, ``size`` images per run (on one thread, one image per
    run is the fastest here: Lite2 25 ms an image, 32 ms in runs of 16)."""
    name = model.get_inputs()[0].name
    return np.concatenate([model.run(None, {name: batch[start:start + size]})[0]
                           for start in range(0, len(batch), size)])


def noise_stable(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, preprocessing: Preprocessing,
                 draws: int = NOISE_DRAWS, seed: int = 0) -> np.ndarray:
    """Which crops of ``batch`` keep ``run``'s top-1 under each of ``draws`` draws of Gaussian
    noise of one 8-bit step (sigma 1/255 of the pixel range, i.e. 1/(255 std) after normalising)
    on the input: the crops where a model has an answer an invisible change does not move.

    Judging agreement only there is a rule of the source model alone: the twin plays no part in it.
    """
    rng = np.random.default_rng(seed)
    sigma = (1 / (255 * np.asarray(preprocessing.std, dtype=np.float32)))[None, :, None, None]
    top1 = run(batch).argmax(axis=1)
    stable = np.ones(len(batch), dtype=bool)
    for _ in range(draws):
        noisy = batch + rng.standard_normal(batch.shape, dtype=np.float32) * sigma
        stable &= run(noisy).argmax(axis=1) == top1
    return stable


def agreement(source_probabilities: np.ndarray, twin_probabilities: np.ndarray,
              judged: np.ndarray | None = None) -> dict:
    """How two models' answers agree: ``top1_agreement`` on the ``judged`` crops (all if None),
    ``top1_agreement_all``, mean top-5 overlap (0..1) and the largest probability difference on all."""
    judged = np.ones(len(source_probabilities), dtype=bool) if judged is None else np.asarray(judged, dtype=bool)
    top5_source = np.argsort(-source_probabilities, axis=1, kind="stable")[:, :5]
    top5_twin = np.argsort(-twin_probabilities, axis=1, kind="stable")[:, :5]
    same = top5_source[:, 0] == top5_twin[:, 0]
    overlap = [len(set(a) & set(b)) / 5 for a, b in zip(top5_source, top5_twin, strict=True)]
    return {
        "held_out_crops": len(source_probabilities),
        "judged_crops": int(judged.sum()),
        "top1_agreement": round(float(same[judged].mean()), 4) if judged.any() else 0.0,
        "top1_agreement_all": round(float(same.mean()), 4),
        "top5_overlap": round(float(np.mean(overlap)), 4),
        "max_probability_difference": round(float(np.abs(source_probabilities - twin_probabilities).max()), 4),
    }


@dataclass
class _Reference:
    """The source's answers on a crop set, and which crops are judged."""

    crops: np.ndarray
    probabilities: np.ndarray
    judged: np.ndarray

    @classmethod
    def of(cls, source, crops: np.ndarray, preprocessing: Preprocessing, output: str, seed: int) -> _Reference:
        def run(batch):
            return run_batches(source, batch)

        logits = run(crops)
        return cls(crops, scores(logits, output), noise_stable(run, crops, preprocessing, seed=seed))

    def agreement(self, twin_probabilities: np.ndarray) -> dict:
        return agreement(self.probabilities, twin_probabilities, self.judged)


def measure(source, twin, preprocessing: Preprocessing, output: str,
            crops: int = HELD_OUT_CROPS, seed: int = HELD_OUT_SEED) -> dict:
    """:func:`agreement` of the ``twin`` session with the ``source`` session on ``crops`` crops of
    the held-out photos (:func:`crop_set`), judged where the source is :func:`noise_stable`."""
    reference = _Reference.of(source, crop_set(HELD_OUT_PHOTOS, crops, preprocessing, seed), preprocessing,
                              output, seed)
    measured = reference.agreement(scores(run_batches(twin, reference.crops), output))
    return {**measured, "source_noise_stable": round(float(reference.judged.mean()), 4)}


def _classifier_nodes(graph) -> list[str]:
    """Every node after the last Conv (pooling, reshape, the linear layer): quantizing the pooled
    features and the logits costs the most agreement (uint8 logits step by about 0.1)."""
    convs = [index for index, node in enumerate(graph.node) if node.op_type == "Conv"]
    return [node.name for node in graph.node[convs[-1] + 1:]] if convs else [node.name for node in graph.node]


def _weight_dequantize(node, producers: dict, initializers: dict):
    """The DequantizeLinear that gives Conv ``node`` its weights from an int8 initializer, or None (a float Conv)."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    producer = producers.get(node.input[1])
    if producer is None or producer.op_type != "DequantizeLinear" or producer.input[0] not in initializers:
        return None
    return producer


def _dequantized(producer, initializers: dict) -> np.ndarray:
    """The float values of a DequantizeLinear of initializers (per-channel on axis 0, or per-tensor)."""
    from onnx import numpy_helper

    values = numpy_helper.to_array(initializers[producer.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(initializers[producer.input[1]]).astype(np.float64)
    zero = (numpy_helper.to_array(initializers[producer.input[2]]).astype(np.float64)
            if len(producer.input) > 2 and producer.input[2] else np.zeros_like(scale))
    shape = (-1,) + (1,) * (values.ndim - 1) if scale.ndim else ()
    return (values - zero.reshape(shape)) * scale.reshape(shape)


def conv_input_means(data: bytes, calibration: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel mean of every Conv's input in fp32 graph ``data`` over ``calibration``."""
    import onnx

    model = onnx.load_from_string(data)
    inputs = sorted({node.input[0] for node in model.graph.node if node.op_type == "Conv"})
    known = {output.name for output in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in inputs if name not in known)
    tapped = session(model.SerializeToString(), threads=1)
    names = [output.name for output in tapped.get_outputs()]
    sums: dict[str, np.ndarray] = {}
    feed = tapped.get_inputs()[0].name
    for start in range(0, len(calibration), 4):
        for name, value in zip(names, tapped.run(None, {feed: calibration[start:start + 4]}), strict=True):
            if name in inputs:
                sums[name] = sums.get(name, 0) + value.astype(np.float64).sum(axis=(0, 2, 3)) / (
                    value.shape[2] * value.shape[3])
    return {name: total / len(calibration) for name, total in sums.items()}


def correct_biases(model, source, input_means: dict[str, np.ndarray]) -> int:
    """Bias correction, in place on QDQ ``model``: each quantized Conv's int32 bias absorbs the mean
    output shift of its weights' rounding, sum over (input channel, kernel) of the weight error
    times the input channel's mean (``input_means``, from the fp32 ``source`` graph). Returns how
    many Convs were corrected."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producers = {output: node for node in graph.node for output in node.output}
    source_weights = {tensor.name: tensor for tensor in source.graph.initializer}
    corrected = 0
    for node in graph.node:
        weights = _weight_dequantize(node, producers, initializers)
        bias = producers.get(node.input[2]) if len(node.input) > 2 else None
        float_name = weights.input[0].removesuffix("_quantized") if weights is not None else None
        mean_name = _pre_quantize(node.input[0], producers)
        if (weights is None or bias is None or bias.op_type != "DequantizeLinear" or float_name not in source_weights
                or mean_name not in input_means):
            continue
        error = _dequantized(weights, initializers) - numpy_helper.to_array(source_weights[float_name])
        out_channels, group_inputs = error.shape[:2]
        means = input_means[mean_name]
        groups = len(means) // group_inputs
        per_output = means.reshape(groups, group_inputs)[np.arange(out_channels) // (out_channels // groups)]
        shift = np.einsum("okhw,ok->o", error, per_output)
        scale = numpy_helper.to_array(initializers[bias.input[1]]).astype(np.float64)
        stored = initializers[bias.input[0]]
        values = numpy_helper.to_array(stored).astype(np.float64) - shift / scale
        limits = np.iinfo(np.int32)
        stored.CopyFrom(numpy_helper.from_array(
            np.clip(np.round(values), limits.min, limits.max).astype(np.int32), stored.name))
        corrected += 1
    return corrected


def _pre_quantize(tensor: str, producers: dict) -> str:
    """The float tensor behind ``tensor`` when it is DequantizeLinear(QuantizeLinear(x)): x; else ``tensor``."""
    dequantize = producers.get(tensor)
    if dequantize is not None and dequantize.op_type == "DequantizeLinear":
        quantize = producers.get(dequantize.input[0])
        if quantize is not None and quantize.op_type == "QuantizeLinear":
            return quantize.input[0]
    return tensor


def choose_float_convs(ranked: Sequence[str], agreement_with: Callable[[list[str]], float], target: float,
                       most: int, patience: int = 2) -> tuple[list[str], list[tuple[int, float]]]:
    """The fewest of ``ranked`` (in the order they are to be kept in float) to keep in float: the
    first k for the smallest k (0..``most``) whose ``agreement_with(first k)`` reaches ``target``.
    If none does, the k that agreed best (fewest on a tie), trying no further once ``patience``
    more Convs in a row brought no gain. Returns them and each tried (k, agreement)."""
    tried: list[tuple[int, float]] = []
    for count in range(min(most, len(ranked)) + 1):
        tried.append((count, agreement_with(list(ranked[:count]))))
        if tried[-1][1] >= target:
            return list(ranked[:count]), tried
        best = max(tried, key=lambda entry: (entry[1], -entry[0]))
        if count - best[0] >= patience:
            break
    return list(ranked[:best[0]]), tried


class _Quantizer:
    """quantize_static on one fp32 graph, calibrated once (its ranges cached for the next calls)."""

    def __init__(self, data: bytes, calibration: np.ndarray, recipe: Recipe, work: str) -> None:
        import onnx

        self.data, self.calibration, self.recipe = data, calibration, recipe
        self.source = onnx.load_from_string(data)
        self.path = os.path.join(work, "fp32.onnx")
        self.cache = os.path.join(work, "calibration.json")
        self.target = os.path.join(work, "int8.onnx")
        with open(self.path, "wb") as handle:
            handle.write(data)
        self.input_name = self.source.graph.input[0].name
        self.means = conv_input_means(data, calibration) if recipe.bias_correction else {}

    def quantize(self, float_convs: Sequence[str] = ()):
        """The QDQ model (an onnx.ModelProto) with ``float_convs`` and, by the recipe, the classifier in float.

        Every Relu/Clip stays in the graph: the quantizer would otherwise leave a ReLU6 to the range
        of the QuantizeLinear after it, which is lost where the Conv after it stays in float
        (docs/int8.md); ONNX Runtime fuses each one into the int8 Conv when it builds the session."""
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        calibration, input_name = self.calibration, self.input_name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter(calibration[start:start + 8] for start in range(0, len(calibration), 8))

            def get_next(self):
                batch = next(self.batches, None)
                return None if batch is None else {input_name: batch}

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        excluded = list(float_convs) + (_classifier_nodes(self.source.graph) if self.recipe.exclude_classifier else [])
        quantize_static(
            self.path, self.target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=self.recipe.reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=methods[self.recipe.calibrate_method], nodes_to_exclude=excluded,
            calibration_cache_path=self.cache,
            extra_options={"CalibPercentile": self.recipe.percentile, "CalibTensorRangeSymmetric": False,
                           "QDQKeepRemovableActivations": True})
        model = onnx.load(self.target)
        if self.recipe.bias_correction:
            correct_biases(model, self.source, self.means)
        return model


def quantize_graph(data: bytes, calibration: np.ndarray, recipe: Recipe = RECIPE,
                   validation: _Reference | None = None, output: str = "logits", log=print) -> tuple[bytes, dict]:
    """``data`` (an fp32 ONNX graph) statically quantized to QDQ by ``recipe``, calibrated on
    ``calibration``. With a ``validation`` reference (crops of the calibration photos), the
    search for Convs to keep in float runs when the fully quantized twin's judged validation
    agreement is below ``recipe.target_agreement``: the first k Convs from the input on, for the
    smallest k that reaches it (:func:`choose_float_convs`). Returns the graph and what the
    search did."""
    with tempfile.TemporaryDirectory(prefix="imgclassify-quantize-") as work:
        quantizer = _Quantizer(data, calibration, recipe, work)
        if validation is None:
            return quantizer.quantize().SerializeToString(), {"float_convs": []}
        twins: dict[tuple[str, ...], bytes] = {}

        def agreement_with(float_convs: list[str]) -> float:
            twins[tuple(float_convs)] = quantizer.quantize(float_convs).SerializeToString()
            answers = scores(run_batches(session(twins[tuple(float_convs)], threads=1), validation.crops), output)
            return validation.agreement(answers)["top1_agreement"]

        # ONNX lists nodes in topological order: the first Convs are those nearest the input
        convs = [node.name for node in quantizer.source.graph.node if node.op_type == "Conv"]
        chosen, tried = choose_float_convs(convs, agreement_with, recipe.target_agreement, recipe.max_float_convs)
        log("  first Convs in float -> judged top-1 agreement on the validation crops: "
            + ", ".join(f"{count}: {value:.2%}" for count, value in tried))
        return twins[tuple(chosen)], {"float_convs": chosen, "validation": {
            "crops": len(validation.crops), "judged_crops": int(validation.judged.sum()),
            "top1_agreement": dict(tried)[len(chosen)]}}


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

    Raises AgreementTooLow, writing nothing, if its judged top-1 agreement with the source on
    held-out photos is below ``min_top1_agreement``, or (``min_top1_agreement`` above 0) fewer
    than MIN_HELD_OUT_CROPS crops could be judged.
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
    preprocessing, output = source.preprocessing, source.output
    calibration = augmented_crops(CALIBRATION_PHOTOS, recipe.calibration_crops, preprocessing, recipe.seed)
    fp32 = session(data, threads=1)
    validation = _Reference.of(fp32, crop_set(CALIBRATION_PHOTOS, recipe.validation_crops, preprocessing,
                                              recipe.seed + 1000), preprocessing, output, recipe.seed + 1000)
    log(f"{source_name}@{source_version}: quantizing ({len(calibration)} calibration crops, "
        f"{validation.judged.sum()} of {len(validation.crops)} validation crops judged)")
    twin, search = quantize_graph(data, calibration, recipe, validation, output, log=log)
    try:
        check_onnx(twin)
    except OnnxRuleViolation as error:
        raise PublishError(f"the quantized graph breaks a serving rule: {error}") from None
    twin_session = session(twin, threads=1)
    measured = measure(fp32, twin_session, preprocessing, output)
    log(f"{source_name}@{source_version} -> int8 in {time.perf_counter() - started:.0f} s, "
        f"{len(search['float_convs'])} Convs in float: top-1 agreement {measured['top1_agreement']:.2%} on "
        f"{measured['judged_crops']} judged held-out crops ({measured['top1_agreement_all']:.2%} on all "
        f"{measured['held_out_crops']}), top-5 overlap {measured['top5_overlap']:.2%}, largest probability "
        f"difference {measured['max_probability_difference']:.3f}")
    if measured["top1_agreement"] < min_top1_agreement:
        raise AgreementTooLow(
            f"the int8 twin of {source_name}@{source_version} agrees with it on {measured['top1_agreement']:.2%} "
            f"of {measured['judged_crops']} judged held-out crops, below --min-top1-agreement "
            f"{min_top1_agreement:g}; nothing was published")
    if min_top1_agreement > 0 and measured["judged_crops"] < MIN_HELD_OUT_CROPS:
        raise AgreementTooLow(
            f"{source_name}@{source_version} keeps its own answer under input noise on only "
            f"{measured['judged_crops']} of {measured['held_out_crops']} held-out crops, fewer than the "
            f"{MIN_HELD_OUT_CROPS} a verdict needs; nothing was published")
    png = golden_png(preprocessing)
    golden = golden_entries(scores(run_batches(twin_session, golden_batch(png, preprocessing)), output),
                            [name for _, name in GOLDEN_PHOTOS])
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
            "quantization": {**recipe.describe(), **search,
                             "quantized_at": datetime.now(UTC).isoformat(timespec="seconds")},
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
