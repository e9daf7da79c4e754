"""What a task does: list the images, take its shard, cut it into chunks, pin the job and the plan."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from imgclassify.imaging.decode import is_image_name
from imgclassify.runtime.registry import ModelRegistry
from imgclassify.store.catalog import parse_model_ref
from imgclassify.store.objects import GenerationMismatch, ObjectNotFound, ObjectStore

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
    features: bool = False      # rows of penultimate features (for `publish train --features`), not labels

    @property
    def rows(self) -> str:
        """What the rows hold: ``predictions`` or ``features``."""
        return "features" if self.features else "predictions"


# --- what this task does: listing, sharding, chunking -----------------------------------


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


def check_input(source: ObjectStore) -> None:
    """Refuse an input with nothing in it (a typo, a bucket that does not exist) before the run
    writes anything: a ``job.json`` pinned to a wrong input would refuse the corrected run."""
    if source.is_empty():
        raise ObjectNotFound(f"{source.uri} holds no objects; is INPUT right?")


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
            "task_count": options.task_count, "chunk_size": options.chunk_size, "rows": options.rows,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        })
    wanted = {"input": source.uri, "model": name, "top_k": options.top_k, "task_count": options.task_count,
              "chunk_size": options.chunk_size, "rows": options.rows, **({"version": version} if version else {})}
    job.setdefault("rows", "predictions")  # a run from before feature rows existed
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
