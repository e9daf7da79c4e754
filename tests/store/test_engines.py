"""Engines: which one serves a model, their thread settings, what they refuse and what they count."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from imgclassify.errors import EngineUnavailable, IntegrityError
from imgclassify.inflight import InFlight
from imgclassify.publish.catalog_writes import publish
from imgclassify.publish.sources import serialize_weights
from imgclassify.runtime.engines import EngineOptions, OnnxRuntimeEngine, TorchEngine, engine_for
from imgclassify.runtime.models import load_model
from imgclassify.runtime.registry import ModelRegistry
from imgclassify.runtime.scores import scores
from imgclassify.settings import Settings
from imgclassify.store.catalog import Architecture, ArtifactRef, Manifest, Preprocessing, onnx_object, read_manifest
from imgclassify.store.objects import GcsStore, LocalStore
from tests.support.onnx_graphs import colour_classifier, serialized, with_subgraph

LABELS = ("red", "green", "blue")


def manifest_with(*kinds: str, name: str = "tiny", output: str = "logits") -> Manifest:
    artifacts = {kind: ArtifactRef(f"models/{name}/1/{kind}", 1, "0" * 64) for kind in kinds}
    return Manifest(name=name, version="1", architecture=Architecture("onnx", "tests"), artifacts=artifacts,
                    labels=LABELS, preprocessing=Preprocessing(resize=40, crop_size=32), output=output)


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "models")


def publish_graph(store, model: onnx.ModelProto, **changes) -> Manifest:
    return publish(store, replace(manifest_with("onnx"), **changes), {"onnx": serialized(model)})


@pytest.fixture
def torch_missing(monkeypatch):
    monkeypatch.setattr(TorchEngine, "installed", staticmethod(lambda: False))


# --- which engine ------------------------------------------------------------------------------

@pytest.mark.parametrize("kinds, preferred, chosen", [
    (("onnx", "safetensors"), "onnxruntime", "onnxruntime"),
    (("onnx",), "onnxruntime", "onnxruntime"),
    (("onnx", "safetensors"), "torch", "torch"),
    (("onnx",), "torch", "onnxruntime"),
    (("safetensors",), "onnxruntime", "torch"),
    (("safetensors",), "torch", "torch"),
])
def test_the_preferred_engine_serves_a_model_that_has_its_artifact_else_the_other(kinds, preferred, chosen):
    engine = engine_for(manifest_with(*kinds), EngineOptions(preferred))

    assert engine.name == chosen
    assert engine.artifact in kinds


def test_a_torch_only_model_without_torch_is_engine_unavailable_naming_the_migrate_command(torch_missing):
    with pytest.raises(EngineUnavailable) as caught:
        engine_for(manifest_with("safetensors", name="resnet"), EngineOptions())

    assert (caught.value.status, caught.value.code) == (500, "ENGINE_UNAVAILABLE")
    assert "resnet@1 has only safetensors" in caught.value.message
    assert "`python -m imgclassify.publish migrate resnet`" in caught.value.message


def test_an_onnx_model_without_onnx_runtime_is_engine_unavailable(monkeypatch):
    monkeypatch.setattr(OnnxRuntimeEngine, "installed", staticmethod(lambda: False))

    with pytest.raises(EngineUnavailable, match="has only onnx"):
        engine_for(manifest_with("onnx"), EngineOptions())


def test_both_runtimes_are_installed_in_the_test_environment():
    # The control for the monkeypatched absences above.
    assert OnnxRuntimeEngine.installed() and TorchEngine.installed()


# --- threads -------------------------------------------------------------------------------------

@pytest.mark.parametrize("threads, expected", [(1, 1), (3, 3), (0, len(os.sched_getaffinity(0)))])
def test_the_session_runs_engine_threads_intra_op_threads_and_one_inter_op_thread(store, threads, expected):
    manifest = publish_graph(store, colour_classifier(3))

    network = OnnxRuntimeEngine(EngineOptions(threads=threads)).build(manifest, serialized(colour_classifier(3)))

    options = network.session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (expected, 1)


@pytest.mark.parametrize("threads, spin, expected", [(2, True, "1"), (2, False, "0"), (1, True, "0")])
def test_pool_threads_spin_only_when_engine_spin_asks_and_there_is_more_than_one(store, threads, spin, expected):
    manifest = publish_graph(store, colour_classifier(3))

    network = OnnxRuntimeEngine(EngineOptions(threads=threads, spin=spin)).build(manifest,
                                                                               serialized(colour_classifier(3)))

    options = network.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == expected


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("memory_arena", [False, True])
def test_sessions_keep_their_activations_memory_between_forwards_only_when_asked(store, threads, memory_arena):
    manifest = publish_graph(store, colour_classifier(3))

    network = OnnxRuntimeEngine(EngineOptions(threads=threads, memory_arena=memory_arena)).build(
        manifest, serialized(colour_classifier(3)))

    assert [session.get_session_options().enable_cpu_mem_arena
            for session in (network.narrow, network.wide)] == [memory_arena, memory_arena]


def test_the_functions_registry_runs_without_the_arena_and_the_batch_jobs_with_it_and_never_spins(store):
    settings = Settings.from_env({"MODEL_STORE": str(store.root), "ENGINE_SPIN": "true"})

    functions, batches = (ModelRegistry.from_settings(settings).engine_options,
                          ModelRegistry.from_settings(settings, batches=True).engine_options)

    assert (functions.memory_arena, functions.spin) == (False, True)
    assert (batches.memory_arena, batches.spin) == (True, False)


def test_the_engine_threads_setting_reaches_the_session_of_a_served_model(store):
    publish_graph(store, colour_classifier(3))
    settings = Settings.from_env({"MODEL_STORE": str(store.root), "ENGINE_THREADS": "2"})
    registry = ModelRegistry.over(store, cache_budget_bytes=2**30, catalog_ttl_seconds=60,
                             engine_options=EngineOptions.from_settings(settings))

    model, _ = registry.get("tiny")

    assert model.network().session.get_session_options().intra_op_num_threads == 2


def test_a_float_graphs_two_sessions_share_one_copy_of_its_weights_and_answer_alike(store):
    graph = colour_classifier(40)  # 480 + 160 bytes of weights: kept outside the optimised graph
    network = OnnxRuntimeEngine(EngineOptions(threads=2)).build(publish_graph(store, graph), serialized(graph))
    batch = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)

    narrow, wide = (session.run(None, {"input": batch})[0] for session in (network.narrow, network.wide))

    assert network.narrow is not network.wide
    assert [s.get_session_options().intra_op_num_threads for s in (network.narrow, network.wide)] == [1, 2]
    blob, shared = network._weights
    assert sorted(name for name, _ in shared) == ["bias", "weight"] and blob.nbytes == 640
    assert np.array_equal(narrow, wide)
    expected = batch.mean(axis=(2, 3)) @ numpy_helper.to_array(graph.graph.initializer[0])
    assert np.allclose(narrow, expected + numpy_helper.to_array(graph.graph.initializer[1]), atol=1e-5)


def test_without_a_temporary_directory_one_session_serves_every_forward(store, monkeypatch, caplog):
    import tempfile

    def no_directory(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", no_directory)
    graph = colour_classifier(40)

    network = OnnxRuntimeEngine(EngineOptions(threads=2)).build(publish_graph(store, graph), serialized(graph))

    assert network.narrow is network.wide
    assert network.wide.get_session_options().intra_op_num_threads == 2
    assert network.run(np.zeros((1, 3, 8, 8), dtype=np.float32)).shape == (1, 40)
    assert "one session for every forward" in caplog.text


def test_a_graph_prepared_ahead_builds_without_optimising_again_and_its_files_go(store, monkeypatch):
    graph = colour_classifier(40)
    engine = OnnxRuntimeEngine(EngineOptions(threads=2))
    manifest = publish_graph(store, graph)
    prepared = engine.prepare(manifest, serialized(graph))
    assert prepared.on_disk()
    monkeypatch.setattr(engine, "_optimise", lambda data: pytest.fail("optimised twice"))

    network = engine.build(manifest, serialized(graph), prepared)

    batch = np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)
    again = OnnxRuntimeEngine(EngineOptions(threads=2)).build(manifest, serialized(graph))
    assert np.array_equal(network.run(batch), again.run(batch))
    assert network.narrow is not network.wide and not prepared.on_disk()


def test_a_prepared_graph_whose_files_are_gone_is_optimised_again(store):
    """A second worker forked after the first one's build deleted them."""
    graph = colour_classifier(40)
    engine = OnnxRuntimeEngine(EngineOptions(threads=2))
    manifest = publish_graph(store, graph)
    prepared = engine.prepare(manifest, serialized(graph))
    prepared.discard()

    network = engine.build(manifest, serialized(graph), prepared)

    assert network.narrow is not network.wide
    assert network.run(np.zeros((1, 3, 8, 8), dtype=np.float32)).shape == (1, 40)


def forty_classes(version: str = "1") -> Manifest:
    return replace(manifest_with("onnx"), version=version, labels=tuple(f"class {i}" for i in range(40)))


def snapshot_of(store, tmp_path, graph: onnx.ModelProto):
    from imgclassify.store.snapshot import ModelSnapshot, write_snapshot

    publish(store, forty_classes(), {"onnx": serialized(graph)}, make_default=True)
    write_snapshot(store, tmp_path / "model_snapshot")
    return ModelSnapshot(tmp_path / "model_snapshot")


def test_a_snapshot_prepared_ahead_is_adopted_by_the_model_loaded_from_its_bytes(store, tmp_path):
    from imgclassify.runtime.models import prepare_snapshot

    snapshot = snapshot_of(store, tmp_path, colour_classifier(40))
    options = EngineOptions(threads=2)
    ahead = prepare_snapshot(snapshot, options)
    model = load_model(store, read_manifest(store, "tiny", "1"), options, snapshot)

    assert model.adopt(ahead) and "prepared_ahead" in model.load_ms
    model.network()
    assert not ahead.prepared.on_disk()


def test_a_model_of_other_bytes_does_not_adopt_what_was_prepared(store, tmp_path):
    from imgclassify.runtime.models import prepare_snapshot

    snapshot = snapshot_of(store, tmp_path, colour_classifier(40))
    ahead = prepare_snapshot(snapshot, EngineOptions(threads=2))
    publish(store, forty_classes("2"), {"onnx": serialized(colour_classifier(40, seed=1))})
    other = load_model(store, read_manifest(store, "tiny", "2"), EngineOptions(threads=2), snapshot)

    assert not other.adopt(ahead) and "prepared_ahead" not in other.load_ms
    ahead.discard()  # as the start-up does with what no model adopted


def replace_snapshot_graph(snapshot, data: bytes, *, in_its_manifest: bool) -> None:
    """Put ``data`` in ``snapshot`` as its model.onnx; with ``in_its_manifest`` its manifest names their sha256."""
    (snapshot.directory / "model.onnx").write_bytes(data)
    if in_its_manifest:
        path = snapshot.directory / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["artifacts"]["onnx"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        path.write_text(json.dumps(manifest))


def test_a_snapshot_graph_that_breaks_the_rules_is_not_handed_to_the_runtime_ahead(store, tmp_path, caplog):
    from imgclassify.runtime.models import prepare_snapshot

    snapshot = snapshot_of(store, tmp_path, colour_classifier(40))
    bad = serialized(with_subgraph(colour_classifier(40), "/etc/shadow"))
    replace_snapshot_graph(snapshot, bad, in_its_manifest=True)

    assert prepare_snapshot(snapshot, EngineOptions(threads=2)) is None
    assert "could not prepare tiny@1 from the snapshot ahead" in caplog.text and "external data" in caplog.text


def test_snapshot_bytes_that_differ_from_its_own_manifest_are_not_prepared(store, tmp_path, monkeypatch):
    from imgclassify.runtime import onnx_rules
    from imgclassify.runtime.models import prepare_snapshot

    snapshot = snapshot_of(store, tmp_path, colour_classifier(40))
    replace_snapshot_graph(snapshot, serialized(colour_classifier(40, seed=1)), in_its_manifest=False)
    monkeypatch.setattr(onnx_rules, "check_onnx", lambda data: pytest.fail("parsed bytes the load will refuse"))

    assert prepare_snapshot(snapshot, EngineOptions(threads=2)) is None


def test_a_start_from_a_snapshot_parses_the_rules_once_and_other_bytes_again(store, tmp_path, monkeypatch):
    from imgclassify.runtime import onnx_rules
    from imgclassify.runtime.models import prepare_snapshot

    parsed = []
    check_onnx = onnx_rules.check_onnx
    monkeypatch.setattr(onnx_rules, "check_onnx", lambda data: parsed.append(len(data)) or check_onnx(data))
    snapshot = snapshot_of(store, tmp_path, colour_classifier(40))
    options = EngineOptions(threads=2)
    ahead = prepare_snapshot(snapshot, options)
    model = load_model(store, read_manifest(store, "tiny", "1"), options, snapshot)
    assert model.adopt(ahead) and len(parsed) == 1

    other = serialized(colour_classifier(40, seed=1))
    publish(store, forty_classes("2"), {"onnx": other})
    load_model(store, read_manifest(store, "tiny", "2"), options)
    assert parsed[1:] == [len(other)]
    model.network()  # the build deletes the prepared graph's files


def eight_bit(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its weight stored as int8 and dequantized in the graph (as a QDQ twin stores it)."""
    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    weight = next(tensor for tensor in quantized.graph.initializer if tensor.name == "weight")
    values = numpy_helper.to_array(weight)
    scale = np.float32(np.abs(values).max() / 127)
    weight.CopyFrom(numpy_helper.from_array(np.round(values / scale).astype(np.int8), "weight_int8"))
    quantized.graph.initializer.extend([numpy_helper.from_array(np.array(scale), "weight_scale")])
    quantized.graph.node.insert(0, helper.make_node("DequantizeLinear", ["weight_int8", "weight_scale"], ["weight"]))
    return quantized


def test_nothing_is_prepared_for_an_eight_bit_graph_whose_sessions_each_pack_their_weights(store, monkeypatch):
    graph = eight_bit(colour_classifier(40))
    engine = OnnxRuntimeEngine(EngineOptions(threads=2))
    monkeypatch.setattr(engine, "_optimise", lambda data: pytest.fail("optimised for nothing"))

    assert engine.prepare(publish_graph(store, graph), serialized(graph)) is None


def test_nothing_is_prepared_for_one_engine_thread(store):
    graph = colour_classifier(40)
    assert OnnxRuntimeEngine(EngineOptions(threads=1)).prepare(publish_graph(store, graph), serialized(graph)) is None


def test_one_engine_thread_builds_one_session_for_every_forward(store):
    network = OnnxRuntimeEngine(EngineOptions(threads=1)).build(publish_graph(store, colour_classifier(3)),
                                                                serialized(colour_classifier(3)))

    assert network.narrow is network.wide and network._weights == ()


@pytest.mark.parametrize("memory_arena, forwards", [(False, [2, 2, 1]), (True, [5])])
def test_without_an_arena_a_batch_runs_a_few_images_per_forward_with_the_same_answers(store, monkeypatch,
                                                                                       memory_arena, forwards):
    graph = colour_classifier(40)
    manifest = publish_graph(store, graph)
    network = OnnxRuntimeEngine(EngineOptions(threads=2, memory_arena=memory_arena)).build(manifest, serialized(graph))
    batch = np.random.default_rng(0).random((5, 3, 8, 8), dtype=np.float32)
    expected = network.wide.run(None, {network.input_name: batch})[0]  # all five in one forward
    sizes = []
    for session in (network.narrow, network.wide):  # which one runs a forward is the thread policy's
        monkeypatch.setattr(session, "run", lambda outputs, feeds, run=session.run:
                            sizes.append(len(feeds[network.input_name])) or run(outputs, feeds))

    rows = network.run(batch)

    assert sizes == forwards
    np.testing.assert_allclose(rows, expected, rtol=0, atol=1e-6)


def record_sessions(network, monkeypatch, images: int) -> tuple[list, list[float]]:
    """The sessions ``network``'s forwards run on, in order (each answers ``images`` rows of 40
    zeros), and the clock the thread policy reads, from 1000 s."""
    from imgclassify import inflight
    from imgclassify.runtime import engines

    used = []
    for session in (network.narrow, network.wide):
        monkeypatch.setattr(session, "run",
                            lambda outputs, feeds, s=session: used.append(s) or [np.zeros((images, 40))])
    monkeypatch.setattr(engines, "FORWARDS", InFlight())
    now = [1000.0]
    monkeypatch.setattr(inflight.time, "monotonic", lambda: now[0])
    return used, now


def test_a_forward_that_follows_another_runs_wide_and_one_beside_another_or_after_idle_narrow(store, monkeypatch):
    from imgclassify.runtime import engines

    network = OnnxRuntimeEngine(EngineOptions(threads=2)).build(publish_graph(store, colour_classifier(40)),
                                                                serialized(colour_classifier(40)))
    used, now = record_sessions(network, monkeypatch, 1)
    batch = np.zeros((1, 3, 8, 8), dtype=np.float32)

    network.run(batch)  # the first: its pool has never run
    now[0] += engines.FOLLOWING_SECONDS
    network.run(batch)
    now[0] += engines.FOLLOWING_SECONDS + 0.001
    network.run(batch)  # after idle
    network.run(batch)
    engines.FORWARDS.enter()
    network.run(batch)  # beside another

    assert used == [network.narrow, network.wide, network.narrow, network.wide, network.narrow]
    assert engines.FORWARDS.running == 1


def test_a_batch_forward_runs_wide_however_long_since_the_last(store, monkeypatch):
    network = OnnxRuntimeEngine(EngineOptions(threads=2).for_batches()).build(
        publish_graph(store, colour_classifier(40)), serialized(colour_classifier(40)))
    used, now = record_sessions(network, monkeypatch, 16)
    batch = np.zeros((16, 3, 8, 8), dtype=np.float32)

    network.run(batch)
    now[0] += 60
    network.run(batch)

    assert used == [network.wide, network.wide]


def test_a_forward_the_runtime_fails_is_no_longer_counted(store, monkeypatch):
    from imgclassify.runtime import engines

    network = OnnxRuntimeEngine(EngineOptions(threads=2)).build(publish_graph(store, colour_classifier(40)),
                                                                serialized(colour_classifier(40)))
    for session in (network.narrow, network.wide):
        monkeypatch.setattr(session, "run", lambda outputs, feeds: 1 / 0)
    monkeypatch.setattr(engines, "FORWARDS", InFlight())

    with pytest.raises(ZeroDivisionError):
        network.run(np.zeros((1, 3, 8, 8), dtype=np.float32))

    assert engines.FORWARDS.running == 0


# --- loading: verified bytes, checked, built lazily --------------------------------------------

def test_a_loaded_model_keeps_its_verified_bytes_until_it_is_built_then_only_the_network(store):
    manifest = publish_graph(store, colour_classifier(3))

    model = load_model(store, manifest, EngineOptions())

    assert not model.built and model._data == serialized(colour_classifier(3))
    network = model.network()
    assert model.built and model._data is None
    assert model.network() is network


def test_outputs_are_the_graphs_rows_and_classify_ranks_their_softmax(store):
    graph = colour_classifier(3, weight=10 * np.eye(3))
    model = load_model(store, publish_graph(store, graph), EngineOptions())
    red, blue = np.zeros((3, 32, 32), np.float32), np.zeros((3, 32, 32), np.float32)
    red[0], blue[2] = 2.0, 2.0
    bias = numpy_helper.to_array(next(t for t in graph.graph.initializer if t.name == "bias"))

    outputs = model.outputs([red, blue])
    rows = model.classify([red, blue], 2)

    assert outputs.dtype == np.float32
    assert np.abs(outputs - (20 * np.eye(3)[[0, 2]] + bias)).max() <= 1e-5
    assert [row[0]["label"] for row in rows] == ["red", "blue"]
    assert rows[0][0]["score"] == round(float(scores(outputs)[0].max()), 6)


def test_a_model_whose_output_is_probabilities_is_not_softmaxed_again(store):
    graph = colour_classifier(3)
    graph.graph.node[-1].output[0] = "raw"
    graph.graph.node.append(helper.make_node("Softmax", ["raw"], ["logits"], axis=1))
    model = load_model(store, publish_graph(store, graph, output="probabilities"), EngineOptions())
    batch = [np.random.default_rng(0).normal(size=(3, 32, 32)).astype(np.float32)]

    assert np.array_equal(model.probabilities(batch), model.outputs(batch))
    assert abs(float(model.probabilities(batch).sum()) - 1) <= 1e-6


def test_the_memory_of_an_onnx_model_is_counted_from_its_initializers(models_bucket):
    store = GcsStore(models_bucket)
    manifest = read_manifest(store, "efficientnet_lite0", "1")
    graph = onnx.load_from_string(store.download(manifest.artifacts["onnx"].object))

    model = load_model(store, manifest, EngineOptions())

    assert model.nbytes == sum(numpy_helper.to_array(tensor).nbytes for tensor in graph.graph.initializer)
    assert 0.9 * manifest.artifacts["onnx"].bytes <= model.nbytes <= manifest.artifacts["onnx"].bytes


def test_a_graph_that_passes_the_rules_but_does_not_load_is_an_integrity_error_when_built(store):
    graph = colour_classifier(3)
    graph.graph.node[-1].op_type = "NoSuchOperator"  # standard domain, unknown to the runtime
    model = load_model(store, publish_graph(store, graph), EngineOptions())

    with pytest.raises(IntegrityError, match="model.onnx of tiny@1 does not load"):
        model.network()


def test_an_artifact_outside_its_versions_folder_is_refused(store):
    manifest = publish_graph(store, colour_classifier(3))
    elsewhere = replace(manifest, artifacts={"onnx": replace(manifest.artifacts["onnx"],
                                                             object=onnx_object("other", "1"))})

    with pytest.raises(IntegrityError, match="points outside its version"):
        load_model(store, elsewhere, EngineOptions())


def test_the_torch_engine_counts_the_tensor_bytes_and_refuses_what_is_not_safetensors():
    import torch

    weights = serialize_weights({"weight": torch.zeros(4, 3), "bias": torch.zeros(4, dtype=torch.float16)})
    engine = TorchEngine(EngineOptions("torch"))

    assert engine.check(manifest_with("safetensors"), weights) == 4 * 3 * 4 + 4 * 2
    with pytest.raises(IntegrityError, match="not a valid safetensors file"):
        engine.check(manifest_with("safetensors"), b"\x00" * 16)


# --- one interface -------------------------------------------------------------------------------

@pytest.fixture
def session_sources(monkeypatch) -> list:
    """What each ONNX Runtime session built from now on was built from (bytes or a path)."""
    import onnxruntime

    sources = []

    class RecordingSession(onnxruntime.InferenceSession):
        """The real session; it notes what it was built from."""

        def __init__(self, path_or_bytes, *args, **kwargs):
            sources.append(path_or_bytes)
            super().__init__(path_or_bytes, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", RecordingSession)
    return sources


def test_the_session_is_built_from_the_verified_bytes_in_memory_not_a_file(store, session_sources):
    model = load_model(store, publish_graph(store, colour_classifier(3)), EngineOptions(threads=1))

    model.network()

    assert session_sources == [serialized(colour_classifier(3))]


def test_with_more_threads_the_two_sessions_run_the_runtimes_optimised_graph_whose_files_are_gone(
        store, session_sources):
    labels = tuple(f"class {index}" for index in range(40))
    model = load_model(store, publish_graph(store, colour_classifier(40), labels=labels), EngineOptions(threads=2))

    model.network()

    first, *optimised = session_sources
    assert first == serialized(colour_classifier(40)) and len(optimised) == 2
    assert all(isinstance(path, str) and not os.path.exists(os.path.dirname(path)) for path in optimised)


