"""Cold start and warm latency of the classify function, as measured here, in one run.

Starts its own storage emulator and functions-framework on 127.0.0.1; prints a table and
writes JSON. Run with ``make bench`` (not part of ``make test``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devstack.emulator import StorageEmulator  # noqa: E402
from devstack.stack import LocalStack  # noqa: E402
from imgclassify.images import decode_image  # noqa: E402
from imgclassify.registry import ModelRegistry  # noqa: E402
from imgclassify.storage import GcsStore  # noqa: E402


def photo_jpeg() -> bytes:
    """scikit-image's chelsea (451x300), the small-photo case."""
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def cold_start(stack: LocalStack, image: bytes, log_dir: Path) -> dict:
    """Spawn a fresh classify instance; time process start to the first 200 answer."""
    from devstack.processes import free_port, spawn, stop
    from devstack.stack import function_command

    port = free_port()
    log_path = log_dir / f"cold-{port}.log"
    started = time.monotonic()
    with open(log_path, "wb") as output:
        process = spawn(function_command("classify", port), env=stack.env(), stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}/v1/classify"
    try:
        while True:
            try:
                response = requests.post(url, data=image, headers={"Content-Type": "image/jpeg"}, timeout=60)
                if response.status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.02)
            if time.monotonic() - started > 180:
                raise TimeoutError("no answer within 180 s")
        total = (time.monotonic() - started) * 1000
    finally:
        stop(process)
    phases = {}
    for line in log_path.read_text().splitlines():
        if line.startswith("{") and "startup_ms" in line:
            phases = json.loads(line)["startup_ms"]
    return {"first_answer_ms": round(total), "phases_ms": phases}


def warm_latency(url: str, image: bytes, requests_count: int) -> list[float]:
    session = requests.Session()
    for _ in range(5):
        session.post(url, data=image, headers={"Content-Type": "image/jpeg"}, timeout=60)
    latencies = []
    for _ in range(requests_count):
        started = time.perf_counter()
        response = session.post(url, data=image, headers={"Content-Type": "image/jpeg"}, timeout=60)
        latencies.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return latencies


def in_process_latency(bucket: str, image: bytes, count: int) -> list[float]:
    registry = ModelRegistry(GcsStore(bucket), cache_budget_bytes=2**30, catalog_ttl_seconds=600)
    model, _ = registry.get("efficientnet_lite0")
    spec = model.manifest.preprocessing
    latencies = []
    for index in range(count + 5):
        started = time.perf_counter()
        decoded = decode_image(image, max_pixels=50_000_000, min_side=spec.resize)
        model.classify([model.preprocess(decoded)], 5)
        if index >= 5:
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--output", type=Path, default=REPO / ".local" / "bench-serving.json")
    args = parser.parse_args()

    image = photo_jpeg()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    with StorageEmulator() as emulator:
        os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
        stack = LocalStack(bucket="bench-models", emulator=emulator, log_dir=log_dir,
                           bundled_models=["efficientnet_lite0"])
        stack.start_storage(log=lambda _: None)
        colds = [cold_start(stack, image, log_dir) for _ in range(args.cold_runs)]
        url = stack.start_function("classify") + "/v1/classify"
        try:
            http = warm_latency(url, image, args.requests)
        finally:
            stack.stop()
        local = in_process_latency("bench-models", image, args.requests)

    cold_median = statistics.median(c["first_answer_ms"] for c in colds)
    phase_names = colds[0]["phases_ms"].keys()
    phases = {name: statistics.median(c["phases_ms"].get(name) or 0 for c in colds) for name in phase_names}
    result = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "image": "chelsea 451x300 JPEG", "model": "efficientnet_lite0",
        "cold_start_ms": {"median_first_answer": cold_median, "runs": colds, "median_phases": phases},
        "warm_http_ms": {"p50": round(statistics.median(http), 1), "p99": round(percentile(http, 99), 1)},
        "in_process_ms": {"p50": round(statistics.median(local), 1)},
    }
    result["warm_overhead_ratio"] = round(result["warm_http_ms"]["p50"] / result["in_process_ms"]["p50"], 3)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))

    print(f"machine: {result['machine']}")
    print(f"cold start, process start -> first 200 (median of {len(colds)}): {cold_median:.0f} ms")
    for name, value in phases.items():
        print(f"  {name:<20} {value:>8.1f} ms")
    print(f"warm HTTP p50 {result['warm_http_ms']['p50']} ms, p99 {result['warm_http_ms']['p99']} ms")
    print(f"in-process decode+preprocess+forward p50 {result['in_process_ms']['p50']} ms")
    print(f"warm overhead ratio (HTTP p50 / in-process p50): {result['warm_overhead_ratio']}")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
