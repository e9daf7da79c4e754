"""One task from start to summary: pin, skip what earlier attempts wrote, classify the rest."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime

from imgclassify.runtime.registry import ModelRegistry
from imgclassify.settings import Settings
from imgclassify.store.objects import open_store

from .pipeline import classify_chunks, read_chunk_counts
from .plan import BatchOptions, check_input, chunked, completed_chunks, pin_job, pin_plan, task_dir
from .progress import Progress

log = logging.getLogger(__package__)  # "imgclassify.batch" in every part, and under python -m


def run_task(options: BatchOptions, settings: Settings) -> dict:
    """Classify this task's share of the images, skipping chunks already written; return the summary."""
    started = time.monotonic()
    registry = ModelRegistry.from_settings(settings, batches=True)  # one model, batches of --batch-size
    source = open_store(options.input, **settings.gcs_options())
    output = open_store(options.output, **settings.gcs_options())
    check_input(source)
    job = pin_job(output, source, options, registry)
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
        model, _ = registry.get(job["model"] + "@" + job["version"])  # this task's one model load
        if options.features:
            model.require_features()  # before any image is read: the message names publish migrate
        loaded, cpu_loaded = time.monotonic(), time.process_time()
        progress = Progress(len(images), len(images) - sum(map(len, todo.values())), fields,
                            options.log_every_seconds)
        try:
            counts, wrote = classify_chunks(model, source, output, todo, options, settings, job["top_k"], progress)
        finally:
            progress.close()
    finished, cpu_finished = time.monotonic(), time.process_time()
    for earlier in read_chunk_counts(output, options, sorted(done_before), options.download_concurrency):
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
