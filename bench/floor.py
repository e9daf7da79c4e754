"""The machine's floor for ``make bench``: one single-threaded loop of decode + preprocess + forward
pinned to each CPU, all run at once; their summed images per second are what the served
throughput is held against (issue 17's definition).

``python bench/floor.py BUCKET MODEL CPU SECONDS START`` is one loop: it opens MODEL from the
bucket (STORAGE_EMULATOR_HOST), pins itself to CPU, waits until the wall clock reaches START
(so every loop starts together), runs for SECONDS and prints ``{"images": N, "seconds": S}``.
:func:`machine_floor` starts one per CPU and sums them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def machine_floor(bucket: str, model: str, image: bytes, seconds: float = 6.0) -> dict:
    """Summed images/s of one pinned single-threaded loop per CPU of this process, run at once."""
    cpus = sorted(os.sched_getaffinity(0))
    photo = Path(os.environ.get("TMPDIR", "/tmp")) / f"floor-{os.getpid()}.jpg"
    photo.write_bytes(image)
    start = time.time() + 20  # every loop has imported and built its session by then
    try:
        loops = [subprocess.Popen([sys.executable, __file__, bucket, model, str(cpu), str(seconds), str(start),
                                   str(photo)], stdout=subprocess.PIPE, text=True) for cpu in cpus]
        results = [json.loads(loop.communicate(timeout=120)[0]) for loop in loops]
    finally:
        photo.unlink(missing_ok=True)
    per_cpu = [round(result["images"] / result["seconds"], 2) for result in results]
    return {"images_per_s": round(sum(per_cpu), 2), "per_cpu": per_cpu, "cpus": len(cpus)}


def _loop(bucket: str, model_name: str, cpu: int, seconds: float, start: float, photo: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from imgclassify.runtime.engines import EngineOptions
    from imgclassify.runtime.registry import ModelRegistry
    from imgclassify.store.objects import GcsStore

    os.sched_setaffinity(0, {cpu})
    registry = ModelRegistry.over(GcsStore(bucket), cache_budget_bytes=2**31, catalog_ttl_seconds=3600,
                                  engine_options=EngineOptions("onnxruntime", 1))
    model, _ = registry.get(model_name)
    image = photo.read_bytes()
    for _ in range(5):
        model.classify([model.prepare(image, max_pixels=10**8)], 5)
    time.sleep(max(0.0, start - time.time()))
    images, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        model.classify([model.prepare(image, max_pixels=10**8)], 5)
        images += 1
    return {"images": images, "seconds": time.perf_counter() - began}


if __name__ == "__main__":
    bucket, model_name, cpu, seconds, start, photo = sys.argv[1:7]
    print(json.dumps(_loop(bucket, model_name, int(cpu), float(seconds), float(start), Path(photo))))
