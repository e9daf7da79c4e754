"""Small ONNX classifiers built with onnx.helper, good and deliberately bad, for the engine tests.

The good one is a real image classifier in miniature: global average pool over each channel,
then a linear layer, so its scores follow the image's mean colour.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18


def colour_classifier(classes: int = 3, *, batch: int | str = "N", size: int | str = "H", seed: int = 0,
                      weight: np.ndarray | None = None) -> onnx.ModelProto:
    """(N, 3, H, W) float32 -> (N, classes) logits = mean colour @ weight + bias."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(3, classes)).astype(np.float32) if weight is None else weight.astype(np.float32)
    bias = rng.normal(size=(classes,)).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "weight"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "colour_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(bias, "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def serialized(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString()
