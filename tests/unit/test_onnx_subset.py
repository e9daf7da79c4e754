"""The functions read ONNX files with a subset of ONNX's own schema; it must be ONNX's, field for field."""

import onnx
import pytest
from google.protobuf.descriptor import FieldDescriptor

from imgclassify.runtime.onnx_rules import ONNX_SUBSET, check_onnx

# How a field of onnx.proto reads in ONNX_SUBSET's notation (enums are read as their int32 values).
_KINDS = {FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_INT64: "int64",
          FieldDescriptor.TYPE_INT32: "int32", FieldDescriptor.TYPE_ENUM: "int32"}


def onnx_message(name: str):
    message = onnx
    for part in name.split("."):
        message = getattr(message, part)
    return message.DESCRIPTOR


@pytest.mark.parametrize("message", sorted(ONNX_SUBSET))
def test_every_field_of_the_subset_has_onnx_protos_number_and_type(message):
    fields = onnx_message(message).fields_by_name
    for name, number, kind in ONNX_SUBSET[message]:
        field = fields[name]
        repeated, kind = kind.startswith("*"), kind.lstrip("*")
        expected = (field.message_type.full_name.removeprefix("onnx.") if field.message_type
                    else _KINDS[field.type])
        assert (field.number, expected, field.is_repeated) == (number, kind, repeated), f"{message}.{name}"


def test_a_model_read_through_the_subset_gives_what_the_onnx_package_reads():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Flatten", ["image"], ["flat"]),
         onnx.helper.make_node("MatMul", ["flat", "weights"], ["logits"])],
        "tiny", [onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, 2, 2])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 5])],
        [onnx.numpy_helper.from_array(__import__("numpy").zeros((12, 5), "float32"), "weights")])
    model = onnx.helper.make_model(graph, producer_name="test", opset_imports=[onnx.helper.make_opsetid("", 17)])

    signature = check_onnx(model.SerializeToString())

    assert signature.input_shape == ("batch", 3, 2, 2) and signature.output_shape == ("batch", 5)
    assert signature.initializer_bytes == 12 * 5 * 4 and signature.producer == "test"
