"""Publish-time work on ONNX: export a torch module, and prove a graph answers as it should.

Runs where models are published (torch, onnx and scikit-image installed), never in the
functions. Every graph is checked on real photos before anything is written:

- exported from torch: ONNX Runtime's logits equal the torch module's within
  :data:`LOGIT_TOLERANCE` and the top-5 order is the same (:func:`export_checked`);
- brought as a file: the rules of :mod:`imgclassify.runtime.onnx_rules`, a size limit, and a trial run
  whose output has one row per image and one column per label (:func:`check_onnx_file`).
"""

from __future__ import annotations

import importlib.resources
import io
import logging
import warnings
from collections.abc import Sequence

import numpy as np

from imgclassify.imaging.preprocess import preprocess
from imgclassify.runtime.onnx_rules import GraphSignature, OnnxRuleViolation, check_onnx
from imgclassify.store.catalog import Preprocessing

from .errors import ExportMismatch, InvalidModelFile

log = logging.getLogger(__name__)

LOGIT_TOLERANCE = 1e-4
# scikit-image ships these photos in its wheel; nothing is downloaded.
CHECK_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
MAX_ONNX_BYTES = 2**31 - 1   # protobuf's own limit for a single message
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def check_batch(preprocessing: Preprocessing, photos: Sequence[str] = CHECK_PHOTOS) -> np.ndarray:
    """The check photos, preprocessed for a model, as one float32 NCHW batch."""
    from PIL import Image

    arrays = []
    for name in photos:
        with importlib.resources.as_file(importlib.resources.files("skimage.data") / name) as path:
            with Image.open(path) as image:
                arrays.append(preprocess(image.convert("RGB"), preprocessing))
    return np.stack(arrays)


def session(data: bytes, threads: int = 0):
    """An ONNX Runtime CPU session of ``data`` for publish-time checks (``threads`` 0: the runtime's choice)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def export_onnx(module, crop_size: int) -> bytes:
    """``module`` as ONNX bytes with a dynamic batch dimension (torch.export; the TorchScript
    exporter only for a module torch.export cannot trace)."""
    import torch

    example = (torch.zeros(2, 3, crop_size, crop_size),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, example, dynamo=True, optimize=True, verbose=False,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=({0: torch.export.Dim("batch")},))
            return program.model_proto.SerializeToString()
        except Exception as error:  # noqa: BLE001 - torch.export fails in many ways on untraceable code
            log.warning("torch.export could not trace the model (%s); using the TorchScript exporter",
                        str(error).splitlines()[0][:200])
        buffer = io.BytesIO()
        torch.onnx.export(module, example, buffer, dynamo=False, opset_version=18,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        return buffer.getvalue()


def compare_logits(expected: np.ndarray, got: np.ndarray, tolerance: float = LOGIT_TOLERANCE) -> str | None:
    """Why ``got`` is not ``expected`` (None if it is): the largest difference beyond ``tolerance``,
    or a top-5 order that differs where the logits are further apart than the tolerance."""
    difference = float(np.abs(expected - got).max())
    if not difference <= tolerance:
        return f"logits differ by up to {difference:.3g} (tolerance {tolerance:g})"
    k = min(5, expected.shape[1])
    for row, (want, have) in enumerate(zip(expected, got, strict=True)):
        want_order, have_order = np.argsort(-want, kind="stable")[:k], np.argsort(-have, kind="stable")[:k]
        # Two classes whose logits are within the tolerance are a tie: either order is right.
        if np.abs(want[want_order] - want[have_order]).max() > tolerance:
            return f"photo {row}: top-{k} {want_order.tolist()} became {have_order.tolist()}"
    return None


def export_checked(module, preprocessing: Preprocessing) -> tuple[bytes, dict]:
    """Export ``module`` and prove the graph on real photos; return its bytes and what was measured.

    The graph carries the penultimate features as its second output where its final layer
    is linear (:func:`.graphs.with_feature_output`; ``measured["feature_size"]`` says how wide).
    Raises ExportMismatch (nothing is written) with the measured difference.
    """
    import torch

    from .graphs import with_feature_output

    module.eval()
    data, feature_size = with_feature_output(export_onnx(module, preprocessing.crop_size))
    try:
        signature = check_onnx(data)
    except OnnxRuleViolation as error:
        raise ExportMismatch(f"the exported graph breaks a serving rule: {error}") from None
    batch = check_batch(preprocessing)
    with torch.inference_mode():
        expected = module(torch.from_numpy(batch)).float().numpy()
    got = session(data).run(None, {signature.input_name: batch})[0]
    problem = compare_logits(expected, got)
    if problem:
        raise ExportMismatch(f"ONNX Runtime does not reproduce the torch model on real photos: {problem}")
    return data, {"photos": len(batch), "max_logit_difference": float(np.abs(expected - got).max()),
                  "feature_size": feature_size}


def check_onnx_file(data: bytes, labels: Sequence[str], preprocessing: Preprocessing, *,
                    max_bytes: int = MAX_ONNX_BYTES) -> GraphSignature:
    """Everything a brought ONNX classifier must pass before it is published; InvalidModelFile if not."""
    if len(data) > max_bytes:
        raise InvalidModelFile(f"the file has {len(data):,} bytes; the limit is {max_bytes:,}")
    try:
        signature = check_onnx(data)
    except OnnxRuleViolation as error:
        raise InvalidModelFile(str(error)) from None
    crop = preprocessing.crop_size
    for axis, size in zip(("height", "width"), signature.input_shape[2:], strict=True):
        if isinstance(size, int) and size != crop:
            raise InvalidModelFile(f"the input's {axis} is {size} but the preprocessing crops to {crop}; "
                                   f"pass --crop-size {size}")
    width = signature.output_shape[1]
    if isinstance(width, int) and width != len(labels):
        raise InvalidModelFile(f"the output has {width} classes but {len(labels)} labels were given")
    if isinstance(signature.input_shape[0], int):
        raise InvalidModelFile(f"the input's batch dimension is fixed at {signature.input_shape[0]}; export it "
                               "dynamic (torch.onnx.export(..., dynamic_shapes=...): see the README)")
    batch = check_batch(preprocessing)
    try:
        output = session(data).run(None, {signature.input_name: batch})[0]
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        message = " ".join(str(error).split())[:1000]  # ONNX Runtime's, on one line
        raise InvalidModelFile(f"a trial run on {len(batch)} photos at once failed (does a node fix the batch "
                               f"size?): {message}") from None
    if output.shape != (len(batch), len(labels)):
        raise InvalidModelFile(f"a trial run on {len(batch)} photos gave an output of shape {list(output.shape)}; "
                               f"expected [{len(batch)}, {len(labels)}]")
    if not np.isfinite(output).all():
        raise InvalidModelFile("a trial run on real photos gave NaN or infinite scores")
    return signature
