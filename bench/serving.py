"""``make bench``: what the serving path costs over the bare model, as ratios from one run.

Starts its own storage emulator and functions-framework instances on 127.0.0.1, uses real
photos at realistic sizes and the real EfficientNet-Lite models, and measures:

1. warm overhead: HTTP p50/p99 against the same decode+preprocess+forward in-process;
2. throughput with 1, 4, 8, 16 concurrent clients against in-process batch-1 and best-batch;
3. cold start, process start to first 200, split into phases, against a minimal script
   (import torch, read the weights from local disk, build, load, one forward), and with
   16 concurrent requests arriving cold;
4. a 12-megapixel JPEG against the small photo, end to end;
5. resident memory with 1 and 3 models against their weight bytes, and under an LRU budget
   smaller than two models while models are cycled.

Every figure is the median over ``--repeats`` runs in this one invocation. Prints a table and
writes JSON (default ``.local/bench.json``). ``--smoke`` runs a tiny version for the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_photos import photos  # noqa: E402

from devstack.emulator import StorageEmulator  # noqa: E402
from devstack.processes import free_port, rss_kib, spawn, stop, wait_until_answers  # noqa: E402
from devstack.stack import LocalStack, function_command  # noqa: E402

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


# --- inputs ----------------------------------------------------------------------------------

def median(values) -> float:
    return round(statistics.median(values), 2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 2)


# --- in-process baselines ---------------------------------------------------------------------

def in_process(bucket: str, images: dict, count: int) -> dict:
    """The bare model path in this process: decode + preprocess + forward, no HTTP."""
    from imgclassify.registry import ModelRegistry
    from imgclassify.storage import GcsStore

    model, _ = ModelRegistry(GcsStore(bucket), cache_budget_bytes=2**31, catalog_ttl_seconds=3600).get(MODELS[0])

    def once(data: bytes) -> float:
        started = time.perf_counter()
        model.classify([model.prepare(data, max_pixels=10**8)], 5)
        return (time.perf_counter() - started) * 1000

    result = {}
    for name, (data, _) in images.items():
        for _ in range(3):
            once(data)
        result[f"{name}_p50_ms"] = median([once(data) for _ in range(count if name == "small" else count // 4)])
    small = images["small"][0]
    started = time.perf_counter()
    for _ in range(count):
        once(small)
    result["batch1_images_per_s"] = round(count / (time.perf_counter() - started), 2)
    prepared = model.prepare(small, max_pixels=10**8)
    by_batch = {}
    for batch in (1, 2, 4, 8):
        inputs = [prepared] * batch
        model.classify(inputs, 5)
        started = time.perf_counter()
        rounds = max(2, count // (2 * batch))
        for _ in range(rounds):
            inputs = [model.prepare(small, max_pixels=10**8) for _ in range(batch)]
            model.classify(inputs, 5)
        by_batch[batch] = round(rounds * batch / (time.perf_counter() - started), 2)
    result["images_per_s_by_batch"] = by_batch
    result["best_batch"], result["best_batch_images_per_s"] = max(by_batch.items(), key=lambda item: item[1])
    return result


# --- HTTP ---------------------------------------------------------------------------------------

def post(session: requests.Session, url: str, image: tuple[bytes, str], *, keep_alive: bool = True) -> float:
    started = time.perf_counter()
    headers = {"Content-Type": image[1]} if keep_alive else {"Content-Type": image[1], "Connection": "close"}
    response = session.post(url, data=image[0], headers=headers, timeout=300)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
    return elapsed


def warm_http(url: str, images: dict, count: int) -> dict:
    session = requests.Session()
    result = {}
    for name, image in images.items():
        for _ in range(3):
            post(session, url, image)
        latencies = [post(session, url, image) for _ in range(count if name == "small" else count // 4)]
        result[f"{name}_p50_ms"] = median(latencies)
        result[f"{name}_p99_ms"] = percentile(latencies, 99)
    return result


def throughput(url: str, image: tuple[bytes, str], clients: int, per_client: int) -> float:
    sessions = [requests.Session() for _ in range(clients)]
    for session in sessions:
        post(session, url, image, keep_alive=False)
    barrier = threading.Barrier(clients)

    def run(session: requests.Session) -> None:
        barrier.wait(timeout=60)
        for _ in range(per_client):
            # More clients than server threads: gunicorn may close an idle keep-alive
            # connection just as a client reuses it, so each request has its own.
            post(session, url, image, keep_alive=False)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, sessions))
    return round(clients * per_client / (time.perf_counter() - started), 2)


# --- cold start -----------------------------------------------------------------------------------

def cold_start(stack: LocalStack, image: tuple[bytes, str], log_dir: Path, clients: int = 1) -> dict:
    """Spawn a fresh classify instance; time process start to the first 200 of each client."""
    port = free_port()
    log_path = log_dir / f"cold-{port}.log"
    url = f"http://127.0.0.1:{port}/v1/classify"
    started = time.monotonic()
    with open(log_path, "wb") as output:
        process = spawn(function_command("classify", port), env=stack.env(), stdout=output, stderr=output)

    def first_answer(_) -> float:
        session = requests.Session()
        while time.monotonic() - started < 300:
            try:
                if session.post(url, data=image[0], headers={"Content-Type": image[1]}, timeout=300).ok:
                    return (time.monotonic() - started) * 1000
            except requests.ConnectionError:
                time.sleep(0.01)
        raise TimeoutError("no answer within 300 s")

    try:
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(first_answer, range(clients)))
    finally:
        stop(process)
    phases = {}
    for line in log_path.read_text().splitlines():
        if line.startswith("{") and "startup_ms" in line:
            phases = json.loads(line)["startup_ms"]
    return {"first_answer_ms": round(min(answers)), "last_answer_ms": round(max(answers)), "phases_ms": phases}


MINIMAL_SCRIPT = """
import sys, time
started = time.perf_counter()
import torch
from efficientnet_lite_pytorch import EfficientNet
from safetensors.torch import load
data = open(sys.argv[1], "rb").read()
model = EfficientNet.from_name("efficientnet-lite0")
model.load_state_dict(load(data))
model.eval()
with torch.inference_mode():
    model(torch.zeros(1, 3, 224, 224))
"""


def minimal_cold_start(weights_path: Path) -> float:
    """Process start to one forward of a script that only does the unavoidable parts."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", MINIMAL_SCRIPT, str(weights_path)], check=True, timeout=300)
    return round((time.monotonic() - started) * 1000)


# --- memory -----------------------------------------------------------------------------------------

def memory(stack: LocalStack, image: tuple[bytes, str], weights_bytes: dict[str, int], cycles: int) -> dict:
    """Worker RSS with 0, 1 and 3 models; and its spread while an LRU smaller than two models cycles."""
    def fresh(env: dict) -> tuple[subprocess.Popen, str]:
        port = free_port()
        process = spawn(function_command("classify", port), env={**stack.env(), **env},
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        wait_until_answers(url + "/", process, timeout=180)
        return process, url

    session = requests.Session()
    process, url = fresh({"PRELOAD_DEFAULT_MODEL": "false", "TORCH_THREADS": str(os.cpu_count())})
    try:
        session.post(url + "/v1/models/nope:classify", data=b"x", headers={"Content-Type": "image/jpeg"})
        baseline = rss_kib(process.pid, children_only=True)
        post(session, f"{url}/v1/models/{MODELS[0]}:classify", image)
        one = rss_kib(process.pid, children_only=True)
        for model in MODELS[1:]:
            post(session, f"{url}/v1/models/{model}:classify", image)
        three = rss_kib(process.pid, children_only=True)
    finally:
        stop(process)
    process, url = fresh({"PRELOAD_DEFAULT_MODEL": "false", "CACHE_BUDGET_MB": "30"})
    samples = []
    try:
        for index in range(cycles * len(MODELS)):
            post(session, f"{url}/v1/models/{MODELS[index % len(MODELS)]}:classify", image)
            samples.append(rss_kib(process.pid, children_only=True))
    finally:
        stop(process)
    settled = samples[len(samples) // 3:]
    mib = 1024
    return {
        "baseline_mb": round(baseline / mib), "one_model_mb": round(one / mib), "three_models_mb": round(three / mib),
        "weights_mb": {name: round(size / 2**20, 1) for name, size in weights_bytes.items()},
        "one_model_ratio": round((one - baseline) * 1024 / weights_bytes[MODELS[0]], 2),
        "three_models_ratio": round((three - baseline) * 1024 / sum(weights_bytes.values()), 2),
        # models two and three alone: what each further model costs once the runtime is warm
        "added_models_ratio": round((three - one) * 1024 / sum(list(weights_bytes.values())[1:]), 2),
        "lru_cycling_mb": {"min": round(min(settled) / mib), "max": round(max(settled) / mib)},
    }


# --- report ------------------------------------------------------------------------------------------

def summarise(runs: list[dict]) -> dict:
    """Median of every numeric leaf over the runs."""
    first = runs[0]
    if isinstance(first, dict):
        return {key: summarise([run[key] for run in runs]) for key in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return median(runs)
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=60, help="sequential requests per latency figure")
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run (for the tests)")
    parser.add_argument("--output", type=Path, default=REPO / ".local" / "bench.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.requests = 1, 8
    levels = (1, 4) if args.smoke else (1, 4, 8, 16)
    per_client = 2 if args.smoke else 8

    images = photos()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    runs = []
    with StorageEmulator() as emulator:
        os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
        stack = LocalStack(bucket="bench-models", emulator=emulator, log_dir=work,
                           bundled_models=[MODELS[0]] if args.smoke else list(MODELS))
        stack.start_storage(log=lambda _: None)
        from imgclassify.catalog import weights_object
        from imgclassify.storage import GcsStore

        store = GcsStore("bench-models")
        weights_bytes = {m: store.info(weights_object(m, "1")).size for m in (stack.bundled_models or MODELS)}
        weights_path = work / "lite0.safetensors"
        weights_path.write_bytes(store.read(weights_object(MODELS[0], "1")).data)
        for _ in range(args.repeats):
            run: dict = {"in_process": in_process("bench-models", images, args.requests)}
            url = stack.start_function("classify") + "/v1/classify"
            try:
                run["http"] = warm_http(url, images, args.requests)
                run["http"]["images_per_s_by_clients"] = {
                    clients: throughput(url, images["small"], clients, per_client) for clients in levels}
            finally:
                stop(stack.functions.pop("classify"))
            run["cold"] = cold_start(stack, images["small"], work)
            run["cold_16_concurrent"] = cold_start(stack, images["small"], work, clients=4 if args.smoke else 16)
            run["minimal_cold_ms"] = minimal_cold_start(weights_path)
            runs.append(run)
        if not args.smoke:
            memory_result = memory(stack, images["small"], weights_bytes, cycles=4)

    result = summarise(runs)
    if not args.smoke:
        result["memory"] = memory_result
    local, http = result["in_process"], result["http"]
    by_clients = http["images_per_s_by_clients"]
    result["ratios"] = {
        "warm_overhead_p50": round(http["small_p50_ms"] / local["small_p50_ms"], 3),
        **{f"throughput_{c}_clients_vs_batch1": round(by_clients[c] / local["batch1_images_per_s"], 3)
           for c in by_clients},
        "throughput_8_clients_vs_best_batch": round(by_clients.get(8, by_clients[max(by_clients)])
                                                    / local["best_batch_images_per_s"], 3),
        "cold_start_vs_minimal": round(result["cold"]["first_answer_ms"] / result["minimal_cold_ms"], 3),
        "cold_16_concurrent_vs_minimal": round(result["cold_16_concurrent"]["last_answer_ms"]
                                               / result["minimal_cold_ms"], 3),
        "12mp_vs_small_http_p50": round(http["12mp_p50_ms"] / http["small_p50_ms"], 3),
    }
    if not args.smoke:
        result["ratios"]["rss_3_models_over_baseline_vs_weights"] = result["memory"]["three_models_ratio"]
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                         "repeats": args.repeats}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nJSON: {args.output}")
    return 0


def print_table(result: dict) -> None:
    machine, ratios = result["machine"], result["ratios"]
    local, http = result["in_process"], result["http"]
    print(f"machine: {machine['cpus']} CPUs, {machine['processor']}, Python {machine['python']}, "
          f"{machine['platform']}; medians of {machine['repeats']} runs")
    rows = [
        ("warm p50, small JPEG", f"{http['small_p50_ms']} ms (p99 {http['small_p99_ms']})",
         f"{local['small_p50_ms']} ms in-process", ratios["warm_overhead_p50"], "<= 1.05"),
    ]
    for clients, rate in http["images_per_s_by_clients"].items():
        rows.append((f"throughput, {clients} clients", f"{rate} img/s",
                     f"{local['batch1_images_per_s']} img/s batch-1",
                     ratios[f"throughput_{clients}_clients_vs_batch1"], ">= 1.2 at 8"))
    rows += [
        ("  vs best in-process batch", "", f"{local['best_batch_images_per_s']} img/s (batch {local['best_batch']})",
         ratios["throughput_8_clients_vs_best_batch"], ""),
        ("cold start to first 200", f"{result['cold']['first_answer_ms']} ms",
         f"{result['minimal_cold_ms']} ms minimal", ratios["cold_start_vs_minimal"], "<= 1.25"),
        ("  16 concurrent, last answer", f"{result['cold_16_concurrent']['last_answer_ms']} ms", "",
         ratios["cold_16_concurrent_vs_minimal"], ""),
        ("12 MP JPEG p50", f"{http['12mp_p50_ms']} ms", f"{http['small_p50_ms']} ms small",
         ratios["12mp_vs_small_http_p50"], "<= 2"),
        ("PNG with alpha p50", f"{http['alpha_png_p50_ms']} ms", f"{local['alpha_png_p50_ms']} ms in-process", "", ""),
    ]
    if "memory" in result:
        memory = result["memory"]
        rows += [
            ("RSS, 1 model", f"{memory['one_model_mb']} MB", f"{memory['baseline_mb']} MB baseline",
             memory["one_model_ratio"], ""),
            ("RSS, 3 models over baseline / weights", f"{memory['three_models_mb']} MB",
             f"{sum(memory['weights_mb'].values()):.0f} MB weights", memory["three_models_ratio"], "<= 1.3"),
            ("  models 2 and 3 only / their weights", "", "", memory["added_models_ratio"], ""),
            ("RSS, LRU < 2 models, cycling", f"{memory['lru_cycling_mb']['min']}-{memory['lru_cycling_mb']['max']} MB",
             "", "", "bounded"),
        ]
    print(f"\n{'measure':<40} {'served':<24} {'reference':<32} {'ratio':>7}  target")
    for name, served, reference, ratio, target in rows:
        print(f"{name:<40} {served:<24} {reference:<32} {ratio!s:>7}  {target}")
    phases = result["cold"]["phases_ms"]
    print("\ncold start phases (ms): " + ", ".join(f"{key} {value}" for key, value in phases.items()))


if __name__ == "__main__":
    raise SystemExit(main())
