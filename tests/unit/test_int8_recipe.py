"""The int8 recipe's own logic, on tiny graphs: which crops are judged (a rule of the source
alone), the agreement figures, the choice of Convs kept in float, bias correction, and a Relu6
that survives when the Conv after it stays in float."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from imgclassify.publish.export import session
from imgclassify.publish.quantize import RECIPE, _Quantizer, agreement, choose_float_convs, noise_stable
from imgclassify.store.catalog import Preprocessing

PREPROCESSING = Preprocessing(resize=9, crop_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
STEP = 1 / (255 * 0.5)   # one 8-bit step after normalising with std 0.5


def mean_colour_logits(batch: np.ndarray) -> np.ndarray:
    """A two-class model: red minus green, and green minus red, of the mean colour."""
    red, green = batch[:, 0].mean(axis=(1, 2)), batch[:, 1].mean(axis=(1, 2))
    return np.stack([red - green, green - red], axis=1)


def test_a_crop_is_judged_only_where_the_source_keeps_its_answer_under_one_8_bit_step_of_noise():
    batch = np.zeros((3, 3, 8, 8), dtype=np.float32)
    batch[0, 0] = 0.5                          # clearly red
    batch[1, 1] = 0.5                          # clearly green
    batch[2, 0, 0, 0] = 0.01 * STEP            # a tie that a fraction of a step decides

    stable = noise_stable(mean_colour_logits, batch, PREPROCESSING, draws=4, seed=0)

    assert stable.tolist() == [True, True, False]
    assert noise_stable(mean_colour_logits, batch, PREPROCESSING, draws=4, seed=0).tolist() == stable.tolist()


def test_agreement_judges_top1_on_the_judged_crops_and_reports_every_other_figure_on_all():
    source = np.array([[0.9, 0.1, 0, 0, 0, 0], [0.6, 0.4, 0, 0, 0, 0], [0.2, 0.8, 0, 0, 0, 0],
                       [0.5, 0.5, 0, 0, 0, 0]], dtype=np.float32)
    twin = np.array([[0.8, 0.2, 0, 0, 0, 0], [0.3, 0.7, 0, 0, 0, 0], [0.1, 0.9, 0, 0, 0, 0],
                     [0.45, 0.55, 0, 0, 0, 0]], dtype=np.float32)

    measured = agreement(source, twin, judged=np.array([True, False, True, False]))

    assert measured["held_out_crops"] == 4 and measured["judged_crops"] == 2
    assert measured["top1_agreement"] == 1.0          # the two judged crops agree
    assert measured["top1_agreement_all"] == 0.5      # crops 1 and 3 swap their top-1
    assert measured["max_probability_difference"] == pytest.approx(0.3)
    assert agreement(source, twin)["top1_agreement"] == 0.5  # no rule: every crop is judged


def test_the_fewest_convs_that_reach_the_target_stay_in_float():
    ranked = ["a", "b", "c", "d"]
    reached = {0: 0.95, 1: 0.97, 2: 0.985, 3: 0.99, 4: 0.99}

    chosen, tried = choose_float_convs(ranked, lambda convs: reached[len(convs)], target=0.98, most=4)

    assert chosen == ["a", "b"] and tried == [(0, 0.95), (1, 0.97), (2, 0.985)]
    assert choose_float_convs(ranked, lambda convs: 0.99, target=0.98, most=4)[0] == []


def test_when_no_count_reaches_the_target_the_best_one_is_kept_fewest_on_a_tie():
    reached = {0: 0.90, 1: 0.93, 2: 0.95, 3: 0.95}

    chosen, tried = choose_float_convs(["a", "b", "c"], lambda convs: reached[len(convs)], target=0.98, most=3)

    assert chosen == ["a", "b"] and len(tried) == 4


def test_the_search_stops_once_two_more_convs_in_float_bring_no_gain():
    reached = {0: 0.90, 1: 0.94, 2: 0.93, 3: 0.94, 4: 0.99}

    chosen, tried = choose_float_convs(list("abcd"), lambda convs: reached[len(convs)], target=0.98, most=4)

    assert chosen == ["a"] and [count for count, _ in tried] == [0, 1, 2, 3]


def tiny_convnet() -> bytes:
    """input -> Conv 3x3 (3->8) -> Clip 0..6 -> depthwise 3x3 -> Clip -> Conv 1x1 (8->4) -> mean -> logits."""
    rng = np.random.default_rng(0)
    weights = {"stem.weight": rng.normal(0, 0.4, (8, 3, 3, 3)), "stem.bias": rng.normal(0, 0.1, 8),
               "dw.weight": rng.normal(0, 0.6, (8, 1, 3, 3)), "dw.bias": rng.normal(0, 0.1, 8),
               "pw.weight": rng.normal(0, 0.4, (4, 8, 1, 1)), "pw.bias": rng.normal(0, 0.1, 4)}
    initializers = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()]
    initializers += [numpy_helper.from_array(np.array(value, dtype=np.float32), name)
                     for name, value in (("zero", 0.0), ("six", 6.0))]
    initializers.append(numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"))
    nodes = [
        helper.make_node("Conv", ["input", "stem.weight", "stem.bias"], ["stem"], name="stem", pads=[1] * 4),
        helper.make_node("Clip", ["stem", "zero", "six"], ["stem_relu"], name="stem_relu"),
        helper.make_node("Conv", ["stem_relu", "dw.weight", "dw.bias"], ["dw"], name="dw", pads=[1] * 4, group=8),
        helper.make_node("Clip", ["dw", "zero", "six"], ["dw_relu"], name="dw_relu"),
        helper.make_node("Conv", ["dw_relu", "pw.weight", "pw.bias"], ["pw"], name="pw"),
        helper.make_node("ReduceMean", ["pw", "axes"], ["pooled"], name="pool", keepdims=0),
        helper.make_node("Identity", ["pooled"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 4])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString()


def crops(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, (count, 3, 8, 8)) * rng.uniform(0.2, 1, (count, 3, 1, 1)) + 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dataclasses import replace

    data = tiny_convnet()
    recipe = replace(RECIPE, calibrate_method="minmax", bias_correction=False)
    plain = _Quantizer(data, crops(64, 1), recipe, str(tmp_path_factory.mktemp("plain")))
    corrected = _Quantizer(data, crops(64, 1), replace(recipe, bias_correction=True),
                           str(tmp_path_factory.mktemp("corrected")))
    return data, plain, corrected


def outputs_of(graph: bytes, batch: np.ndarray, name: str) -> np.ndarray:
    model = onnx.load_from_string(graph)
    if name not in {output.name for output in model.graph.output}:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    run = session(model.SerializeToString(), threads=1)
    index = [output.name for output in run.get_outputs()].index(name)
    return run.run(None, {"input": batch})[index]


def test_bias_correction_takes_the_mean_shift_of_rounded_weights_out_of_each_convs_output(tiny):
    data, plain, corrected = tiny
    batch = crops(256, 2)
    reference = outputs_of(data, batch, "pw")
    shift = {name: np.abs((outputs_of(quantizer.quantize().SerializeToString(), batch, "pw") - reference)
                          .mean(axis=(0, 2, 3))).mean()
             for name, quantizer in (("plain", plain), ("corrected", corrected))}

    assert shift["corrected"] < shift["plain"] / 2


def test_convs_named_to_stay_float_keep_their_fp32_weights_and_the_rest_are_quantized(tiny):
    _, plain, _ = tiny
    graph = plain.quantize(["dw"]).graph
    convs = {node.name: node for node in graph.node if node.op_type == "Conv"}
    initializers = {tensor.name for tensor in graph.initializer}

    assert convs["dw"].input[1] == "dw.weight" and "dw.weight" in initializers
    assert convs["stem"].input[1] != "stem.weight" and convs["pw"].input[1] != "pw.weight"


def test_a_relu6_stays_in_the_graph_where_the_conv_after_it_stays_in_float(tiny):
    data, plain, _ = tiny
    model = plain.quantize(["dw"])
    batch = crops(64, 4)

    assert sum(node.op_type == "Clip" for node in model.graph.node) == 2
    source, twin = outputs_of(data, batch, "dw"), outputs_of(model.SerializeToString(), batch, "dw")
    assert np.abs(twin - source).max() < 0.05 * np.abs(source).max()
