"""Batch classification: one model applied to every image under a prefix, split over many tasks.

Runs as a Cloud Run job (each task is told ``CLOUD_RUN_TASK_INDEX`` and ``CLOUD_RUN_TASK_COUNT``)
or locally (``imgclassify-batch`` / ``python -m imgclassify.batch``). Labels come from the
same decode, preprocessing and top-k code as ``/v1/classify``. The output layout and the
resume rules are described in ``docs/batch.md``:

    OUTPUT/job.json                                   parameters every task agrees on (model version pinned)
    OUTPUT/task-00003-of-00010/plan.json              this task's images, in order, fixed by its first attempt
    OUTPUT/task-00003-of-00010/chunk-000000.jsonl     one JSON line per image, written once (generation 0)
    OUTPUT/task-00003-of-00010/summary.json           counts, errors, throughput (rewritten by each attempt)

The parts: :mod:`.plan` (listing, sharding, chunks, the pinned job and plan),
:mod:`.pipeline` (prefetching, batches, chunk writes), :mod:`.progress`, :mod:`.task` (one task
from start to summary) and :mod:`.cli` (arguments and exit status).

Import rule: :mod:`imgclassify.runtime` and below, never serving or the publisher: the job
reads its images through :meth:`imgclassify.store.objects.ObjectStore.read_limited` and the ``top_k``
rule of :mod:`imgclassify.top_k`, as the API does.
"""

from .cli import main, parse_args
from .pipeline import encode_rows, write_chunk
from .plan import (
    BatchConfigError,
    BatchOptions,
    chunk_object,
    chunked,
    completed_chunks,
    list_images,
    pin_job,
    shard_of,
    task_dir,
    task_images,
)
from .task import run_task

__all__ = ["BatchConfigError", "BatchOptions", "chunk_object", "chunked", "completed_chunks", "encode_rows",
           "list_images", "main", "parse_args", "pin_job", "run_task", "shard_of", "task_dir", "task_images",
           "write_chunk"]
