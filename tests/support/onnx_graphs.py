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


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def with_second_input(model: onnx.ModelProto) -> onnx.ModelProto:
    """A classifier that also wants a second tensor (a mask, say) added to its logits."""
    bad = _copy(model)
    classes = bad.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    bad.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", classes]))
    bad.graph.node[-1].output[0] = "unmasked"
    bad.graph.node.append(helper.make_node("Add", ["unmasked", "mask"], ["logits"]))
    return bad


def with_input_type(model: onnx.ModelProto, elem_type: int) -> onnx.ModelProto:
    """``model`` declaring its input as ``elem_type`` (e.g. TensorProto.INT64, uint8 pixels)."""
    bad = _copy(model)
    bad.graph.input[0].type.tensor_type.elem_type = elem_type
    return bad


def with_input_shape(model: onnx.ModelProto, shape: list) -> onnx.ModelProto:
    bad = _copy(model)
    bad.graph.input[0].CopyFrom(helper.make_tensor_value_info("input", TensorProto.FLOAT, shape))
    return bad


def with_output_shape(model: onnx.ModelProto, shape: list) -> onnx.ModelProto:
    bad = _copy(model)
    bad.graph.output[0].CopyFrom(helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape))
    return bad


def with_padding(model: onnx.ModelProto, nbytes: int) -> onnx.ModelProto:
    """``model`` with an unused initializer of ``nbytes`` bytes: a large file that still runs."""
    big = _copy(model)
    big.graph.initializer.append(numpy_helper.from_array(np.zeros(nbytes // 4, np.float32), "padding"))
    return big


def with_local_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` whose last Add is a call to a function the file defines itself."""
    bad = _copy(model)
    function = helper.make_function("tests.local", "AddBias", ["x", "b"], ["y"],
                                    [helper.make_node("Add", ["x", "b"], ["y"])],
                                    [helper.make_opsetid("", OPSET)])
    bad.functions.append(function)
    bad.graph.node[-1].op_type, bad.graph.node[-1].domain = "AddBias", "tests.local"
    return bad


def with_subgraph(model: onnx.ModelProto, external_location: str | None = None) -> onnx.ModelProto:
    """``model`` plus an If node whose else branch holds a constant of zeros added to the logits;
    with ``external_location`` that constant says its bytes live in that file instead."""
    bad = _copy(model)
    classes = bad.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    zeros = np.zeros(classes, np.float32)
    hidden = numpy_helper.from_array(zeros, "hidden")
    if external_location is not None:
        hidden.ClearField("raw_data")
        hidden.data_location = TensorProto.EXTERNAL
        entry = hidden.external_data.add()
        entry.key, entry.value = "location", external_location

    def branch(name: str, tensor) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Constant", [], [f"{name}_out"], value=tensor)], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [classes])])

    bad.graph.initializer.append(numpy_helper.from_array(np.array(True), "condition"))
    bad.graph.node.insert(0, helper.make_node("If", ["condition"], ["extra"],
                                              then_branch=branch("then", numpy_helper.from_array(zeros, "zeros")),
                                              else_branch=branch("else", hidden)))
    bad.graph.node[-1].output[0] = "pre_logits"
    bad.graph.node.append(helper.make_node("Add", ["pre_logits", "extra"], ["logits"]))
    return bad


def _stored_externally(tensor, location: str):
    for field in ("raw_data", "float_data", "int64_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def with_sparse_external_data(model: onnx.ModelProto, where: str, location: str = "/etc/passwd") -> onnx.ModelProto:
    """``model`` plus an unused sparse tensor whose indices (``where="initializer"``) or values
    (``where="constant"``, a Constant node's sparse_value) name an external file."""
    bad = _copy(model)
    values = numpy_helper.from_array(np.ones(2, np.float32), "sparse_values")
    indices = numpy_helper.from_array(np.array([0, 1], np.int64), "sparse_indices")
    if where == "initializer":
        bad.graph.sparse_initializer.append(helper.make_sparse_tensor(values, _stored_externally(indices, location),
                                                                      [3]))
    else:
        sparse = helper.make_sparse_tensor(_stored_externally(values, location), indices, [3])
        bad.graph.node.insert(0, helper.make_node("Constant", [], ["unused"], sparse_value=sparse))
    return bad


def with_inner_batch_of_one(model: onnx.ModelProto) -> onnx.ModelProto:
    """A classifier whose input declares a dynamic batch but whose graph reshapes to a batch of one
    (what a hand-written export with a hard-coded view does): it fails only when run on more."""
    bad = _copy(model)
    flatten = next(node for node in bad.graph.node if node.op_type == "Flatten")
    bad.graph.initializer.append(numpy_helper.from_array(np.array([1, 3], dtype=np.int64), "one_row"))
    flatten.CopyFrom(helper.make_node("Reshape", ["pooled", "one_row"], ["flat"]))
    return bad
