"""``make bench``: what the serving path costs over the bare engine, as ratios from one run.

Starts its own storage emulator and servers on 127.0.0.1, uses real photos and the real
EfficientNet-Lite models, and measures, every figure the median over ``--repeats`` rounds:

1. in-process ONNX Runtime: decode + preprocess + forward of one photo, and the best batched
   throughput (the floor every served figure is divided by);
2. the service (functions-framework, ONNX Runtime): warm p50/p99 at one client, throughput at
   1, 8 and 16 clients, CPU-seconds per image, cold start split into phases;
3. the same service with ``ENGINE=torch``, and the simplest servers a user could write around
   the same model.onnx (functions-framework, and Flask under gunicorn), side by side;
4. fidelity: the served top-5 of real photos against the torch engine's;
5. an A/B of the engine's intra-op threads: one per forward (the default) against one per CPU;
6. a warm request broken into its parts, in process;
7. resident memory with 3 models over a no-model baseline, against their ONNX bytes;
8. optionally (``--bundle-size``, needs PyPI) the classify bundle's installed size.

Prints a table and writes JSON (default ``.local/bench.json``). ``--smoke`` runs a tiny version.
"""

from __future__ import annotations

import argparse
import contextlib
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
PEERS = REPO / "bench" / "peers"
# Cloud Run, request-based billing, Tier 1 regions, as published on https://cloud.google.com/run/pricing
# (read 2026-12-01): $0.000024 per vCPU-second, $0.0000025 per GiB-second, $0.40 per million requests.
PRICE = {"vcpu_second": 0.000024, "gib_second": 0.0000025, "million_requests": 0.40, "date": "2026-12-01"}
CLASSIFY_MEMORY_GIB, CLASSIFY_VCPUS = 4.0, 2   # infra/terraform's defaults for the classify function


def median(values) -> float:
    return round(statistics.median(values), 2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 2)


# --- in process --------------------------------------------------------------------------------

def open_model(bucket: str, name: str = MODELS[0], engine: str = "onnxruntime"):
    from imgclassify.runtime.engines import EngineOptions
    from imgclassify.runtime.registry import ModelRegistry
    from imgclassify.store.objects import GcsStore

    registry = ModelRegistry.over(GcsStore(bucket), cache_budget_bytes=2**31, catalog_ttl_seconds=3600,
                             engine_options=EngineOptions(engine))
    model, _ = registry.get(name)
    model.network()
    return model


def in_process(model, image: bytes, count: int) -> dict:
    """The bare path in this process: decode + preprocess + forward, no HTTP."""
    def once() -> float:
        started = time.perf_counter()
        model.classify([model.prepare(image, max_pixels=10**8)], 5)
        return (time.perf_counter() - started) * 1000

    for _ in range(5):
        once()
    result = {"p50_ms": median([once() for _ in range(count)])}
    by_batch = {}
    for batch in (1, 2, 4, 8):
        rounds = max(2, count // batch)
        started = time.perf_counter()
        for _ in range(rounds):
            model.classify([model.prepare(image, max_pixels=10**8) for _ in range(batch)], 5)
        by_batch[batch] = round(rounds * batch / (time.perf_counter() - started), 2)
    result["images_per_s_by_batch"] = by_batch
    result["best_batch"], result["best_images_per_s"] = max(by_batch.items(), key=lambda item: item[1])
    return result


def request_profile(model, image: bytes, count: int, env: dict) -> dict:
    """One warm request's parts, each timed alone in this process (medians, ms)."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    from imgclassify.imaging.decode import decode_image
    from imgclassify.imaging.preprocess import preprocess
    from imgclassify.runtime.scores import scores, top_k
    from imgclassify.serving.bootstrap import create_http_app
    from imgclassify.serving.request_parsing import parse_classify_request
    from imgclassify.settings import Settings

    settings = Settings.from_env({**os.environ, **env, "PRELOAD_DEFAULT_MODEL": "false"})
    app = create_http_app("classify", settings)
    spec = model.manifest.preprocessing

    def request() -> Request:
        return Request(EnvironBuilder(path="/v1/classify", method="POST", data=image,
                                      content_type="image/jpeg").get_environ())

    decoded = decode_image(image, max_pixels=10**8, min_side=spec.resize)
    prepared = preprocess(decoded, spec)
    outputs = model.outputs([prepared])
    parts = {
        "werkzeug_request": lambda: request().get_data(),
        "parse_request": lambda: parse_classify_request(request(), path_model=None,
                                                        max_bytes=settings.max_request_bytes,
                                                        max_images=settings.max_images_per_request),
        "decode": lambda: decode_image(image, max_pixels=10**8, min_side=spec.resize),
        "preprocess": lambda: preprocess(decoded, spec),
        "forward": lambda: model.outputs([prepared]),
        "scores_top_k": lambda: top_k(scores(outputs, "logits"), model.manifest.labels, 5),
        "whole_app_in_process": lambda: app(request()),
    }
    app(request())
    result = {}
    for name, part in parts.items():
        for _ in range(3):
            part()
        timings = []
        for _ in range(count):
            started = time.perf_counter()
            part()
            timings.append((time.perf_counter() - started) * 1000)
        result[name] = round(statistics.median(timings), 3)
    return result


# --- servers -----------------------------------------------------------------------------------

class Server:
    """A server process started from nothing; ``first_answer_ms`` is its cold start."""

    def __init__(self, args: list[str], env: dict, path: str, image: tuple[bytes, str], cwd: Path | None = None,
                 log: Path | None = None) -> None:
        self.port = free_port()
        args = [arg.replace("{port}", str(self.port)) for arg in args]
        self.url = f"http://127.0.0.1:{self.port}{path}"
        started = time.monotonic()
        output = open(log, "ab") if log else subprocess.DEVNULL
        self.process = spawn(args, env={**os.environ, **env}, cwd=cwd, stdout=output, stderr=output)
        self.log = log
        session = requests.Session()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with {self.process.returncode}")
            if time.monotonic() - started > 300:
                raise TimeoutError(f"{self.url} did not answer in 300 s")
            try:
                if session.post(self.url, data=image[0], headers={"Content-Type": image[1]}, timeout=300).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.005)
        self.first_answer_ms = round((time.monotonic() - started) * 1000)

    def cpu_seconds(self) -> float:
        """CPU time of the server and its children (gunicorn's worker), from /proc."""
        total = 0.0
        for pid in [self.process.pid, *_children(self.process.pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
        return total

    def stop(self) -> None:
        stop(self.process)


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def post(session: requests.Session, url: str, image: tuple[bytes, str], *, keep_alive: bool = True) -> float:
    started = time.perf_counter()
    headers = {"Content-Type": image[1]} if keep_alive else {"Content-Type": image[1], "Connection": "close"}
    response = session.post(url, data=image[0], headers=headers, timeout=300)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code}: {response.text[:300]}")
    return elapsed


def latency(url: str, image: tuple[bytes, str], count: int) -> dict:
    session = requests.Session()
    for _ in range(5):
        post(session, url, image)
    timings = [post(session, url, image) for _ in range(count)]
    return {"p50_ms": median(timings), "p99_ms": percentile(timings, 99)}


def throughput(url: str, image: tuple[bytes, str], clients: int, per_client: int) -> float:
    """Images per second with ``clients`` closed-loop clients (each request on its own connection)."""
    barrier = threading.Barrier(clients)

    def run(_) -> None:
        session = requests.Session()
        barrier.wait(timeout=60)
        for _ in range(per_client):
            post(session, url, image, keep_alive=False)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    return round(clients * per_client / (time.perf_counter() - started), 2)


def measure_server(server: Server, image: tuple[bytes, str], count: int, levels: tuple[int, ...],
                   per_client: int) -> dict:
    result = {"cold_start_ms": server.first_answer_ms, **latency(server.url, image, count)}
    cpu_before = server.cpu_seconds()
    images = 0
    rates = {}
    for clients in levels:
        rates[clients] = throughput(server.url, image, clients, per_client)
        images += clients * per_client
    result["images_per_s_by_clients"] = rates
    result["cpu_ms_per_image"] = round((server.cpu_seconds() - cpu_before) * 1000 / images, 2)
    return result


def startup_phases(log: Path) -> dict:
    phases = {}
    for line in log.read_text().splitlines():
        if line.startswith("{") and ("startup_ms" in line or "build_ms" in line):
            record = json.loads(line)
            phases.update(record.get("startup_ms", {}))
            phases.update({f"worker_{key}": value for key, value in record.get("build_ms", {}).items()
                           if key in ("build", "warmup")})
    return phases


def fidelity(onnx_url: str, torch_url: str) -> dict:
    """Served top-5 of real photos through both engines: same labels in the same order, score gap."""
    import io

    from PIL import Image
    from skimage import data

    worst, same = 0.0, True
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        buffer = io.BytesIO()
        Image.fromarray(getattr(data, name)()).convert("RGB").save(buffer, "JPEG", quality=92)
        answers = [requests.post(url, data=buffer.getvalue(), headers={"Content-Type": "image/jpeg"},
                                 timeout=60).json()["results"][0]["predictions"] for url in (onnx_url, torch_url)]
        same &= [row["index"] for row in answers[0]] == [row["index"] for row in answers[1]]
        worst = max(worst, *(abs(a["score"] - b["score"]) for a, b in zip(*answers, strict=True)))
    return {"top5_identical": same, "max_score_difference": worst, "photos": 4}


def memory(stack: LocalStack, image: tuple[bytes, str], onnx_bytes: dict[str, int]) -> dict:
    """Worker RSS with no model and with the three models, against their ONNX bytes.

    Measured right after the models' first requests, and settled: once the service has given
    freed pages back (at most every 10 s, after a request), as an instance does between bursts.
    """
    port = free_port()
    process = spawn(function_command("classify", port), env={**stack.env(), "PRELOAD_DEFAULT_MODEL": "false"},
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    session = requests.Session()
    try:
        wait_until_answers(url + "/", process, timeout=180)
        session.post(url + "/v1/models/nope:classify", data=image[0], headers={"Content-Type": image[1]})
        for _ in range(20):  # the request path's own buffers, before any model
            session.post(url + "/v1/models/nope:classify", data=image[0], headers={"Content-Type": image[1]})
        baseline = rss_kib(process.pid, children_only=True)
        after = []
        for model in onnx_bytes:
            for _ in range(5):
                post(session, f"{url}/v1/models/{model}:classify", image)
            after.append(rss_kib(process.pid, children_only=True))
        time.sleep(10.5)
        post(session, f"{url}/v1/models/{list(onnx_bytes)[-1]}:classify", image)
        settled = rss_kib(process.pid, children_only=True)
    finally:
        stop(process)
    total = sum(onnx_bytes.values())
    later = sum(list(onnx_bytes.values())[1:])
    return {"baseline_mb": round(baseline / 1024), "three_models_mb": round(after[-1] / 1024),
            "settled_mb": round(settled / 1024), "onnx_mb": round(total / 2**20, 1),
            "ratio_first_requests": round((after[-1] - baseline) * 1024 / total, 2),
            "ratio": round((settled - baseline) * 1024 / total, 2),
            # models two and three alone: what each further model costs once the runtime is warm
            "added_models_ratio": round((after[-1] - after[0]) * 1024 / later, 2)}


def bundle_size(work: Path) -> dict:
    """MB that ``pip install --target`` of each requirements file takes (needs PyPI)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from build_bundles import requirements_for

    result = {}
    for label, text in (("classify_onnxruntime", requirements_for("classify")),):
        requirements = work / f"{label}.txt"
        requirements.write_text(text)
        target = work / label
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--target",
                        str(target), "-r", str(requirements)], check=True, timeout=900)
        size = sum(path.stat().st_size for path in target.rglob("*") if path.is_file())
        result[label] = round(size / 2**20)
    return result


# --- the run -----------------------------------------------------------------------------------

def summarise(runs: list):
    """Median of every numeric leaf over the runs."""
    first = runs[0]
    if isinstance(first, dict):
        return {key: summarise([run[key] for run in runs]) for key in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return median(runs)
    return first


def one_round(stack: LocalStack, bucket: str, images: dict, files: dict, args, work: Path) -> dict:
    small = images["small"]
    levels = (1, 8) if args.smoke else (1, 8, 16)
    per_client = 3 if args.smoke else 12
    count = args.requests
    run: dict = {}
    model = open_model(bucket)
    run["in_process"] = in_process(model, small[0], count)
    # The in-process app writes its request lines to stdout as in production (a pipe there): a
    # file here, so the terminal shows the results, not thousands of log lines.
    with open(work / "in-process.log", "a") as log, contextlib.redirect_stdout(log):
        run["profile"] = request_profile(model, small[0], count, stack.env())

    def service(env: dict, name: str) -> Server:
        return Server(function_command("classify", 0)[:-1] + ["{port}"], {**stack.env(), **env}, "/v1/classify",
                      small, log=work / f"{name}-{time.monotonic_ns()}.log")

    served = service({}, "onnx")
    try:
        run["service"] = measure_server(served, small, count, levels, per_client)
        run["service"]["phases_ms"] = startup_phases(served.log)
        run["service"]["12mp_p50_ms"] = latency(served.url, images["12mp"], max(3, count // 4))["p50_ms"]
        run["cpu_ms_per_image_by_model"] = {}
        for name in stack.bundled_models or MODELS:
            url = served.url.replace("/v1/classify", f"/v1/models/{name}:classify")
            throughput(url, small, 2, 2)  # loaded and warm
            before = served.cpu_seconds()
            throughput(url, small, 8, per_client)
            run["cpu_ms_per_image_by_model"][name] = round((served.cpu_seconds() - before) * 1000 / (8 * per_client), 2)
        torch_server = service({"ENGINE": "torch"}, "torch")
        try:
            run["torch"] = measure_server(torch_server, small, max(5, count // 3), (8,), max(2, per_client // 3))
            run["fidelity"] = fidelity(served.url, torch_server.url)
        finally:
            torch_server.stop()
    finally:
        served.stop()
    peer_env = {"MODEL_PATH": str(files["onnx"]), "LABELS_PATH": str(files["labels"])}
    peers = {
        "functions_framework_onnx": [str(Path(sys.executable).with_name("functions-framework")), "--target",
                                     "classify", "--source", str(PEERS / "onnx_peer.py"), "--host", "127.0.0.1",
                                     "--port", "{port}"],
        "flask_gunicorn_onnx": [str(Path(sys.executable).with_name("gunicorn")), "--workers", "2", "--threads", "4",
                                "--bind", "127.0.0.1:{port}", "--chdir", str(PEERS), "onnx_peer:app"],
    }
    run["peers"] = {}
    for name, command in peers.items():
        peer = Server(command, peer_env, "/", small, log=work / f"{name}-{time.monotonic_ns()}.log")
        try:
            run["peers"][name] = measure_server(peer, small, count, (1, 8), per_client)
        finally:
            peer.stop()
    run["threads_ab"] = {}
    for label, env in (("engine_threads_1", {}), ("engine_threads_per_cpu", {"ENGINE_THREADS": "0"})):
        server = service(env, label)
        try:
            run["threads_ab"][label] = {"p50_ms_1_client": latency(server.url, small, count)["p50_ms"],
                                     **{f"images_per_s_{c}_clients": throughput(server.url, small, c, per_client)
                                        for c in levels[1:]}}
        finally:
            server.stop()
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=60, help="sequential requests per latency figure")
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast run (for the tests)")
    parser.add_argument("--bundle-size", action="store_true", help="also pip-install the classify bundle (PyPI)")
    parser.add_argument("--output", type=Path, default=REPO / ".local" / "bench.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.requests = 1, 8

    images = photos()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    bucket = "bench-models"
    with StorageEmulator() as emulator:
        os.environ["STORAGE_EMULATOR_HOST"] = emulator.url
        stack = LocalStack(bucket=bucket, emulator=emulator, log_dir=work,
                           bundled_models=[MODELS[0]] if args.smoke else list(MODELS))
        stack.start_storage(log=lambda _: None)
        from imgclassify.store.catalog import onnx_object, read_manifest
        from imgclassify.store.objects import GcsStore

        store = GcsStore(bucket)
        onnx_bytes = {m: store.info(onnx_object(m, "1")).size for m in (stack.bundled_models or MODELS)}
        files = {"onnx": work / "lite0.onnx", "labels": work / "labels.json"}
        files["onnx"].write_bytes(store.read(onnx_object(MODELS[0], "1")).data)
        files["labels"].write_text(json.dumps(list(read_manifest(store, MODELS[0], "1").labels)))
        runs = [one_round(stack, bucket, images, files, args, work) for _ in range(args.repeats)]
        result = summarise(runs)
        if not args.smoke:
            result["memory"] = memory(stack, images["small"], onnx_bytes)
    if args.bundle_size:
        result["bundle_mb"] = bundle_size(work)
    result["ratios"] = ratios(result)
    result["cost_per_million"] = cost(result)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                         "repeats": args.repeats}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nJSON: {args.output}\nserver logs: {work}")
    return 0


def ratios(result: dict) -> dict:
    local, served, torch = result["in_process"], result["service"], result["torch"]
    rates = served["images_per_s_by_clients"]
    minimal = result["peers"]["functions_framework_onnx"]["cold_start_ms"]
    found = {
        "warm_p50_vs_in_process": round(served["p50_ms"] / local["p50_ms"], 3),
        "warm_p50_vs_torch_engine": round(served["p50_ms"] / torch["p50_ms"], 3),
        "throughput_8_vs_in_process_best_batch": round(rates[8] / local["best_images_per_s"], 3),
        "throughput_8_vs_torch_engine": round(rates[8] / torch["images_per_s_by_clients"][8], 3),
        "cold_start_vs_minimal_function": round(served["cold_start_ms"] / minimal, 3),
        "cold_start_vs_torch_engine": round(served["cold_start_ms"] / torch["cold_start_ms"], 3),
    }
    if "memory" in result:
        found["rss_3_models_over_baseline_vs_onnx_bytes"] = result["memory"]["ratio"]
    return found


def cost(result: dict) -> dict:
    """Dollars per million classifications at Cloud Run's request-based price, from measured CPU time.

    An instance bills vCPU and memory while it serves; at full concurrency its vCPUs are busy,
    so billed vCPU-seconds per image are the CPU-seconds measured per image.
    """
    def dollars(cpu_ms: float) -> float:
        cpu_seconds = cpu_ms / 1000
        instance_seconds = cpu_seconds / CLASSIFY_VCPUS
        per_image = cpu_seconds * PRICE["vcpu_second"] + instance_seconds * CLASSIFY_MEMORY_GIB * PRICE["gib_second"]
        return round(1e6 * per_image + PRICE["million_requests"], 2)

    found = {f"onnxruntime_{name}": dollars(ms) for name, ms in result["cpu_ms_per_image_by_model"].items()}
    found[f"torch_{MODELS[0]}"] = dollars(result["torch"]["cpu_ms_per_image"])
    found["price"] = {**PRICE, "memory_gib": CLASSIFY_MEMORY_GIB, "vcpus": CLASSIFY_VCPUS}
    return found


def print_table(result: dict) -> None:
    machine, ratios_found = result["machine"], result["ratios"]
    local, served, torch, peers = result["in_process"], result["service"], result["torch"], result["peers"]
    rates = served["images_per_s_by_clients"]
    print(f"machine: {machine['cpus']} CPUs, {machine['processor']}, Python {machine['python']}, "
          f"{machine['platform']}; medians of {machine['repeats']} rounds")
    rows = [
        ("warm p50, 500x375 JPEG, 1 client", f"{served['p50_ms']} ms (p99 {served['p99_ms']})",
         f"{local['p50_ms']} ms in-process", ratios_found["warm_p50_vs_in_process"], "<= 1.15"),
        ("  vs the torch engine served", "", f"{torch['p50_ms']} ms", ratios_found["warm_p50_vs_torch_engine"],
         "<= 0.4"),
        ("throughput, 8 clients", f"{rates[8]} img/s",
         f"{local['best_images_per_s']} img/s in-process (batch {local['best_batch']})",
         ratios_found["throughput_8_vs_in_process_best_batch"], ">= 1.0"),
        ("  vs the torch engine served", "", f"{torch['images_per_s_by_clients'][8]} img/s",
         ratios_found["throughput_8_vs_torch_engine"], ">= 3"),
        ("cold start, process start to first 200", f"{served['cold_start_ms']} ms",
         f"{peers['functions_framework_onnx']['cold_start_ms']} ms minimal function",
         ratios_found["cold_start_vs_minimal_function"], "<= 1.5"),
        ("  vs the torch engine", "", f"{torch['cold_start_ms']} ms", ratios_found["cold_start_vs_torch_engine"],
         "<= 0.4"),
    ]
    if "memory" in result:
        memory_found = result["memory"]
        rows.append(("RSS, 3 models over no-model baseline", f"{memory_found['settled_mb']} MB "
                     f"(base {memory_found['baseline_mb']})", f"{memory_found['onnx_mb']} MB of ONNX",
                     memory_found["ratio"], "<= 1.5"))
        rows.append(("  right after their first requests", f"{memory_found['three_models_mb']} MB", "",
                     memory_found["ratio_first_requests"], ""))
        rows.append(("  models 2 and 3 alone / their ONNX bytes", "", "", memory_found["added_models_ratio"], ""))
    print(f"\n{'measure':<42} {'served':<24} {'reference':<40} {'ratio':>7}  target")
    for name, value, reference, ratio, target in rows:
        print(f"{name:<42} {value:<24} {reference:<40} {ratio!s:>7}  {target}")
    print("\nside by side (cold ms, p50 ms at 1 client, img/s at 8 clients, CPU ms per image):")
    for name, measured in (("this service", served), ("this service, ENGINE=torch", torch), *peers.items()):
        by = measured["images_per_s_by_clients"]
        print(f"  {name:<32} {measured['cold_start_ms']:>7} {measured['p50_ms']:>8} {by.get(8, '-')!s:>8} "
              f"{measured['cpu_ms_per_image']:>8}")
    print(f"\nthroughput by clients: {rates}; 12 MP JPEG p50 {served['12mp_p50_ms']} ms")
    print("fidelity against the torch engine:", result["fidelity"])
    print("intra-op threads A/B:", json.dumps(result["threads_ab"]))
    print("warm request, in process (ms):", json.dumps(result["profile"]))
    print("cold start phases (ms):", json.dumps(served["phases_ms"]))
    print("cost per million classifications ($):", {k: v for k, v in result["cost_per_million"].items()
                                                    if k != "price"})
    if "bundle_mb" in result:
        print("installed bundle (MB):", result["bundle_mb"])


if __name__ == "__main__":
    raise SystemExit(main())
