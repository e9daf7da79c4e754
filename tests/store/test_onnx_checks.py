"""What an ONNX file must be to be published or served: the rules of imgclassify.runtime.onnx_rules, and the
publisher's trial run on real photos (imgclassify.publish.export.check_onnx_file)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto

from imgclassify.publish.errors import InvalidModelFile
from imgclassify.publish.export import CHECK_PHOTOS, check_batch, check_onnx_file
from imgclassify.runtime.onnx_rules import GraphSignature, OnnxRuleViolation, check_onnx
from imgclassify.store.catalog import Preprocessing
from tests.support.onnx_graphs import (
    colour_classifier,
    serialized,
    with_external_data,
    with_foreign_node,
    with_inner_batch_of_one,
    with_input_shape,
    with_input_type,
    with_local_function,
    with_output_shape,
    with_padding,
    with_second_input,
    with_sparse_external_data,
    with_subgraph,
)
from tests.support.photos import encode, real_photo

LABELS = ("red", "green", "blue")
SMALL = Preprocessing(resize=40, crop_size=32)


# --- the rules, at publish time and at every load ---------------------------------------------

def test_a_plain_classifier_passes_and_its_signature_and_weight_bytes_are_read():
    signature = check_onnx(serialized(colour_classifier(3)))

    assert signature == GraphSignature("input", "logits", ("N", 3, "H", "H"), ("N", 3),
                                       initializer_bytes=(3 * 3 + 3) * 4, producer="tests")


def test_a_graph_with_an_if_subgraph_holding_its_own_tensors_passes():
    # The control for the subgraph refusal below: the same graph, its tensor stored inline.
    check_onnx(serialized(with_subgraph(colour_classifier(3))))


@pytest.mark.parametrize("data", [b"", b"not an onnx model at all", encode(real_photo("chelsea")), b"\x08" * 64],
                         ids=["empty", "text", "jpeg", "varints"])
def test_bytes_that_are_not_an_onnx_model_are_refused(data):
    with pytest.raises(OnnxRuleViolation, match="not an ONNX model"):
        check_onnx(data)


@pytest.mark.parametrize("bad, rule", [
    (with_external_data(colour_classifier(3), "/etc/passwd"), "tensor 'weight' refers to external data"),
    (with_external_data(colour_classifier(3), "../../secrets.bin"), "tensor 'weight' refers to external data"),
    (with_subgraph(colour_classifier(3), "/etc/shadow"), "tensor 'hidden' refers to external data"),
    (with_sparse_external_data(colour_classifier(3), "initializer"), "tensor 'sparse_indices' refers to external"),
    (with_sparse_external_data(colour_classifier(3), "constant"), "tensor 'sparse_values' refers to external"),
    (with_foreign_node(colour_classifier(3), "com.microsoft"), "non-standard domains ['com.microsoft']"),
    (with_foreign_node(colour_classifier(3), "evil.custom", "Exfiltrate"), "non-standard domains ['evil.custom']"),
    (with_local_function(colour_classifier(3)), "defines 1 local functions"),
    (with_second_input(colour_classifier(3)), "2 inputs and 1 outputs"),
    (with_input_type(colour_classifier(3), TensorProto.INT64), "input 'input' must be float32"),
    (with_input_type(colour_classifier(3), TensorProto.UINT8), "input 'input' must be float32"),
    (with_input_shape(colour_classifier(3), ["N", 3, "H"]), "must be NCHW with 3 channels"),
    (with_input_shape(colour_classifier(3), ["N", "H", "W", 3]), "must be NCHW with 3 channels"),
    (with_input_shape(colour_classifier(3), ["N", 1, "H", "W"]), "must be NCHW with 3 channels"),
    (with_output_shape(colour_classifier(3), ["N", 3, 1]), "output 'logits' must be (N, classes)"),
], ids=["external-etc-passwd", "external-relative", "external-in-subgraph", "external-sparse-initializer",
        "external-sparse-constant", "vendor-domain", "custom-domain",
        "local-function", "two-inputs", "int64-input", "uint8-input", "3d-input", "nhwc-input", "one-channel",
        "3d-output"])
def test_a_graph_breaking_a_rule_is_refused_naming_the_rule(bad, rule):
    with pytest.raises(OnnxRuleViolation) as caught:
        check_onnx(serialized(bad))

    assert rule in str(caught.value)


def test_a_foreign_opset_declared_but_unused_is_refused():
    model = colour_classifier(3)
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))

    with pytest.raises(OnnxRuleViolation, match="com.microsoft"):
        check_onnx(serialized(model))


def test_weight_bytes_count_every_initializer_of_the_main_graph():
    signature = check_onnx(serialized(with_padding(colour_classifier(3), 2**20)))

    assert signature.initializer_bytes == 2**20 + (3 * 3 + 3) * 4


# --- a brought file: the publisher's checks and trial run -------------------------------------

def test_a_good_file_passes_the_trial_run_on_every_check_photo():
    signature = check_onnx_file(serialized(colour_classifier(3)), LABELS, SMALL)

    assert signature.output_shape == ("N", 3)
    assert len(check_batch(SMALL)) == len(CHECK_PHOTOS) == 4


def test_check_photos_are_real_preprocessed_photos():
    batch = check_batch(SMALL)

    assert batch.shape == (4, 3, 32, 32) and batch.dtype == np.float32
    assert len({row.tobytes() for row in batch}) == 4
    assert batch.std() > 0.3  # photos, not blank frames


@pytest.mark.parametrize("bad, message", [
    (colour_classifier(4), "the output has 4 classes but 3 labels were given"),
    (colour_classifier(3, batch=1), "the input's batch dimension is fixed at 1; export it dynamic"),
    (with_inner_batch_of_one(colour_classifier(3)), "Input shape:{4,3,1,1}, requested shape:{1,3}"),
    (colour_classifier(3, size=64), "the input's height is 64 but the preprocessing crops to 32; pass --crop-size 64"),
    (colour_classifier(3, weight=np.full((3, 3), np.nan)), "a trial run on real photos gave NaN or infinite scores"),
    (colour_classifier(3, weight=np.full((3, 3), np.inf)), "a trial run on real photos gave NaN or infinite scores"),
    (with_foreign_node(colour_classifier(3)), "non-standard domains"),
], ids=["width-not-label-count", "fixed-batch-1", "inner-batch-1", "fixed-size", "nan", "inf", "vendor-domain"])
def test_a_bad_file_is_refused_with_a_clear_message(bad, message):
    with pytest.raises(InvalidModelFile) as caught:
        check_onnx_file(serialized(bad), LABELS, SMALL)

    assert message in caught.value.message
    assert (caught.value.status, caught.value.code) == (400, "INVALID_MODEL_FILE")


def test_an_output_of_symbolic_width_is_checked_by_the_trial_run():
    bad = with_output_shape(colour_classifier(4), ["N", "classes"])

    with pytest.raises(InvalidModelFile, match=r"gave an output of shape \[4, 4\]; expected \[4, 3\]"):
        check_onnx_file(serialized(bad), LABELS, SMALL)


def test_a_fixed_batch_of_one_really_cannot_run_four_photos():
    # The control for the refusal above: ONNX Runtime itself rejects the batch of four.
    session = onnxruntime.InferenceSession(serialized(colour_classifier(3, batch=1)))

    with pytest.raises(Exception, match="Got invalid dimensions"):
        session.run(None, {"input": check_batch(SMALL)})


def test_a_file_over_the_size_limit_is_refused_before_it_is_parsed():
    data = serialized(with_padding(colour_classifier(3), 2**20))

    with pytest.raises(InvalidModelFile, match=f"the file has {len(data):,} bytes; the limit is {2**20:,}"):
        check_onnx_file(data, LABELS, SMALL, max_bytes=2**20)
    check_onnx_file(data, LABELS, SMALL, max_bytes=len(data))
