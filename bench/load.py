"""``make load``: a bounded load test of the whole local stack with locust, on 127.0.0.1.

Starts the emulator, both functions and the router, drives them with mixed models and
image sizes for a fixed time in two halves, and reports failures, p50/p99 latency of each
half and the classify instance's resident memory after warm-up, half-way and at the end.
Exits non-zero on any failed request or if memory grows by more than
``--max-rss-growth-mb`` over the second half (steady state).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_photos import photos  # noqa: E402

from devstack.emulator import StorageEmulator  # noqa: E402
from devstack.processes import rss_kib  # noqa: E402
from devstack.stack import LocalStack  # noqa: E402


def say(line: str) -> None:
    """Progress, at once: the run takes minutes."""
    print(line, flush=True)


def write_images(directory: Path) -> None:
    """The benchmark's photos as files for locust: small.jpg, large.jpg (12 MP), alpha.png."""
    for (data, _), name in zip(photos().values(), ("small.jpg", "large.jpg", "alpha.png"), strict=True):
        (directory / name).write_bytes(data)


def warm_up(url: str, images: Path, users: int) -> None:
    """Every model on every kind of image, as concurrently as the load will be, before measuring."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(model, name, kind) for model in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
            for name, kind in (("small.jpg", "image/jpeg"), ("large.jpg", "image/jpeg"), ("alpha.png", "image/png"))]

    def post(job: tuple[str, str, str]) -> None:
        model, name, kind = job
        response = requests.post(f"{url}/v1/models/{model}:classify", data=(images / name).read_bytes(),
                                 headers={"Content-Type": kind}, timeout=120)
        response.raise_for_status()

    with ThreadPoolExecutor(users) as pool:
        list(pool.map(post, jobs * 2))


def half_duration(duration: str) -> str:
    """Half of a locust run time like ``120s`` or ``3m``, in seconds."""
    seconds = int(duration[:-1]) * (60 if duration.endswith("m") else 1) if duration[-1] in "sm" else int(duration)
    return f"{max(1, seconds // 2)}s"


def run_locust(url: str, images: Path, users: int, duration: str, out: Path) -> dict:
    env = {**os.environ, "LOAD_IMAGES_DIR": str(images)}
    command = [str(Path(sys.executable).with_name("locust")), "-f", str(REPO / "bench" / "locustfile.py"),
               "--headless", "--users", str(users), "--spawn-rate", str(users), "--run-time", duration,
               "--host", url, "--csv", str(out / "load"), "--only-summary", "--stop-timeout", "30"]
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(command, env=env, check=False, timeout=3600, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    rows = list(csv.DictReader(io.StringIO((out / "load_stats.csv").read_text())))
    total = next(row for row in rows if row["Name"] == "Aggregated")
    return {
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "per_endpoint": {row["Name"]: {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
                                       "p50_ms": float(row["50%"]), "p99_ms": float(row["99%"])}
                         for row in rows if row["Name"] != "Aggregated"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", default="120s", help="locust run time, e.g. 120s or 3m")
    parser.add_argument("--max-rss-growth-mb", type=float, default=30.0)
    parser.add_argument("--output", type=Path, default=REPO / ".local" / "load.json")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="load-"))
    write_images(work)
    with StorageEmulator() as emulator:
        os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
        stack = LocalStack(bucket="load-models", emulator=emulator, log_dir=work)
        try:
            say(f"starting the local stack (logs in {work})")
            stack.start(log=lambda _: None)
            say("warming up: every model on every photo")
            warm_up(stack.url, work, args.users)
            classify_pid = stack.functions["classify"].pid
            halves, rss = [], [rss_kib(classify_pid) / 1024]
            for half in ("first", "second"):
                say(f"{half} half: {args.users} users for {half_duration(args.duration)}")
                halves.append(run_locust(stack.url, work, args.users, half_duration(args.duration), work / half))
                rss.append(rss_kib(classify_pid) / 1024)
                say(f"  {halves[-1]['requests']} requests, {halves[-1]['failures']} failed; "
                    f"classify RSS {rss[-1]:.0f} MB")
        finally:
            stack.stop()
    result = {"users": args.users, "duration": args.duration, "halves": halves,
              "classify_rss_mb": {"start": round(rss[0]), "middle": round(rss[1]), "end": round(rss[2])}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    for name, half in zip(("first half", "second half"), halves, strict=True):
        print(f"{name}: {half['requests']} requests, {half['failures']} failed, p50 {half['p50_ms']:.0f} ms, "
              f"p99 {half['p99_ms']:.0f} ms ({args.users} users)")
        for endpoint, row in half["per_endpoint"].items():
            print(f"  {endpoint:<28} {row['requests']:>6} req  {row['failures']:>3} failed"
                  f"  p50 {row['p50_ms']:>6.0f} ms  p99 {row['p99_ms']:>6.0f} ms")
    print(f"classify RSS: {rss[0]:.0f} MB after warm-up, {rss[1]:.0f} MB half-way, {rss[2]:.0f} MB at the end")
    failures = sum(half["failures"] for half in halves)
    growth = rss[2] - rss[1]
    ok = failures == 0 and growth <= args.max_rss_growth_mb
    print("PASS" if ok else f"FAIL (failures {failures}, RSS growth over the second half {growth:.0f} MB)")
    print(f"results: {args.output} (locust's CSV files in {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
