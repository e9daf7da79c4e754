"""Graph surgery on ONNX classifiers: expose the penultimate features, append a trained head.

A classifier's penultimate features are the input of its final linear layer (a ``Gemm``, or
``MatMul`` then ``Add``), reached from the graph's output back through operators that only
rescale scores (``Softmax``, ``Identity``, ...). :func:`with_feature_output` adds them as the
graph's second output, :data:`~imgclassify.runtime.onnx_rules.FEATURE_OUTPUT`, which is what
``:embed`` serves; :func:`append_head` replaces the final layer with a trained one, so one
graph runs the backbone and the head. Neither changes a single computed value of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imgclassify.runtime.onnx_rules import FEATURE_OUTPUT

# Operators between the final linear layer and the output that keep one value per class.
_SCORE_ONLY = {"Softmax", "LogSoftmax", "Identity", "Sigmoid"}
HEAD_WEIGHT, HEAD_BIAS = "head.weight", "head.bias"


@dataclass(frozen=True)
class FinalLayer:
    """Where a graph's final linear layer is: its input, its width, and the nodes from it to the output."""

    features: str         # the tensor the final layer reads: the penultimate features
    width: int
    nodes: tuple          # the final layer's nodes and what follows it up to the output


def _initializer_shape(graph, name: str) -> tuple[int, ...] | None:
    for tensor in graph.initializer:
        if tensor.name == name:
            return tuple(tensor.dims)
    return None


def find_final_layer(graph) -> FinalLayer | None:
    """The final linear layer feeding the graph's first output, or None if it ends otherwise."""
    producers = {output: node for node in graph.node for output in node.output}
    name, path = graph.output[0].name, []
    while (node := producers.get(name)) is not None:
        path.append(node)
        if node.op_type in _SCORE_ONLY and node.input:
            name = node.input[0]
            continue
        if node.op_type == "Gemm":
            shape = _initializer_shape(graph, node.input[1])
            trans_b = next((attribute.i for attribute in node.attribute if attribute.name == "transB"), 0)
            if shape is None or len(shape) != 2:
                return None
            return FinalLayer(node.input[0], int(shape[1] if trans_b else shape[0]), tuple(path))
        if node.op_type == "Add":
            matmul = next((producers[i] for i in node.input if i in producers and producers[i].op_type == "MatMul"),
                          None)
            shape = _initializer_shape(graph, matmul.input[1]) if matmul is not None else None
            if shape is None or len(shape) != 2:
                return None
            return FinalLayer(matmul.input[0], int(shape[0]), (*path, matmul))
        return None
    return None


def _batch_dim(graph):
    return graph.input[0].type.tensor_type.shape.dim[0]


def _add_feature_output(model, final: FinalLayer) -> None:
    import onnx

    graph = model.graph
    graph.node.append(onnx.helper.make_node("Identity", [final.features], [FEATURE_OUTPUT],
                                            name="imgclassify_features"))
    output = onnx.helper.make_tensor_value_info(FEATURE_OUTPUT, onnx.TensorProto.FLOAT, [None, final.width])
    output.type.tensor_type.shape.dim[0].CopyFrom(_batch_dim(graph))
    graph.output.append(output)


def with_feature_output(data: bytes) -> tuple[bytes, int | None]:
    """``data`` with the penultimate features as a second output, and their width.

    A graph that has the output already is returned as it is; one whose final layer is not
    found (or that names a tensor ``features`` already) is returned unchanged with None.
    """
    import onnx

    model = onnx.load_from_string(data)
    graph = model.graph
    names = [output.name for output in graph.output]
    if FEATURE_OUTPUT in names:
        dims = graph.output[names.index(FEATURE_OUTPUT)].type.tensor_type.shape.dim
        return data, (dims[1].dim_value or None) if len(dims) == 2 else None
    final = find_final_layer(graph)
    taken = {name for node in graph.node for name in node.output} | {tensor.name for tensor in graph.initializer}
    if final is None or len(graph.output) != 1 or FEATURE_OUTPUT in taken:
        return data, None
    _add_feature_output(model, final)
    return model.SerializeToString(), final.width


def append_head(data: bytes, weight: np.ndarray, bias: np.ndarray) -> bytes:
    """The backbone graph ``data`` with its final layer replaced by ``features @ weight.T + bias``.

    The result has two outputs, the new ``(N, classes)`` logits (under the old output's name)
    and the backbone's ``(N, width)`` features, and a dynamic batch dimension like the backbone.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(data)
    graph = model.graph
    final = find_final_layer(graph)
    if final is None:
        raise ValueError("the backbone's graph does not end in a linear layer a head can replace")
    if final.width != weight.shape[1]:
        raise ValueError(f"the head reads {weight.shape[1]} features; the backbone gives {final.width}")
    scores_name = graph.output[0].name
    removed = {id(node) for node in final.nodes}
    kept = [node for node in graph.node if id(node) not in removed and FEATURE_OUTPUT not in node.output]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in graph.node for name in node.input}
    kept_initializers = [tensor for tensor in graph.initializer if tensor.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept_initializers)
    graph.initializer.extend([numpy_helper.from_array(weight.astype(np.float32), HEAD_WEIGHT),
                              numpy_helper.from_array(bias.astype(np.float32), HEAD_BIAS)])
    graph.node.append(onnx.helper.make_node("Gemm", [final.features, HEAD_WEIGHT, HEAD_BIAS], [scores_name],
                                            name="imgclassify_head", transB=1))
    scores = onnx.helper.make_tensor_value_info(scores_name, onnx.TensorProto.FLOAT, [None, weight.shape[0]])
    scores.type.tensor_type.shape.dim[0].CopyFrom(_batch_dim(graph))
    del graph.output[:]
    graph.output.append(scores)
    _add_feature_output(model, final)
    del graph.value_info[:]  # shapes inferred for the old head no longer hold; the runtime infers them again
    onnx.checker.check_model(model)
    return model.SerializeToString()
