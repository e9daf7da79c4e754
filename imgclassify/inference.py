"""One inference lane: a single thread runs every forward pass, micro-batching concurrent requests.

Server threads decode and preprocess in parallel, then hand their inputs to the lane and
wait. Running all forwards on one thread keeps the engine's intra-op pool from being
oversubscribed by many request threads on few cores, and lets requests for the same model
that arrive together share one batched forward. The lane waits for companions only while
other requests for that model are still being prepared, and never longer than
``window_seconds``: a lone request goes straight through.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Job:
    model: object                 # a LoadedModel: has .key and .classify(inputs, k)
    inputs: list[np.ndarray]
    k: int
    future: Future = field(default_factory=Future)


class InferenceLane:
    def __init__(self, max_batch: int = 4, window_seconds: float = 0.005) -> None:
        self.max_batch = max_batch
        self.window_seconds = window_seconds
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._preparing: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    @contextmanager
    def preparing(self, model) -> Iterator[None]:
        """Context for a request that is decoding images for ``model`` (so the lane may wait for it)."""
        with self._lock:
            self._preparing[model.key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._preparing[model.key] -= 1
                if not self._preparing[model.key]:
                    del self._preparing[model.key]

    def classify(self, model, inputs: list[np.ndarray], k: int) -> list[list[dict]]:
        """Top-k for ``inputs`` on ``model``, computed on the lane thread."""
        self._ensure_running()
        job = _Job(model, inputs, k)
        self._jobs.put(job)
        return job.future.result()

    def _ensure_running(self) -> None:
        # The thread is started lazily, in the process that serves: a thread started before
        # gunicorn forks its worker would not exist in the worker.
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is None or self._pid != os.getpid():
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(target=self._run, name="inference-lane", daemon=True)
                self._pid = os.getpid()
                self._thread.start()

    def _others_preparing(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return self._preparing.get(key, 0) > 0

    def _collect(self, first: _Job, held: list[_Job]) -> list[_Job]:
        """``first`` plus queued jobs for the same model, waiting briefly if more are coming."""
        batch, count = [first], len(first.inputs)
        deadline = time.monotonic() + self.window_seconds
        while count < self.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._others_preparing(first.model.key):
                    break
                try:
                    job = self._jobs.get(timeout=min(remaining, 0.001))
                except queue.Empty:
                    continue
            if job.model is first.model and count + len(job.inputs) <= self.max_batch:
                batch.append(job)
                count += len(job.inputs)
            else:
                held.append(job)
        return batch

    def _run(self) -> None:
        held: list[_Job] = []
        while True:
            first = held.pop(0) if held else self._jobs.get()
            batch = self._collect(first, held)
            try:
                rows = first.model.classify([x for job in batch for x in job.inputs], max(job.k for job in batch))
            except BaseException as error:  # noqa: BLE001 - every waiter must hear about it
                for job in batch:
                    job.future.set_exception(error)
                continue
            start = 0
            for job in batch:
                job.future.set_result([row[:job.k] for row in rows[start:start + len(job.inputs)]])
                start += len(job.inputs)
