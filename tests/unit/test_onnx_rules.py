"""What the engine reads of the graphs ONNX Runtime saves (their external weights) and of a
served graph's weights (whether they are 8-bit)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

from imgclassify.runtime.onnx_rules import check_onnx, external_tensors
from tests.support.onnx_graphs import colour_classifier, serialized


def _saved_with_external(tensors: dict[str, np.ndarray]) -> tuple[bytes, np.ndarray]:
    """A graph whose initializers live in one weights blob, as ONNX Runtime saves an optimised graph."""
    graph = colour_classifier(3)
    del graph.graph.initializer[:]
    blob = b""
    for name, array in tensors.items():
        tensor = numpy_helper.from_array(array, name)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "weights.bin"), ("offset", str(len(blob))), ("length", str(array.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        graph.graph.initializer.append(tensor)
        blob += array.tobytes()
    return graph.SerializeToString(), np.frombuffer(blob, dtype=np.uint8)


def test_external_tensors_are_views_of_the_weights_blob_with_their_shape_and_type():
    weight, bias = np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(4, dtype=np.int64)
    graph, blob = _saved_with_external({"weight": weight, "bias": bias})

    found = dict(external_tensors(graph, blob))

    assert np.array_equal(found["weight"], weight) and found["weight"].dtype == np.float32
    assert np.array_equal(found["bias"], bias) and found["bias"].dtype == np.int64
    assert np.shares_memory(found["weight"], blob)


def test_eight_bit_external_tensors_are_not_shared():
    graph, blob = _saved_with_external({"weight": np.ones((3, 4), np.float32), "q": np.ones(8, np.int8)})

    assert external_tensors(graph, blob) is None


def test_an_external_tensor_past_the_end_of_the_weights_is_refused():
    graph, blob = _saved_with_external({"weight": np.ones((3, 4), np.float32)})

    with pytest.raises(ValueError, match="outside the saved weights"):
        external_tensors(graph, blob[:40])


def test_the_signature_says_whether_a_graph_has_eight_bit_weights():
    graph = colour_classifier(3)
    assert check_onnx(serialized(graph)).eight_bit_weights is False
    graph.graph.initializer.append(numpy_helper.from_array(np.ones(4, np.int8), "unused_q"))

    assert check_onnx(serialized(graph)).eight_bit_weights is True
