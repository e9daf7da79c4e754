"""``make bench``: what the serving path costs over the bare engine, as ratios from one run.

Starts its own storage emulator and servers on 127.0.0.1, uses real photos and the real
EfficientNet-Lite models, and measures, every figure the median over ``--repeats`` rounds:

1. in process: decode + preprocess + forward of one photo, the machine's floor (one pinned
   single-threaded loop per CPU, run at once: ``bench/floor.py``) and a lone forward on every CPU,
   for fp32 and int8 Lite0; the Cloud Storage client's import in fresh processes;
2. the service (functions-framework, ONNX Runtime): warm p50/p99 at one client, throughput at
   1, 8 and 16 clients, CPU-seconds per image, cold start split into phases. It starts as a
   deployed bundle does: its package compiled to bytecode (the Cloud Functions buildpack runs
   ``compileall`` on the source; so are the peers') and, like the minimal function it is compared
   with, its model on local disk (a snapshot, ``make bundles MODEL_STORE=...``). The cold start of
   an instance that downloads its model is measured beside it;
3. each bundled model and its int8 twin (``publish quantize``, published here whatever its
   agreement, which is reported beside it) on one instance: p50 (the models' lone requests in
   turns), images/s at 8 clients, CPU per image, dollars per million;
4. the same service with ``ENGINE=torch``, and the simplest servers a user could write around
   the same model.onnx (functions-framework, and Flask under gunicorn), side by side: each
   started alone, then the lone requests of the two and the service taken in turns of 10, and
   their loads measured back to back, in an order that turns each round. The server stack
   alone (``bench/peers/stack_peer.py``, no model) is served beside them: with the figures of 1,
   it bounds what any server on this stack and machine could reach (:func:`bounds`);
5. fidelity: the served top-5 of real photos against the torch engine's;
6. an A/B of the engine's thread policies (:data:`THREAD_POLICIES`), their instances side by
   side in the same way;
7. a warm request broken into its parts, in process;
8. resident memory with 3 models over a no-model baseline, against their ONNX bytes;
9. optionally (``--bundle-size``, needs PyPI) the classify bundle's installed size.

Prints every ratio of :data:`TARGETS` with its target, and its bound where one is derived.

Prints a table and writes JSON (default ``.local/bench.json``). ``--smoke`` runs a tiny version.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import http.client
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
from urllib.parse import urlsplit

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_photos import photos  # noqa: E402
from floor import machine_floor  # noqa: E402

from devstack.emulator import StorageEmulator  # noqa: E402
from devstack.processes import free_port, rss_kib, spawn, stop, wait_for_port, wait_until_answers  # noqa: E402
from devstack.stack import LocalStack, function_command  # noqa: E402

MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
PEERS = REPO / "bench" / "peers"
# Cloud Run, request-based billing, Tier 1 regions, as published on https://cloud.google.com/run/pricing
# (read 2026-12-01): $0.000024 per vCPU-second, $0.0000025 per GiB-second, $0.40 per million requests.
PRICE = {"vcpu_second": 0.000024, "gib_second": 0.0000025, "million_requests": 0.40, "date": "2026-12-01"}
CLASSIFY_MEMORY_GIB, CLASSIFY_VCPUS = 4.0, 2   # infra/terraform's defaults for the classify function
# The thread policies the A/B serves side by side (each a classify instance of its own): the
# default (a lone forward on every CPU, spinning; overlapping ones on one thread each), the same
# without spinning, and every forward on one thread.
THREAD_POLICIES = {
    "lone_every_cpu_spinning": {},
    "lone_every_cpu": {"ENGINE_SPIN": "false"},
    "one_thread": {"ENGINE_THREADS": "1"},
}


def median(values) -> float:
    return round(statistics.median(values), 2)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 2)


# --- in process --------------------------------------------------------------------------------

def compile_like_buildpack() -> None:
    """Compile the package and the peers to bytecode, as the Cloud Functions buildpack compiles a
    function's source (``compileall``): this machine sets PYTHONDONTWRITEBYTECODE, and a start
    that compiles the package's modules itself takes 30-40 ms longer than a deployed one."""
    for source in (REPO / "imgclassify", PEERS):
        compileall.compile_dir(source, quiet=1)


def open_model(bucket: str, name: str = MODELS[0], engine: str = "onnxruntime", threads: int = 1):
    """``name`` from the bucket, built; by default on one thread (the bare path), 0: as the service runs it."""
    from imgclassify.runtime.engines import EngineOptions
    from imgclassify.runtime.registry import ModelRegistry
    from imgclassify.store.objects import GcsStore

    registry = ModelRegistry.over(GcsStore(bucket), cache_budget_bytes=2**31, catalog_ttl_seconds=3600,
                                  engine_options=EngineOptions(engine, threads=threads))
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
    started = time.thread_time()
    for _ in range(count):
        once()
    # CPU, not wall, time: what the served CPU per image is held against (the server stack's cost)
    result["cpu_ms_per_image"] = round((time.thread_time() - started) * 1000 / count, 2)
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


def lone_forward(bucket: str, name: str, image: bytes, count: int) -> float:
    """The median forward (ms) of one photo, alone, as the service runs a lone request's: on every CPU."""
    model = open_model(bucket, name, threads=0)
    prepared = model.prepare(image, max_pixels=10**8)
    # a new two-thread session's first forwards are slower (9.2 against 7.3 ms over 8)
    return median(timings_ms(lambda: model.outputs([prepared]), count, warm=20))


def timings_ms(call, count: int, warm: int) -> list[float]:
    """The wall time of ``count`` calls of ``call`` (ms), after ``warm`` calls not timed."""
    for _ in range(warm):
        call()
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def storage_import_ms(repeats: int = 5) -> float:
    """What importing the Cloud Storage client costs a start (median ms over fresh processes that
    have imported what the minimal function imports): the service reads its catalog with it, and the
    minimal function, which reads its model from local disk, has no such import."""
    script = ("import time, numpy, PIL.Image, onnxruntime, functions_framework; started = time.perf_counter(); "
              "from google.cloud import storage; print((time.perf_counter() - started) * 1000)")
    return median([float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                        check=True, timeout=120).stdout) for _ in range(repeats)])


def request_profile(model, image: bytes, count: int, env: dict) -> dict:
    """One warm request's parts, each timed alone in this process (medians, ms)."""
    from werkzeug.test import EnvironBuilder
    from werkzeug.wrappers import Request

    from imgclassify.imaging.decode import decode_image
    from imgclassify.imaging.preprocess import preprocess
    from imgclassify.runtime.scores import scores, top_k
    from imgclassify.serving.bootstrap import create_http_app
    from imgclassify.serving.http import json_response
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
        "json_response": lambda: json_response(answer),
        "log_line": lambda: app._log(logged, response, time.perf_counter(), {}),
        "whole_app_in_process": lambda: app(request()),
    }
    logged = request()
    response = app(logged)
    answer = json.loads(response.get_data())
    result = {}
    for name, part in parts.items():
        result[name] = round(statistics.median(timings_ms(part, count, warm=3)), 3)
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
        with open(log, "ab") if log else contextlib.nullcontext(subprocess.DEVNULL) as output:
            self.process = spawn(args, env=env, cwd=cwd, stdout=output, stderr=output)
        self.log = log
        try:
            wait_for_port(self.port, self.process)
            response = requests.post(self.url, data=image[0], headers={"Content-Type": image[1]}, timeout=300)
            if not response.ok:
                raise RuntimeError(f"{self.url}: {response.status_code} {response.text[:300]}; see {log}")
        except BaseException:
            stop(self.process)
            raise
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


def wait_until_idle(servers: list[Server], timeout: float = 60.0) -> None:
    """Wait until ``servers`` together take no CPU for a quarter of a second: a server answers
    its first request before all its workers have booted (Flask's second worker builds its own
    session), and that work must not fall on another server's measurement."""
    deadline = time.monotonic() + timeout
    used = sum(server.cpu_seconds() for server in servers)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = sum(server.cpu_seconds() for server in servers)
        if now - used < 0.01:
            return
        used = now


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def post(session: requests.Session, url: str, image: tuple[bytes, str]) -> float:
    started = time.perf_counter()
    response = session.post(url, data=image[0], headers={"Content-Type": image[1]}, timeout=300)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code}: {response.text[:300]}")
    return elapsed


def post_kept(connection: http.client.HTTPConnection, path: str, image: tuple[bytes, str]) -> None:
    """POST ``image`` on ``connection``, once more on a new one if the server had closed it (gunicorn
    closes a connection idle for its keep-alive time; a classification is safe to repeat)."""
    for attempt in (1, 2):
        try:
            connection.request("POST", path, body=image[0], headers={"Content-Type": image[1]})
            response = connection.getresponse()
            body = response.read()
            break
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            connection.close()  # the next request opens a new one
            if attempt == 2:
                raise
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status}: {body[:300]!r}")


def latency(url: str, image: tuple[bytes, str], count: int) -> dict:
    return latency_in_turns({url: url}, image, count, block=count)[url]


def latency_in_turns(urls: dict[str, str], image: tuple[bytes, str], count: int, block: int = 10,
                     warm: int = 5) -> dict:
    """p50 and p99 of ``count`` sequential requests to each of ``urls`` (by name), one server after
    another in turns of ``block`` requests. This host's speed moves in steps that last seconds (the
    same service's app took 11.4 ms a request for a minute of run M, then 8.3): taken in turns,
    a step falls on every server alike, not on the one measured at that moment. Each turn starts
    with ``warm`` requests that are not counted: a server whose runtime's threads spin on after a
    forward (the peers' ONNX Runtime defaults) took CPU from the first two requests of the next
    server's turn (16.8 and 17.3 against 12.8 ms)."""
    sessions = {name: requests.Session() for name in urls}
    timings: dict[str, list[float]] = {name: [] for name in urls}
    while any(len(taken) < count for taken in timings.values()):
        for name, url in urls.items():
            for _ in range(warm):
                post(sessions[name], url, image)
            timings[name] += [post(sessions[name], url, image) for _ in range(min(block, count - len(timings[name])))]
    return {name: {"p50_ms": median(taken), "p99_ms": percentile(taken, 99)} for name, taken in timings.items()}


def throughput(url: str, image: tuple[bytes, str], clients: int, per_client: int) -> float:
    """Images per second with ``clients`` closed-loop clients, each on a keep-alive connection of its own.

    The load's client runs on the servers' CPUs, where a deployed instance has none, so it is kept
    light: requests with a connection per request took 1.1-1.7 ms of CPU per request, http.client
    on a kept connection 0.2-0.4 (2026-12-07, the stack peer and Lite0's servers)."""
    barrier = threading.Barrier(clients)
    address = urlsplit(url)

    def run(_) -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
        connection.connect()
        barrier.wait(timeout=60)
        for _ in range(per_client):
            post_kept(connection, address.path or "/", image)
        connection.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    return round(clients * per_client / (time.perf_counter() - started), 2)


def measure_server(server: Server, image: tuple[bytes, str], count: int, levels: tuple[int, ...],
                   per_client: int, lone: dict | None = None) -> dict:
    """Cold start, ``lone`` (a lone client's p50 and p99, measured here if not given), images/s at
    each level of clients and the CPU per image they took."""
    result = {"cold_start_ms": server.first_answer_ms, **(lone or latency(server.url, image, count))}
    cpu_before, client_before = server.cpu_seconds(), time.process_time()
    images = 0
    rates = {}
    for clients in levels:
        rates[clients] = throughput(server.url, image, clients, per_client)
        images += clients * per_client
    result["images_per_s_by_clients"] = rates
    result["cpu_ms_per_image"] = round((server.cpu_seconds() - cpu_before) * 1000 / images, 2)
    # The load client runs on the same CPUs as the server (and the floor has none): its share
    result["client_cpu_ms_per_request"] = round((time.process_time() - client_before) * 1000 / images, 2)
    return result


def startup_phases(log: Path) -> dict:
    """The service's start-up phases and its worker's build (ms), and where its model came from
    (``model_source``: snapshot or store), from its JSON log lines."""
    phases = {}
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and ("startup_ms" in line or "build_ms" in line or "model_source" in line):
            record = json.loads(line)
            phases.update(record.get("startup_ms", {}))
            phases.update({f"worker_{key}": value for key, value in record.get("build_ms", {}).items()
                           if key in ("build", "warmup")})
            if "model_source" in record:
                phases["model_source"] = record["model_source"]
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
    process = spawn(function_command("classify", port),
                    env={**stack.function_env("classify"), "PRELOAD_DEFAULT_MODEL": "false"},
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    session = requests.Session()
    try:
        wait_until_answers(url + "/", process, timeout=180)
        session.post(url + "/v1/models/nope:classify", data=image[0], headers={"Content-Type": image[1]})
        for _ in range(20):  # the request path's own buffers, before any model
            session.post(url + "/v1/models/nope:classify", data=image[0], headers={"Content-Type": image[1]})
        baseline = rss_kib(process.pid, children_only=True)
        baseline_files = rss_kib(process.pid, children_only=True, field="RssFile")
        after = []
        for model in onnx_bytes:
            for _ in range(5):
                post(session, f"{url}/v1/models/{model}:classify", image)
            after.append(rss_kib(process.pid, children_only=True))
        time.sleep(10.5)
        post(session, f"{url}/v1/models/{list(onnx_bytes)[-1]}:classify", image)
        settled = rss_kib(process.pid, children_only=True)
        # ONNX Runtime's own code (and other mapped files), paged in by the worker's first forward
        settled_files = rss_kib(process.pid, children_only=True, field="RssFile")
    finally:
        stop(process)
    total = sum(onnx_bytes.values())
    later = sum(list(onnx_bytes.values())[1:])
    return {"baseline_mb": round(baseline / 1024), "three_models_mb": round(after[-1] / 1024),
            "settled_mb": round(settled / 1024), "onnx_mb": round(total / 2**20, 1),
            "growth_in_mapped_files_mb": round((settled_files - baseline_files) / 1024),
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


def publish_twins(store, models: list[str], work: Path) -> dict[str, dict]:
    """The int8 twin of each model, published whatever its agreement (measured either way), for speed.

    ``make dev`` and operators publish with the 0.97 floor; here a twin below it is measured too and
    its row says the publish would refuse it.
    """
    from imgclassify.publish.quantize import DEFAULT_MIN_TOP1_AGREEMENT, publish_int8_twin

    twins = {}
    with (open(work / "quantize.log", "a") as log, contextlib.redirect_stdout(log),
          contextlib.redirect_stderr(log)):  # the quantizer prints its progress and notices
        for name in models:
            manifest = publish_int8_twin(store, name, min_top1_agreement=0.0, log=lambda line: print(line, file=log))
            agreement = manifest.metadata["agreement"]
            twins[manifest.name] = {"source": name, **agreement,
                                    "would_publish": agreement["top1_agreement"] >= DEFAULT_MIN_TOP1_AGREEMENT}
    return twins


def per_model(served: Server, image: tuple[bytes, str], models: list[str], count: int, per_client: int) -> dict:
    """Each model's p50 at one client (the models' lone requests in turns, as the servers' are side
    by side), images/s at 8 clients and CPU ms per image, on one served instance."""
    urls = {name: served.url.replace("/v1/classify", f"/v1/models/{name}:classify") for name in models}
    for url in urls.values():
        throughput(url, image, 2, 2)  # loaded and warm
    lone = latency_in_turns(urls, image, count)
    found = {}
    for name, url in urls.items():
        before = served.cpu_seconds()
        rate = throughput(url, image, 8, per_client)
        found[name] = {"p50_ms": lone[name]["p50_ms"], "images_per_s_8_clients": rate,
                       "cpu_ms_per_image": round((served.cpu_seconds() - before) * 1000 / (8 * per_client), 2)}
    return found


def turned(names: list[str], turn: int) -> list[str]:
    """``names`` from the ``turn``-th on, then the ones before it: each round's order of measurement."""
    start = turn % len(names)
    return names[start:] + names[:start]


def one_round(stack: LocalStack, bucket: str, images: dict, files: dict, args, work: Path,
              twins: dict[str, dict], turn: int = 0) -> dict:
    small = images["small"]
    levels = (1, 8) if args.smoke else (1, 8, 16)
    per_client = 3 if args.smoke else 12
    count = args.requests
    run: dict = {}
    # The in-process app and registry write their log lines to stdout as in production (a pipe
    # there): a file here, so the terminal shows the results, not thousands of log lines.
    with open(work / "in-process.log", "a") as log, contextlib.redirect_stdout(log):
        model = open_model(bucket)
        run["in_process"] = in_process(model, small[0], count)
        seconds = 2.0 if args.smoke else 6.0
        run["floor"] = {"fp32": machine_floor(bucket, MODELS[0], small[0], seconds),
                        "int8": machine_floor(bucket, f"{MODELS[0]}_int8", small[0], seconds)}
        run["lone_forward_ms"] = {"fp32": lone_forward(bucket, MODELS[0], small[0], count),
                                  "int8": lone_forward(bucket, f"{MODELS[0]}_int8", small[0], count)}
        run["storage_import_ms"] = storage_import_ms()
        run["profile"] = request_profile(model, small[0], count, stack.env())

    def service(env: dict, name: str) -> Server:
        return Server(function_command("classify", 0)[:-1] + ["{port}"], {**stack.function_env("classify"), **env},
                      "/v1/classify", small, log=work / f"{name}-{time.monotonic_ns()}.log")

    downloading = service({"MODEL_SNAPSHOT_DIR": str(work / "no-snapshot")}, "download")
    downloading.stop()
    peer_env = {"MODEL_PATH": str(files["onnx"]), "LABELS_PATH": str(files["labels"])}
    peers = {
        "functions_framework_onnx": [str(Path(sys.executable).with_name("functions-framework")), "--target",
                                     "classify", "--source", str(PEERS / "onnx_peer.py"), "--host", "127.0.0.1",
                                     "--port", "{port}"],
        "flask_gunicorn_onnx": [str(Path(sys.executable).with_name("gunicorn")), "--workers", "2", "--threads", "4",
                                "--bind", "127.0.0.1:{port}", "--chdir", str(PEERS), "onnx_peer:app"],
    }
    # The server stack with no model (bench/peers/stack_peer.py): its lone requests in turns with
    # the others', its load after theirs; what it costs bounds the ratios (see bounds).
    stack_peer = [str(Path(sys.executable).with_name("functions-framework")), "--target", "answer",
                  "--source", str(PEERS / "stack_peer.py"), "--host", "127.0.0.1", "--port", "{port}"]
    # Started one after another (each cold start alone on the CPUs), then their lone requests taken
    # in turns and their loads measured back to back in an order that turns each round, so that the
    # host's drift over minutes (one server's p50 moved by 10 % within a run) falls on the three alike.
    with contextlib.ExitStack() as service_running:
        served = service({"MODEL_SNAPSHOT_DIR": str(files["snapshot"])}, "onnx")
        service_running.callback(served.stop)
        with contextlib.ExitStack() as peers_running:
            side_by_side = {"service": served}
            for name, command in {**peers, "stack": stack_peer}.items():
                side_by_side[name] = peer = Server(command, peer_env, "/", small,
                                                   log=work / f"{name}-{time.monotonic_ns()}.log")
                peers_running.callback(peer.stop)
            wait_until_idle(list(side_by_side.values()))
            lone = latency_in_turns({name: server.url for name, server in side_by_side.items()}, small, count)
            names = ["service", *peers]
            measured = {name: measure_server(side_by_side[name], small, count, levels, per_client, lone[name])
                        for name in turned(names, turn)}
            measured["stack"] = measure_server(side_by_side["stack"], small, count, (8,), per_client, lone["stack"])
        run["service"] = measured["service"]
        run["peers"] = {name: measured[name] for name in peers}
        run["stack"] = measured["stack"]
        run["service"]["phases_ms"] = startup_phases(served.log)
        run["service"]["cold_start_download_ms"] = downloading.first_answer_ms
        run["service"]["phases_download_ms"] = startup_phases(downloading.log)
        run["service"]["12mp_p50_ms"] = latency(served.url, images["12mp"], max(3, count // 4))["p50_ms"]
        run["by_model"] = per_model(served, small, [*(stack.bundled_models or MODELS), *twins], count, per_client)
        torch_server = service({"ENGINE": "torch"}, "torch")
        try:
            run["torch"] = measure_server(torch_server, small, max(5, count // 3), (8,), max(2, per_client // 3))
            run["fidelity"] = fidelity(served.url, torch_server.url)
        finally:
            torch_server.stop()
    # The policies' instances side by side too: their lone requests in turns, then each one's load.
    with contextlib.ExitStack() as policies_running:
        policies = {}
        for label, env in THREAD_POLICIES.items():
            policies[label] = service(env, label)
            policies_running.callback(policies[label].stop)
        wait_until_idle(list(policies.values()))
        lone = latency_in_turns({label: server.url for label, server in policies.items()}, small, count)
        # loads in an order that turns each round too: in a fixed one, runs R and S (kept connections)
        # put the default last of the three at 8 clients by 10-14 %; turned, the three were within 2.5 %
        loads = {label: {f"images_per_s_{c}_clients": throughput(policies[label].url, small, c, per_client)
                         for c in levels[1:]}
                 for label in turned(list(policies), turn)}
        run["threads_ab"] = {label: {"p50_ms_1_client": lone[label]["p50_ms"], **loads[label]} for label in policies}
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=60, help="sequential requests per latency figure")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run (3-4 minutes), to check that the harness works")
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
        from imgclassify.store.snapshot import write_snapshot

        store = GcsStore(bucket)
        onnx_bytes = {m: store.info(onnx_object(m, "1")).size for m in (stack.bundled_models or MODELS)}
        twins = publish_twins(store, list(onnx_bytes), work)
        files = {"onnx": work / "lite0.onnx", "labels": work / "labels.json", "snapshot": work / "model_snapshot"}
        files["onnx"].write_bytes(store.read(onnx_object(MODELS[0], "1")).data)
        write_snapshot(store, files["snapshot"], MODELS[0])
        compile_like_buildpack()
        files["labels"].write_text(json.dumps(list(read_manifest(store, MODELS[0], "1").labels)))
        runs = [one_round(stack, bucket, images, files, args, work, twins, turn) for turn in range(args.repeats)]
        result = summarise(runs)
        result["int8_agreement"] = {twin: agreement for twin, agreement in twins.items()}
        if not args.smoke:
            result["memory"] = memory(stack, images["small"], onnx_bytes)
    if args.bundle_size:
        result["bundle_mb"] = bundle_size(work)
    result["ratios"] = ratios(result)
    result["bounds"] = bounds(result)
    result["cost_per_million"] = cost(result)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "platform": platform.platform(), "processor": cpu_model(),
                         "repeats": args.repeats}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"\nJSON: {args.output}\nserver logs: {work}")
    return 0


# (ratio, target) pairs: issue 17's targets, each a ratio of two figures from this one run.
TARGETS = {
    "warm_p50_vs_best_peer": "<= 1.0", "throughput_8_vs_best_peer": ">= 1.1", "throughput_16_vs_best_peer": ">= 1.1",
    "cpu_per_image_vs_best_peer": "<= 1.0", "cold_start_vs_minimal_function": "<= 1.25",
    "throughput_8_vs_floor_fp32": ">= 0.9", "throughput_8_vs_floor_int8": ">= 0.9",
    "int8_p50_vs_fp32": "<= 0.65", "int8_throughput_8_vs_fp32": ">= 1.6",
    "warm_p50_vs_torch_engine": "<= 0.4", "throughput_8_vs_torch_engine": ">= 3",
    "cold_start_vs_torch_engine": "<= 0.4", "rss_3_models_over_baseline_vs_onnx_bytes": "<= 1.5",
}


def cpu_model() -> str:
    """The CPU's model name and the instruction sets int8 and fp32 speed depend on (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in info.splitlines()[:30])}
    flags = set(fields.get("flags", "").split())
    name, family = fields.get("model name", platform.machine()), fields.get("cpu family", "?")
    found = [flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8") if flag in flags]
    return f"{name} (family {family}; {', '.join(found) or 'no AVX2'})"


def ratios(result: dict) -> dict:
    served, torch, peers, by_model = result["service"], result["torch"], result["peers"], result["by_model"]
    rates = served["images_per_s_by_clients"]
    twin = f"{MODELS[0]}_int8"

    def best(axis, pick=min) -> float:
        return pick(axis(peer) for peer in peers.values())

    found = {
        "warm_p50_vs_in_process": round(served["p50_ms"] / result["in_process"]["p50_ms"], 3),
        "cpu_per_image_vs_in_process": round(served["cpu_ms_per_image"] / result["in_process"]["cpu_ms_per_image"], 3),
        "warm_p50_vs_best_peer": round(served["p50_ms"] / best(lambda peer: peer["p50_ms"]), 3),
        "cpu_per_image_vs_best_peer": round(served["cpu_ms_per_image"]
                                            / best(lambda peer: peer["cpu_ms_per_image"]), 3),
        "cold_start_vs_minimal_function": round(
            served["cold_start_ms"] / peers["functions_framework_onnx"]["cold_start_ms"], 3),
        "cold_start_downloading_vs_minimal_function": round(
            served["cold_start_download_ms"] / peers["functions_framework_onnx"]["cold_start_ms"], 3),
        "throughput_8_vs_floor_fp32": round(rates[8] / result["floor"]["fp32"]["images_per_s"], 3),
        "throughput_8_vs_floor_int8": round(by_model[twin]["images_per_s_8_clients"]
                                            / result["floor"]["int8"]["images_per_s"], 3),
        "int8_p50_vs_fp32": round(by_model[twin]["p50_ms"] / by_model[MODELS[0]]["p50_ms"], 3),
        "int8_throughput_8_vs_fp32": round(by_model[twin]["images_per_s_8_clients"]
                                           / by_model[MODELS[0]]["images_per_s_8_clients"], 3),
        "warm_p50_vs_torch_engine": round(served["p50_ms"] / torch["p50_ms"], 3),
        "throughput_8_vs_torch_engine": round(rates[8] / torch["images_per_s_by_clients"][8], 3),
        # the torch engine downloads its weights (a snapshot holds model.onnx only): both download here
        "cold_start_vs_torch_engine": round(served["cold_start_download_ms"] / torch["cold_start_ms"], 3),
    }
    for clients in (8, 16):
        if clients in rates:
            found[f"throughput_{clients}_vs_best_peer"] = round(
                rates[clients] / best(lambda peer, c=clients: peer["images_per_s_by_clients"][c], max), 3)
    if "memory" in result:
        found["rss_3_models_over_baseline_vs_onnx_bytes"] = result["memory"]["ratio"]
    return found


def bounds(result: dict) -> dict:
    """The best value a server on this machine and server stack could reach, from figures of this
    run, for the ratios that hold a served request against work done in process: any such server
    does each image's work at best as the floor's loops do, and pays the stack's p50 and CPU per
    request (the stack peer's) and the load client's CPU on the same CPUs. The int8 p50's bound is a
    lone request's on the stack, then the photo's decode and preprocessing and a lone forward, as
    measured in process (until run S it left the decode and preprocessing out: 0.50 against 0.57
    in S). Each bound carries its figures' noise.
    (No bound for the cold start: a start can overlap work with the storage client's import, and
    run P measured one shorter than the minimal function's plus that import.)"""
    stack, forward, floor = result["stack"], result["lone_forward_ms"], result["floor"]
    image = stack["p50_ms"] + result["profile"]["decode"] + result["profile"]["preprocess"]
    found = {"int8_p50_vs_fp32": round((image + forward["int8"]) / (image + forward["fp32"]), 3)}
    per_request = stack["cpu_ms_per_image"] + stack["client_cpu_ms_per_request"]
    for precision, measured in floor.items():
        work = measured["cpus"] * 1000 / measured["images_per_s"]  # CPU ms per image in the floor's loops
        found[f"throughput_8_vs_floor_{precision}"] = round(work / (work + per_request), 3)
    # nor, at any number of clients, more images/s than the floor's at that bound
    most = found["throughput_8_vs_floor_fp32"] * floor["fp32"]["images_per_s"]
    for clients in [c for c in result["service"]["images_per_s_by_clients"] if c != 1]:
        best_peer = max(peer["images_per_s_by_clients"][clients] for peer in result["peers"].values())
        found[f"throughput_{clients}_vs_best_peer"] = round(most / best_peer, 3)
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

    found = {f"onnxruntime_{name}": dollars(row["cpu_ms_per_image"]) for name, row in result["by_model"].items()}
    found[f"torch_{MODELS[0]}"] = dollars(result["torch"]["cpu_ms_per_image"])
    found["price"] = {**PRICE, "memory_gib": CLASSIFY_MEMORY_GIB, "vcpus": CLASSIFY_VCPUS}
    return found


def print_table(result: dict) -> None:
    machine, found = result["machine"], result["ratios"]
    served, torch, peers = result["service"], result["torch"], result["peers"]
    print(f"machine: {machine['cpus']} CPUs, {machine['processor']}, Python {machine['python']}, "
          f"{machine['platform']}; medians of {machine['repeats']} rounds")
    print(f"\n{'ratio (this run)':<44} {'found':>7} {'bound':>7}  target   (bound: the best any server on this stack "
          "and machine could reach)")
    for name, value in found.items():
        print(f"{name:<44} {value!s:>7} {result['bounds'].get(name, '')!s:>7}  {TARGETS.get(name, '')}")
    print("\nside by side (cold ms, p50 ms at 1 client, img/s at 1 / 8 / 16 clients, CPU ms per image):")
    twin = result["by_model"].get(f"{MODELS[0]}_int8")
    int8_row = {"cold_start_ms": "-", "p50_ms": twin["p50_ms"], "cpu_ms_per_image": twin["cpu_ms_per_image"],
                "images_per_s_by_clients": {8: twin["images_per_s_8_clients"]}} if twin else None
    rows = (("this service", served), *((("this service, its int8 twin", int8_row),) if int8_row else ()),
            ("this service, ENGINE=torch", torch), *peers.items())
    for name, measured in rows:
        by = measured["images_per_s_by_clients"]
        print(f"  {name:<32} {measured['cold_start_ms']:>7} {measured['p50_ms']:>8} "
              + " ".join(f"{by.get(c, '-')!s:>8}" for c in (1, 8, 16)) + f" {measured['cpu_ms_per_image']:>8}")
    print("\nper model, one instance (p50 ms at 1 client, img/s at 8 clients, CPU ms per image, $ per million):")
    for name, row in result["by_model"].items():
        twin = result["int8_agreement"].get(name)
        note = (f"  int8: top-1 agreement {twin['top1_agreement']:.1%}"
                + ("" if twin["would_publish"] else " (below 0.97: the publish refuses it)")) if twin else ""
        print(f"  {name:<28} {row['p50_ms']:>8} {row['images_per_s_8_clients']:>8} {row['cpu_ms_per_image']:>8} "
              f"{result['cost_per_million'][f'onnxruntime_{name}']:>6}{note}")
    floor = result["floor"]
    print(f"\nmachine floor (one pinned single-thread loop per CPU): fp32 {floor['fp32']['images_per_s']} img/s "
          f"{floor['fp32']['per_cpu']}, int8 {floor['int8']['images_per_s']} img/s {floor['int8']['per_cpu']}")
    local = result["in_process"]
    print(f"in process: p50 {local['p50_ms']} ms, CPU {local['cpu_ms_per_image']} ms per image (one thread); "
          f"by batch {local['images_per_s_by_batch']} img/s")
    print(f"throughput by clients: {served['images_per_s_by_clients']}; 12 MP JPEG p50 {served['12mp_p50_ms']} ms; "
          f"the load client's own CPU {served['client_cpu_ms_per_request']} ms per request")
    stack = result["stack"]
    print(f"the server stack alone (no model): p50 {stack['p50_ms']} ms, CPU {stack['cpu_ms_per_image']} ms per "
          f"request (the client's {stack['client_cpu_ms_per_request']}); a lone forward in process "
          f"{result['lone_forward_ms']} ms; importing the storage client {result['storage_import_ms']} ms")
    if "memory" in result:
        print("memory (MB):", json.dumps(result["memory"]))
    print("fidelity against the torch engine:", result["fidelity"])
    print("thread policies A/B:", json.dumps(result["threads_ab"]))
    print("warm request, in process (ms):", json.dumps(result["profile"]))
    print("cold start phases (ms), from the snapshot:", json.dumps(served["phases_ms"]))
    print(f"cold start downloading the model: {served['cold_start_download_ms']} ms; phases (ms):",
          json.dumps(served["phases_download_ms"]))
    print(f"cost per million with torch: {result['cost_per_million'][f'torch_{MODELS[0]}']}")
    if "bundle_mb" in result:
        print("installed bundle (MB):", result["bundle_mb"])


if __name__ == "__main__":
    raise SystemExit(main())
