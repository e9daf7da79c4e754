"""Batch classification: one model applied to every image under a prefix, split over many tasks.

Runs as a Cloud Run job (each task is told ``CLOUD_RUN_TASK_INDEX`` and ``CLOUD_RUN_TASK_COUNT``)
or locally (``imgclassify-batch`` / ``python -m imgclassify.batch``). Labels come from the
same decode, preprocessing and top-k code as ``/v1/classify``. The output layout and the
resume rules are described in ``docs/batch.md``:

    OUTPUT/job.json                                   parameters every task agrees on (model version pinned)
    OUTPUT/task-00003-of-00010/plan.json              this task's images, in order, fixed by its first attempt
    OUTPUT/task-00003-of-00010/chunk-000000.jsonl     one JSON line per image, written once (generation 0)
    OUTPUT/task-00003-of-00010/summary.json           counts, errors, throughput (rewritten by each attempt)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice

import numpy as np

from .catalog import parse_model_ref
from .errors import PayloadTooLarge, ServiceError, StorageUnavailable
from .logs import configure_logging
from .models import LoadedModel
from .registry import ModelRegistry
from .request_parsing import parse_top_k
from .service import Service
from .settings import ConfigError, Settings
from .storage import GenerationMismatch, ObjectNotFound, ObjectStore, open_store

log = logging.getLogger("imgclassify.batch")  # not __name__: "__main__" under python -m

# Compared case-insensitively with the end of each object name; everything else is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
JOB_OBJECT = "job.json"


class BatchConfigError(ValueError):
    """Arguments the job cannot run with, or that contradict an earlier run in the same output prefix."""


@dataclass(frozen=True)
class BatchOptions:
    input: str
    output: str
    model: str | None = None
    top_k: int = 5
    batch_size: int = 16
    download_concurrency: int = 8
    chunk_size: int = 64
    task_index: int = 0
    task_count: int = 1
    log_every_seconds: float = 30.0
    attempt: str | None = None  # CLOUD_RUN_TASK_ATTEMPT, for the logs


# --- what this task does: listing, sharding, chunking -----------------------------------


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def list_images(store: ObjectStore) -> list[str]:
    """Every image below ``store``, by name relative to it, sorted (the same on every run)."""
    return [name for name in store.list("") if is_image_name(name)]


def shard_of(name: str, task_count: int) -> int:
    """The task that owns ``name``: a hash of the name alone (not of its place in a listing).

    Tasks that list the prefix at different moments still agree on every name they both
    see, so no image is done twice or skipped by all tasks. sha256, not ``hash()``, whose
    value changes from one process to the next.
    """
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") % task_count


def task_images(names: Iterable[str], task_index: int, task_count: int) -> list[str]:
    return [name for name in names if shard_of(name, task_count) == task_index]


def chunked(names: list[str], chunk_size: int) -> list[list[str]]:
    return [names[start:start + chunk_size] for start in range(0, len(names), chunk_size)]


def task_dir(task_index: int, task_count: int) -> str:
    return f"task-{task_index:05d}-of-{task_count:05d}"


def chunk_object(task_index: int, task_count: int, chunk: int) -> str:
    return f"{task_dir(task_index, task_count)}/chunk-{chunk:06d}.jsonl"


def completed_chunks(store: ObjectStore, task_index: int, task_count: int) -> set[int]:
    """Chunk numbers of this task already written, by this or any earlier attempt."""
    prefix = f"{task_dir(task_index, task_count)}/chunk-"
    done = set()
    for name in store.list(prefix):
        number = name[len(prefix):].removesuffix(".jsonl")
        if name.endswith(".jsonl") and number.isdigit():
            done.add(int(number))
    return done


def _create_or_read_json(store: ObjectStore, name: str, value: dict) -> dict:
    """Write ``value`` unless ``name`` exists; return what is stored (first writer wins)."""
    try:
        store.write(name, json.dumps(value, indent=1).encode(), if_generation_match=0)
        return value
    except GenerationMismatch:
        return json.loads(store.read(name).data)


def pin_job(output: ObjectStore, source: ObjectStore, options: BatchOptions, registry: ModelRegistry) -> dict:
    """``job.json``: the parameters every task and every retry must share, with the model version fixed.

    The first task to start resolves ``name`` to its latest version; later tasks and re-runs
    use that version even if a newer one is published meanwhile.
    """
    name, version = parse_model_ref(options.model) if options.model else (registry.default_name(), None)
    try:
        job = json.loads(output.read(JOB_OBJECT).data)
    except ObjectNotFound:
        resolved_name, resolved_version = registry.resolve(f"{name}@{version}" if version else name)
        job = _create_or_read_json(output, JOB_OBJECT, {
            "input": source.uri, "model": resolved_name, "version": resolved_version, "top_k": options.top_k,
            "task_count": options.task_count, "chunk_size": options.chunk_size,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        })
    wanted = {"input": source.uri, "model": name, "top_k": options.top_k, "task_count": options.task_count,
              "chunk_size": options.chunk_size, **({"version": version} if version else {})}
    different = [f"{key} {job.get(key)!r} (asked for {value!r})"
                 for key, value in wanted.items() if job.get(key) != value]
    if different:
        raise BatchConfigError(f"{output.uri}/{JOB_OBJECT} belongs to another run: it has {', '.join(different)}; "
                               "repeat that run's arguments to resume it, or choose a new output prefix")
    return job


def pin_plan(output: ObjectStore, source: ObjectStore, options: BatchOptions) -> list[str]:
    """This task's images, listed and written by its first attempt; every retry reuses the list."""
    name = f"{task_dir(options.task_index, options.task_count)}/plan.json"
    try:
        return json.loads(output.read(name).data)["images"]
    except ObjectNotFound:
        images = task_images(list_images(source), options.task_index, options.task_count)
        return _create_or_read_json(output, name, {"images": images})["images"]


# --- classifying ------------------------------------------------------------------------


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
            data = source.read(name).data
            if len(data) > settings.max_request_bytes:
                raise PayloadTooLarge(f"the image has {len(data)} bytes; the limit is {settings.max_request_bytes}")
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
                   batch_size: int, top_k: int) -> list[dict]:
    """One row per uri, in order; images are classified ``batch_size`` at a time.

    The last batch is padded with blank images to the full size: the forward pass's floats
    depend (in the last bits) on the batch size, so every image goes through a batch of the
    same size and its row does not depend on where an interruption or an error fell.
    """
    rows: list[dict] = [{} for _ in uris]
    waiting: list[tuple[int, np.ndarray]] = []

    def run_batch() -> None:
        inputs = [array for _, array in waiting]
        inputs += [np.zeros_like(inputs[0])] * (batch_size - len(inputs))
        predictions = model.classify(inputs, top_k)
        for (position, _), found in zip(waiting, predictions, strict=False):  # the padding's rows are dropped
            rows[position] = {"uri": uris[position], "model": model.manifest.name,
                              "version": model.manifest.version, "predictions": found}
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


class Progress:
    """A tqdm bar on a terminal; elsewhere (Cloud Run) a JSON log line every ``every_seconds``."""

    def __init__(self, total: int, done: int, fields: dict, every_seconds: float, stream=None) -> None:
        from tqdm import tqdm

        stream = stream or sys.stderr
        self.interactive = stream.isatty()
        self.bar = tqdm(total=total, initial=done, unit="img", file=stream, disable=not self.interactive,
                        dynamic_ncols=True)
        self.total, self.done, self.fields, self.every_seconds = total, done, fields, every_seconds
        self.processed = self.errors = 0
        self.started = self.logged = time.monotonic()

    def update(self, images: int, errors: int) -> None:
        self.done += images
        self.processed += images
        self.errors += errors
        self.bar.update(images)
        if not self.interactive and time.monotonic() - self.logged >= self.every_seconds:
            self.log()

    def rate(self) -> float:
        return self.processed / max(time.monotonic() - self.started, 1e-9)

    def log(self) -> None:
        self.logged = time.monotonic()
        rate = self.rate()
        log.info("%d of %d images done", self.done, self.total, extra={"fields": {
            **self.fields, "event": "progress", "images_done": self.done, "images_total": self.total,
            "errors": self.errors, "images_per_second": round(rate, 2),
            "eta_seconds": round((self.total - self.done) / rate) if rate else None}})

    def close(self) -> None:
        self.bar.close()


def run_task(options: BatchOptions, settings: Settings) -> dict:
    """Classify this task's share of the images, skipping chunks already written; return the summary."""
    started = time.monotonic()
    service = Service.from_settings(settings)  # the model store and registry, as the functions build them
    source = open_store(options.input, **settings.gcs_options())
    output = open_store(options.output, **settings.gcs_options())
    job = pin_job(output, source, options, service.registry)
    images = pin_plan(output, source, options)
    chunks = chunked(images, options.chunk_size)
    done_before = completed_chunks(output, options.task_index, options.task_count) & set(range(len(chunks)))
    todo = {number: chunks[number] for number in range(len(chunks)) if number not in done_before}
    fields = {"task_index": options.task_index, "task_count": options.task_count, "attempt": options.attempt,
              "model": f"{job['model']}@{job['version']}"}
    log.info("task %d of %d: %d images in %d chunks, %d already done", options.task_index, options.task_count,
             len(images), len(chunks), len(done_before), extra={"fields": {**fields, "event": "start"}})

    counts, wrote = Counter(), []
    loaded, cpu_loaded = time.monotonic(), time.process_time()
    if todo:
        model, _ = service.registry.get(job["model"] + "@" + job["version"])  # this task's one model load
        loaded, cpu_loaded = time.monotonic(), time.process_time()
        progress = Progress(len(images), len(images) - sum(map(len, todo.values())), fields,
                            options.log_every_seconds)
        try:
            counts, wrote = classify_chunks(model, source, output, todo, options, settings, job["top_k"], progress)
        finally:
            progress.close()
    finished, cpu_finished = time.monotonic(), time.process_time()
    for earlier in _read_chunks(output, options, sorted(done_before), options.download_concurrency):
        counts += earlier

    processed = sum(map(len, todo.values()))
    summary = {
        "task_index": options.task_index, "task_count": options.task_count, "attempt": options.attempt,
        "input": source.uri, "output": output.uri, "model": job["model"], "version": job["version"],
        "top_k": job["top_k"], "images": len(images), "predicted": counts["predicted"],
        "errors": len(images) - counts["predicted"],
        "error_codes": {code: n for code, n in sorted(counts.items()) if code != "predicted"},
        "chunks": len(chunks), "chunks_done_before": len(done_before), "chunks_written": sum(wrote),
        "chunks_written_by_another_attempt": len(wrote) - sum(wrote),
        "this_attempt": {
            "images": processed, "batch_size": options.batch_size,
            "download_concurrency": options.download_concurrency,
            "model_load_seconds": round(loaded - started, 2), "classify_seconds": round(finished - loaded, 2),
            "images_per_second": round(processed / max(finished - loaded, 1e-9), 2),
            "cpu_seconds": round(cpu_finished - cpu_loaded, 2),  # all threads, after the model load
        },
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    summary_name = f"{task_dir(options.task_index, options.task_count)}/summary.json"
    output.write(summary_name, json.dumps(summary, indent=1).encode())
    log.info("task %d of %d finished: %d images, %d errors, %.1f images/s", options.task_index, options.task_count,
             len(images), summary["errors"], summary["this_attempt"]["images_per_second"],
             extra={"fields": {**fields, "event": "finished", "summary": summary}})
    return summary


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
                                  batch_size=options.batch_size, top_k=top_k)
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


def _read_chunks(store: ObjectStore, options: BatchOptions, numbers: list[int], workers: int) -> Iterator[Counter]:
    """Row counts of chunks written by earlier attempts (for a summary of the whole task)."""
    def count(number: int) -> Counter:
        data = store.read(chunk_object(options.task_index, options.task_count, number)).data
        return row_counts(json.loads(line) for line in data.splitlines() if line)

    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(count, numbers)


# --- command line -----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, found {value}")
    return value


def _top_k(text: str) -> int:
    try:
        return parse_top_k(text)
    except ServiceError as error:
        raise argparse.ArgumentTypeError(error.message) from None


def _task_index(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, found {value}")
    return value


def parse_args(argv: list[str] | None, env: Mapping[str, str]) -> BatchOptions:
    parser = argparse.ArgumentParser(
        prog="imgclassify-batch",
        description="Classify every image under a prefix with one model; one JSON Lines output per task. "
                    "Each flag falls back to the environment variable named in its help.")
    parser.add_argument("input", nargs="?", metavar="INPUT", default=env.get("BATCH_INPUT"),
                        help="gs://bucket/path/ or a local directory of images (BATCH_INPUT)")
    parser.add_argument("output", nargs="?", metavar="OUTPUT", default=env.get("BATCH_OUTPUT"),
                        help="gs://bucket/path/ or a local directory for the results (BATCH_OUTPUT)")
    parser.add_argument("--model", default=env.get("BATCH_MODEL") or None,
                        help="name or name@version (BATCH_MODEL; default: DEFAULT_MODEL, else the catalog's default)")
    parser.add_argument("--top-k", type=_top_k, default=env.get("BATCH_TOP_K", "5"),
                        help="labels per image, 1-100 (BATCH_TOP_K, default 5)")
    parser.add_argument("--batch-size", type=_positive_int, default=env.get("BATCH_SIZE", "16"),
                        help="images per forward pass (BATCH_SIZE, default 16)")
    parser.add_argument("--download-concurrency", type=_positive_int,
                        default=env.get("BATCH_DOWNLOAD_CONCURRENCY", "8"),
                        help="threads that download, decode and preprocess ahead of the model "
                             "(BATCH_DOWNLOAD_CONCURRENCY, default 8)")
    parser.add_argument("--chunk-size", type=_positive_int, default=env.get("BATCH_CHUNK_SIZE", "64"),
                        help="images per output object, the unit of resumption (BATCH_CHUNK_SIZE, default 64)")
    parser.add_argument("--task-index", type=_task_index, default=env.get("CLOUD_RUN_TASK_INDEX", "0"),
                        help="this task's index (CLOUD_RUN_TASK_INDEX, default 0)")
    parser.add_argument("--task-count", type=_positive_int, default=env.get("CLOUD_RUN_TASK_COUNT", "1"),
                        help="number of tasks (CLOUD_RUN_TASK_COUNT, default 1)")
    parser.add_argument("--log-every", type=float, default=env.get("BATCH_LOG_SECONDS", "30"),
                        help="seconds between progress log lines when not on a terminal (BATCH_LOG_SECONDS)")
    args = parser.parse_args(argv)
    if not args.input or not args.output:
        parser.error("INPUT and OUTPUT (or BATCH_INPUT and BATCH_OUTPUT) are required")
    if args.task_index >= args.task_count:
        parser.error(f"task index {args.task_index} must be below the task count {args.task_count}")
    return BatchOptions(input=args.input, output=args.output, model=args.model, top_k=args.top_k,
                        batch_size=args.batch_size, download_concurrency=args.download_concurrency,
                        chunk_size=args.chunk_size, task_index=args.task_index, task_count=args.task_count,
                        log_every_seconds=args.log_every, attempt=env.get("CLOUD_RUN_TASK_ATTEMPT"))


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Exit status: 0 done (bad images are rows, not failures), 2 bad arguments, 1 anything else (retry)."""
    env = os.environ if env is None else env
    options = parse_args(argv, env)
    configure_logging()
    try:
        run_task(options, Settings.from_env(env))
    except (BatchConfigError, ConfigError) as error:
        log.error("%s", error)
        return 2
    except ServiceError as error:
        log.error("%s: %s", error.code, error.message)
        return 2 if 400 <= error.status < 500 else 1
    except Exception:
        log.exception("task failed; a retry resumes after the last chunk written")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
