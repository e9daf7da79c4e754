"""Throughput of one batch-job task against the same work done in process with ONNX Runtime.

Starts its own storage emulator on 127.0.0.1, publishes Lite0, uploads photo-sized JPEGs,
then, ``--repeats`` times, measures:

  1. in process: decode + preprocess the photos and run them in batches of the job's size,
     one thread, no storage (the floor the job is held to);
  2. one task of the job (``python -m imgclassify.batch``, a separate process, as on Cloud Run):
     images per second from its summary (model load excluded; download, decode, preprocess,
     forward and writing the results included).

Reports the best of the repeats for each (on a shared machine, other work only ever slows a
run down) and their ratio, plus CPU seconds per image, which contention barely changes.
``ENGINE_THREADS`` applies to both sides. Run with ``.venv/bin/python bench/batch.py``
(not part of ``make test``); JSON goes to ``.local/bench-batch.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devstack.emulator import StorageEmulator  # noqa: E402
from imgclassify.publish.sources import publish_bundled  # noqa: E402
from imgclassify.runtime.engines import EngineOptions  # noqa: E402
from imgclassify.runtime.registry import ModelRegistry  # noqa: E402
from imgclassify.store.objects import GcsStore  # noqa: E402

MODEL = "efficientnet_lite0"
BUCKET = "bench-batch"


def photo_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """``count`` different 640x480 JPEGs (random crops of scikit-image's photos), like web photos."""
    from PIL import Image
    from skimage import data

    sources = [Image.fromarray(getattr(data, name)()) for name in ("chelsea", "coffee", "astronaut", "rocket")]
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        source = sources[index % len(sources)]
        width, height = source.size
        crop_width, crop_height = int(width * rng.uniform(0.6, 1)), int(height * rng.uniform(0.6, 1))
        left, top = int(rng.integers(0, width - crop_width + 1)), int(rng.integers(0, height - crop_height + 1))
        image = source.crop((left, top, left + crop_width, top + crop_height)).resize((640, 480), Image.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


def in_process_throughput(model, images: list[bytes], batch_size: int, seconds: float) -> dict:
    """Images per second, and CPU seconds per image, of decode + preprocess + batched forward."""
    def one_batch(start: int) -> int:
        chosen = [images[(start + offset) % len(images)] for offset in range(batch_size)]
        model.classify([model.prepare(data, max_pixels=10**8) for data in chosen], 5)
        return batch_size

    one_batch(0)
    started, cpu_started, images_done = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - started < seconds:
        images_done += one_batch(images_done)
    images = images_done
    return {"images_per_second": round(images / (time.perf_counter() - started), 2),
            "cpu_seconds_per_image": round((time.process_time() - cpu_started) / images, 4)}


def run_task(emulator_url: str, output: str, args: argparse.Namespace) -> dict:
    env = {**os.environ, "STORAGE_EMULATOR_HOST": emulator_url, "MODEL_STORE": f"gs://{BUCKET}",
           "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "imgclassify.batch", f"gs://{BUCKET}/in/", output, "--model", MODEL,
               "--batch-size", str(args.batch_size), "--download-concurrency", str(args.download_concurrency),
               "--chunk-size", str(args.chunk_size)]
    started = time.monotonic()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, timeout=3600)
    wall = time.monotonic() - started
    name = output.removeprefix(f"gs://{BUCKET}/") + "/task-00000-of-00001/summary.json"
    attempt = json.loads(GcsStore(BUCKET).read(name).data)["this_attempt"]
    return {"images_per_second": attempt["images_per_second"],
            "cpu_seconds_per_image": round(attempt["cpu_seconds"] / attempt["images"], 4),
            "model_load_seconds": attempt["model_load_seconds"],
            "images_per_second_with_start": round(attempt["images"] / wall, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--download-concurrency", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--forward-seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / ".local" / "bench-batch.json")
    args = parser.parse_args(argv)
    images = photo_jpegs(args.images)
    with StorageEmulator() as emulator:
        os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
        emulator.create_bucket(BUCKET)
        store = GcsStore(BUCKET)
        publish_bundled(store, [MODEL], log=lambda _: None)
        inputs = GcsStore(BUCKET, "in")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: inputs.write(f"{item[0]:05d}.jpg", item[1]), enumerate(images)))

        threads = int(os.environ.get("ENGINE_THREADS", "0"))
        model, _ = ModelRegistry.over(store, cache_budget_bytes=2**31, catalog_ttl_seconds=3600,
                                 engine_options=EngineOptions(threads=threads).for_batches(),  # as the job
                                 ).get(MODEL)
        forwards, tasks = [], []
        for repeat in range(args.repeats):
            forwards.append(in_process_throughput(model, images, args.batch_size, args.forward_seconds))
            tasks.append(run_task(emulator.url, f"gs://{BUCKET}/out-{repeat}", args))
            print(f"run {repeat + 1}: forward {forwards[-1]['images_per_second']} img/s, "
                  f"task {tasks[-1]['images_per_second']} img/s, load average {os.getloadavg()[0]:.1f}", flush=True)

    best_forward = max(forwards, key=lambda run: run["images_per_second"])
    best_task = max(tasks, key=lambda run: run["images_per_second"])
    forward_cpu = statistics.median(run["cpu_seconds_per_image"] for run in forwards)
    task_cpu = statistics.median(run["cpu_seconds_per_image"] for run in tasks)
    result = {
        "images": args.images, "batch_size": args.batch_size, "download_concurrency": args.download_concurrency,
        "engine_threads": os.environ.get("ENGINE_THREADS") or "one per CPU", "repeats": args.repeats,
        "forward": forwards, "task": tasks,
        "best_forward_images_per_second": best_forward["images_per_second"],
        "best_task_images_per_second": best_task["images_per_second"],
        "ratio_task_vs_forward": round(best_task["images_per_second"] / best_forward["images_per_second"], 3),
        "cpu_seconds_per_image": {"forward": forward_cpu, "task": task_cpu,
                                  "ratio_forward_vs_task": round(forward_cpu / task_cpu, 3)},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average": os.getloadavg()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"\n{args.images} photo-sized JPEGs (640x480), {MODEL}, batch {args.batch_size}, "
          f"{args.download_concurrency} download threads, engine threads {result['engine_threads']}, "
          f"{os.cpu_count()} CPUs; best of {args.repeats}")
    print(f"in process (ONNX Runtime): {best_forward['images_per_second']:8.2f} img/s  "
          f"{forward_cpu * 1000:6.1f} CPU ms/img")
    print(f"one job task:              {best_task['images_per_second']:8.2f} img/s  {task_cpu * 1000:6.1f} CPU ms/img  "
          f"(model load {best_task['model_load_seconds']} s; {best_task['images_per_second_with_start']} img/s "
          f"counting process start and load)")
    print(f"ratio task / in-process:      {result['ratio_task_vs_forward']:8.3f}   "
          f"(CPU cost per image, forward / task: {result['cpu_seconds_per_image']['ratio_forward_vs_task']})")
    print(f"\nJSON: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
