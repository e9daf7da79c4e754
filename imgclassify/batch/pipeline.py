"""Classifying a task's chunks: download and prepare ahead of the model, batch, write each chunk once."""

from __future__ import annotations

import json
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice

import numpy as np

from imgclassify.errors import ServiceError, StorageUnavailable
from imgclassify.runtime.models import LoadedModel
from imgclassify.settings import Settings
from imgclassify.store.objects import GenerationMismatch, ObjectStore

from .plan import BatchOptions, chunk_object
from .progress import Progress

log = logging.getLogger(__package__)  # "imgclassify.batch" in every part, and under python -m


def prefetch(pool: ThreadPoolExecutor, function: Callable, items: Iterable, lookahead: int) -> Iterator:
    """``function(item)`` for each item, computed up to ``lookahead`` items ahead on ``pool``, in order."""
    items = iter(items)
    pending: deque[Future] = deque(pool.submit(function, item) for item in islice(items, lookahead))
    while pending:
        future = pending.popleft()
        for item in islice(items, 1):
            pending.append(pool.submit(function, item))
        yield future.result()


def image_preparer(source: ObjectStore, model: LoadedModel, settings: Settings) -> Callable[[str], np.ndarray | dict]:
    """A function from an image name to its model input, or to the error the API would answer.

    Storage outages are not the image's fault: they propagate, the task fails, and a retry
    resumes it. Anything else unexpected becomes an ``INTERNAL`` error row, so one strange
    file can never make every retry of a task crash at the same place.
    """
    def prepare(name: str) -> np.ndarray | dict:
        try:
            data = source.read_limited(name, settings.max_request_bytes)
            return model.prepare(data, max_pixels=settings.max_image_pixels)
        except StorageUnavailable:
            raise
        except ServiceError as error:
            return error.to_json()["error"]
        except Exception as error:  # noqa: BLE001 - see the docstring
            log.exception("unexpected failure on %s/%s", source.uri, name)
            return ServiceError(f"the image could not be processed: {type(error).__name__}").to_json()["error"]

    return prepare


def classify_chunk(model: LoadedModel, uris: list[str], prepared: Iterable[np.ndarray | dict], *,
                   batch_size: int, top_k: int, features: bool = False) -> list[dict]:
    """One row per uri, in order; images are classified ``batch_size`` at a time (with
    ``features``, each row holds the image's penultimate features instead of predictions).

    The last batch is padded with blank images to the full size: the forward pass's floats
    depend (in the last bits) on the batch size, so every image goes through a batch of the
    same size and its row does not depend on where an interruption or an error fell.
    """
    rows: list[dict] = [{} for _ in uris]
    waiting: list[tuple[int, np.ndarray]] = []

    def run_batch() -> None:
        inputs = [array for _, array in waiting]
        inputs += [np.zeros_like(inputs[0])] * (batch_size - len(inputs))
        if features:
            answers = [{"features": [round(float(value), 6) for value in row]} for row in model.features(inputs)]
        else:
            answers = [{"predictions": found} for found in model.classify(inputs, top_k)]
        for (position, _), answer in zip(waiting, answers, strict=False):  # the padding's rows are dropped
            rows[position] = {"uri": uris[position], "model": model.manifest.name,
                              "version": model.manifest.version, **answer}
        waiting.clear()

    for position, (uri, result) in enumerate(zip(uris, prepared, strict=False)):
        if isinstance(result, dict):
            rows[position] = {"uri": uri, "error": result}
            continue
        waiting.append((position, result))
        if len(waiting) == batch_size:
            run_batch()
    if waiting:
        run_batch()
    return rows


def encode_rows(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


def row_counts(rows: Iterable[dict]) -> Counter:
    """``predicted`` plus one count per error code."""
    return Counter(row["error"]["code"] if "error" in row else "predicted" for row in rows)


def write_chunk(store: ObjectStore, name: str, rows: list[dict]) -> bool:
    """Write a chunk once; False if another attempt wrote it first (its rows are the same)."""
    try:
        store.write(name, encode_rows(rows), if_generation_match=0)
        return True
    except GenerationMismatch:
        log.info("%s was already written by another attempt; keeping that one", name)
        return False


def classify_chunks(model: LoadedModel, source: ObjectStore, output: ObjectStore, todo: dict[int, list[str]],
                    options: BatchOptions, settings: Settings, top_k: int, progress: Progress,
                    ) -> tuple[Counter, list[bool]]:
    """Classify and write the chunks ``todo`` (number -> image names).

    Worker threads download, decode and preprocess ahead of the model (a bounded lookahead);
    this thread runs the forward passes; one more thread writes finished chunks. Returns the
    row counts and, per chunk, whether this attempt wrote it (False: another attempt had).
    """
    counts: Counter = Counter()
    writes: deque[Future] = deque()
    wrote: list[bool] = []
    pool = ThreadPoolExecutor(options.download_concurrency, thread_name_prefix="prepare")
    writer = ThreadPoolExecutor(1, thread_name_prefix="write")
    try:
        names_in_order = (name for names in todo.values() for name in names)
        prepared = prefetch(pool, image_preparer(source, model, settings), names_in_order,
                            options.download_concurrency + 2 * options.batch_size)
        for number, names in todo.items():
            rows = classify_chunk(model, [f"{source.uri}/{name}" for name in names], islice(prepared, len(names)),
                                  batch_size=options.batch_size, top_k=top_k, features=options.features)
            chunk_name = chunk_object(options.task_index, options.task_count, number)
            writes.append(writer.submit(write_chunk, output, chunk_name, rows))
            chunk_counts = row_counts(rows)
            counts += chunk_counts
            progress.update(len(rows), len(rows) - chunk_counts["predicted"])
            while writes and writes[0].done():
                wrote.append(writes.popleft().result())  # a failed write stops the task now
        wrote += [future.result() for future in writes]
    finally:
        pool.shutdown(cancel_futures=True)
        writer.shutdown(cancel_futures=True)
    return counts, wrote


def read_chunk_counts(store: ObjectStore, options: BatchOptions, numbers: list[int], workers: int) -> Iterator[Counter]:
    """Row counts of chunks written by earlier attempts (for a summary of the whole task)."""
    def count(number: int) -> Counter:
        data = store.read(chunk_object(options.task_index, options.task_count, number)).data
        return row_counts(json.loads(line) for line in data.splitlines() if line)

    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(count, numbers)
