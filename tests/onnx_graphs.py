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


def with_external_data(model: onnx.ModelProto, location: str = "/etc/passwd") -> onnx.ModelProto:
    """``model`` whose weight tensor says its bytes live in the file ``location``."""
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    weight = next(tensor for tensor in bad.graph.initializer if tensor.name == "weight")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "36")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return bad


def with_foreign_node(model: onnx.ModelProto, domain: str = "com.microsoft",
                      op_type: str = "FusedGemm") -> onnx.ModelProto:
    """``model`` with one more operator, from ``domain``, on its output path."""
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node[-1].output[0] = "pre_logits"
    bad.graph.node.append(helper.make_node(op_type, ["pre_logits"], ["logits"], domain=domain))
    bad.opset_import.append(helper.make_opsetid(domain, 1))
    return bad
