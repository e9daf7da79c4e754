"""The inference lane: one thread for every forward, micro-batching only when it pays."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from imgclassify.inference import InferenceLane


class RecordingModel:
    """Echoes each input's first value as its label and records the batch sizes it saw."""

    def __init__(self, name: str = "m", delay: float = 0.0) -> None:
        self.key = (name, "1")
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.delay = delay

    def classify(self, inputs, k):
        self.batches.append(len(inputs))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return [[{"label": f"{self.key[0]}:{int(x[0])}", "index": int(x[0]), "score": 1.0}] * k for x in inputs]


def test_a_lone_request_is_not_held_back_by_the_batching_window():
    lane = InferenceLane(max_batch=8, window_seconds=2.0)
    model = RecordingModel()

    started = time.monotonic()
    rows = lane.classify(model, [np.array([7.0])], 1)

    assert time.monotonic() - started < 0.5
    assert rows == [[{"label": "m:7", "index": 7, "score": 1.0}]]


def test_requests_arriving_together_share_batches_and_each_gets_its_own_answer():
    lane = InferenceLane(max_batch=4, window_seconds=0.2)
    model = RecordingModel(delay=0.05)
    barrier = threading.Barrier(8, timeout=10)

    def request(value: int):
        barrier.wait()
        with lane.preparing(model):
            time.sleep(0.01)  # decoding
        return lane.classify(model, [np.array([float(value)])], 1)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(request, range(8)))

    assert [row[0][0]["index"] for row in answers] == list(range(8))
    assert sum(model.batches) == 8
    assert len(model.batches) < 8
    assert max(model.batches) <= 4
    assert model.threads == {"inference-lane"}


def test_a_multi_image_request_keeps_its_order_and_k():
    lane = InferenceLane(max_batch=4)
    model = RecordingModel()

    rows = lane.classify(model, [np.array([1.0]), np.array([2.0]), np.array([3.0])], 2)

    assert [[p["index"] for p in row] for row in rows] == [[1, 1], [2, 2], [3, 3]]


def test_different_models_are_never_mixed_in_one_forward():
    lane = InferenceLane(max_batch=8, window_seconds=0.1)
    first, second = RecordingModel("a", delay=0.02), RecordingModel("b", delay=0.02)

    def request(index: int):
        model = first if index % 2 else second
        return lane.classify(model, [np.array([float(index)])], 1)[0][0]["label"]

    with ThreadPoolExecutor(8) as pool:
        labels = list(pool.map(request, range(8)))

    assert labels == [f"{'a' if i % 2 else 'b'}:{i}" for i in range(8)]
    assert sum(first.batches) == sum(second.batches) == 4


def test_a_failing_forward_reaches_every_request_of_its_batch_and_the_lane_goes_on():
    lane = InferenceLane()

    class Broken(RecordingModel):
        def classify(self, inputs, k):
            raise RuntimeError("forward failed")

    with pytest.raises(RuntimeError, match="forward failed"):
        lane.classify(Broken(), [np.array([1.0])], 1)
    assert lane.classify(RecordingModel(), [np.array([2.0])], 1)[0][0]["index"] == 2


def test_the_lane_thread_is_started_again_in_a_forked_process():
    lane = InferenceLane()
    lane.classify(RecordingModel(), [np.array([1.0])], 1)
    before = lane._thread

    lane._pid = -1  # what a forked child sees: the parent's pid, whose thread it does not have
    lane.classify(RecordingModel(), [np.array([1.0])], 1)

    assert lane._thread is not before
    assert lane._thread.is_alive()
