"""What an ONNX file must be before it is published or served.

The same rules run at publish time (with messages for the person publishing) and again on
every load by the serving engine, because a bucket is not a trusted channel: a graph that
names external data could make the runtime read any file on the server, and an operator
from a vendor domain would tie the model to one runtime build.

Rules: a well-formed ModelProto; operators from the standard domains only; no tensor in
any graph (subgraphs included) stored as external data; exactly one float32 input of rank
4 with 3 channels (NCHW); a first output of rank 2 (N, classes), and optionally a second one
named :data:`FEATURE_OUTPUT` of rank 2 (N, width): the penultimate features, the input of the
final linear layer, which ``:embed`` serves and trained heads sit on.

The functions read a model with :data:`ONNX_SUBSET`, the few ONNX message fields these rules
need, declared here with their numbers from ``onnx.proto`` (a test compares them with the
``onnx`` package's own). Protobuf skips every other field. The ``onnx`` package itself (31 MB
installed, 50 ms to import) is needed only where models are published.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

STANDARD_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
# The name of a graph's optional second output: each image's penultimate features.
FEATURE_OUTPUT = "features"
_FLOAT = 1  # onnx.TensorProto.FLOAT
_EXTERNAL = 1  # onnx.TensorProto.EXTERNAL
# onnx.TensorProto.DataType -> (numpy's name for it, bytes per element) for FLOAT, UINT8, INT8,
# UINT16, INT16, INT32, INT64, BOOL, FLOAT16, DOUBLE, UINT32, UINT64 and BFLOAT16 (which numpy
# has no type for); anything else counts as 4 bytes.
_TENSOR_TYPES = {1: ("float32", 4), 2: ("uint8", 1), 3: ("int8", 1), 4: ("uint16", 2), 5: ("int16", 2),
                 6: ("int32", 4), 7: ("int64", 8), 9: ("bool", 1), 10: ("float16", 2), 11: ("float64", 8),
                 12: ("uint32", 4), 13: ("uint64", 8), 16: (None, 2)}
_ITEM_BYTES = {code: size for code, (_, size) in _TENSOR_TYPES.items()}
_EIGHT_BIT = frozenset({2, 3})  # UINT8, INT8: a quantized graph's weights

# message -> (field, number, type); a type starting with "*" is repeated, a capitalised one a message.
ONNX_SUBSET: dict[str, list[tuple[str, int, str]]] = {
    "ModelProto": [("producer_name", 2, "string"), ("producer_version", 3, "string"), ("graph", 7, "GraphProto"),
                   ("opset_import", 8, "*OperatorSetIdProto"), ("functions", 25, "*FunctionProto")],
    "OperatorSetIdProto": [("domain", 1, "string"), ("version", 2, "int64")],
    "FunctionProto": [],
    "GraphProto": [("node", 1, "*NodeProto"), ("initializer", 5, "*TensorProto"), ("input", 11, "*ValueInfoProto"),
                   ("output", 12, "*ValueInfoProto"), ("sparse_initializer", 15, "*SparseTensorProto")],
    "NodeProto": [("op_type", 4, "string"), ("attribute", 5, "*AttributeProto"), ("domain", 7, "string")],
    "AttributeProto": [("t", 5, "TensorProto"), ("g", 6, "GraphProto"), ("tensors", 10, "*TensorProto"),
                       ("graphs", 11, "*GraphProto"), ("sparse_tensor", 22, "SparseTensorProto"),
                       ("sparse_tensors", 23, "*SparseTensorProto")],
    "TensorProto": [("dims", 1, "*int64"), ("data_type", 2, "int32"), ("name", 8, "string"),
                    ("external_data", 13, "*StringStringEntryProto"), ("data_location", 14, "int32")],
    "SparseTensorProto": [("values", 1, "TensorProto"), ("indices", 2, "TensorProto")],
    "StringStringEntryProto": [("key", 1, "string"), ("value", 2, "string")],
    "ValueInfoProto": [("name", 1, "string"), ("type", 2, "TypeProto")],
    "TypeProto": [("tensor_type", 1, "TypeProto.Tensor")],
    "TypeProto.Tensor": [("elem_type", 1, "int32"), ("shape", 2, "TensorShapeProto")],
    "TensorShapeProto": [("dim", 1, "*TensorShapeProto.Dimension")],
    "TensorShapeProto.Dimension": [("dim_value", 1, "int64"), ("dim_param", 2, "string")],
}


@functools.lru_cache(maxsize=1)
def onnx_model_class():
    """The ModelProto class of :data:`ONNX_SUBSET`, in a descriptor pool of its own."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    scalars = {"string": field.TYPE_STRING, "int64": field.TYPE_INT64, "int32": field.TYPE_INT32}
    file = descriptor_pb2.FileDescriptorProto(name="imgclassify_onnx_subset.proto", package="imgclassify_onnx",
                                              syntax="proto2")
    for message, fields in ONNX_SUBSET.items():
        declared = file.message_type.add(name=message.replace(".", "_"))
        for name, number, kind in fields:
            repeated, kind = kind.startswith("*"), kind.lstrip("*")
            entry = declared.field.add(name=name, number=number,
                                       label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL)
            if kind in scalars:
                entry.type = scalars[kind]
            else:
                entry.type, entry.type_name = field.TYPE_MESSAGE, ".imgclassify_onnx." + kind.replace(".", "_")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("imgclassify_onnx.ModelProto"))


class OnnxRuleViolation(ValueError):
    """The file breaks one of the rules above; the message says which and where."""


@dataclass(frozen=True)
class GraphSignature:
    """The model's one input and one output, as declared in the graph."""

    input_name: str
    output_name: str
    input_shape: tuple[int | str, ...]     # a number where fixed, the symbol (or "?") where not
    output_shape: tuple[int | str, ...]
    initializer_bytes: int                  # what the weights occupy in memory once loaded
    producer: str
    feature_shape: tuple[int | str, ...] | None = None  # the FEATURE_OUTPUT's shape, if the graph has one
    eight_bit_weights: bool = False         # some initializer is 8-bit (a quantized graph)

    @property
    def feature_size(self) -> int | None:
        """The width of the feature output (None without one, or where it is not fixed)."""
        width = self.feature_shape[1] if self.feature_shape else None
        return width if isinstance(width, int) else None


def _dims(value_info) -> tuple[int | str, ...]:
    return tuple(dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?")
                 for dim in value_info.type.tensor_type.shape.dim)


def _graphs(graph) -> Iterator:
    """``graph`` and every subgraph held by a node attribute (If, Loop, Scan bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graphs(subgraph)


def _sparse_parts(sparse_tensors) -> Iterator:
    for sparse in sparse_tensors:
        yield sparse.values
        yield sparse.indices  # either part can name external data


def _tensors(graph) -> Iterator:
    yield from graph.initializer
    yield from _sparse_parts(graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):  # e.g. Constant's sparse_value
                yield from _sparse_parts([attribute.sparse_tensor])
            yield from _sparse_parts(attribute.sparse_tensors)


def _tensor_bytes(tensor) -> int:
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * _ITEM_BYTES.get(tensor.data_type, 4)


def check_onnx(data: bytes) -> GraphSignature:
    """Parse ``data`` (an ONNX ModelProto) and enforce the rules; return its signature.

    Raises :class:`OnnxRuleViolation` naming the first rule broken.
    """
    from google.protobuf.message import DecodeError

    model = onnx_model_class()()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise OnnxRuleViolation(f"not an ONNX model: {error}") from None
    if not model.HasField("graph") or not model.opset_import:
        raise OnnxRuleViolation("not an ONNX model: no graph or no opset")
    foreign = sorted({opset.domain for opset in model.opset_import} - STANDARD_DOMAINS)
    if model.functions:
        raise OnnxRuleViolation(f"the model defines {len(model.functions)} local functions; "
                                "only standard ONNX operators are served (inline them when exporting)")
    initializer_bytes, eight_bit = 0, False
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS:
                foreign.append(node.domain)
        for tensor in _tensors(graph):
            if tensor.data_location == _EXTERNAL or tensor.external_data:
                raise OnnxRuleViolation(
                    f"tensor {tensor.name!r} refers to external data; a served model must hold all of its "
                    "tensors (save it with onnx.save_model(..., save_as_external_data=False))")
            if graph is model.graph:
                initializer_bytes += _tensor_bytes(tensor)
                eight_bit |= tensor.data_type in _EIGHT_BIT
    if foreign:
        raise OnnxRuleViolation(f"operators from non-standard domains {sorted(set(foreign))}; only the standard "
                                "ONNX domains ('', ai.onnx, ai.onnx.ml) are served")
    initializer_names = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializer_names]
    outputs = list(model.graph.output)
    features = outputs[1] if len(outputs) == 2 and outputs[1].name == FEATURE_OUTPUT else None
    if len(inputs) != 1 or len(outputs) != (2 if features is not None else 1):
        raise OnnxRuleViolation(f"an image classifier has one input and one output (and optionally a second "
                                f"output named {FEATURE_OUTPUT!r}); this graph has {len(inputs)} inputs and "
                                f"{len(outputs)} outputs {[output.name for output in outputs]}")
    (graph_input,), graph_output = inputs, outputs[0]
    input_shape, output_shape = _dims(graph_input), _dims(graph_output)
    if graph_input.type.tensor_type.elem_type != _FLOAT:
        raise OnnxRuleViolation(f"input {graph_input.name!r} must be float32")
    if len(input_shape) != 4 or input_shape[1] != 3:
        raise OnnxRuleViolation(f"input {graph_input.name!r} must be NCHW with 3 channels (N, 3, H, W); "
                                f"found {list(input_shape)}")
    if len(output_shape) != 2:
        raise OnnxRuleViolation(f"output {graph_output.name!r} must be (N, classes); found {list(output_shape)}")
    feature_shape = _dims(features) if features is not None else None
    if feature_shape is not None and len(feature_shape) != 2:
        raise OnnxRuleViolation(f"output {FEATURE_OUTPUT!r} must be (N, width); found {list(feature_shape)}")
    return GraphSignature(graph_input.name, graph_output.name, input_shape, output_shape, initializer_bytes,
                          f"{model.producer_name} {model.producer_version}".strip(), feature_shape, eight_bit)


def external_tensors(graph: bytes, weights) -> list[tuple[str, object]] | None:
    """The initializers a graph ONNX Runtime saved keeps in its external ``weights`` (a numpy
    uint8 array): ``(name, array)`` pairs viewing ``weights`` without a copy. None if one of them
    is 8-bit or of a type numpy does not hold (the caller then gives up sharing them).

    Only for graphs this process's ONNX Runtime wrote (the runtime's optimised form of a model
    that passed :func:`check_onnx`): offsets and lengths are checked against ``weights``, the
    rules above are not.
    """
    model = onnx_model_class()()
    model.ParseFromString(graph)
    found = []
    for tensor in model.graph.initializer:
        if tensor.data_location != _EXTERNAL:
            continue
        numpy_type = _TENSOR_TYPES.get(tensor.data_type, (None, 0))[0]
        if tensor.data_type in _EIGHT_BIT or numpy_type is None:
            return None
        where = {entry.key: entry.value for entry in tensor.external_data}
        offset, length = int(where.get("offset", 0)), int(where["length"])
        if offset + length > len(weights) or length != _tensor_bytes(tensor):
            raise ValueError(f"tensor {tensor.name!r} lies outside the saved weights")
        array = weights[offset:offset + length].view(numpy_type)
        found.append((tensor.name, array.reshape(tuple(tensor.dims))))
    return found
