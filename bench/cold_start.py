"""Cold start, process start to first 200, as ratios from one run: the classify function
starting from a model snapshot (``MODEL_SNAPSHOT_DIR``, what a bundle built with ``make bundles
MODEL_STORE=...`` carries), the same function downloading its model from the store, and the
minimal function (``bench/peers/onnx_peer.py`` under functions-framework, its model on local disk).

Starts its own storage emulator on 127.0.0.1 with the bundled EfficientNet-Lite0 published
(``--model``: another bundled model, e.g. the heavy one a dedicated deployment serves), and
starts each server ``--rounds`` times, interleaved (the order rotates each round) so that a
busy neighbour on a shared machine slows all three alike. Prints medians, ratios, the
service's start-up phases (its ``startup_ms`` log line) and the CPU; ``--importtime`` also
starts each once under ``python -X importtime`` and prints the largest top-level imports.
The servers start as in ``make bench`` (``bench/serving.py``), whose cold-start rows are these
two starts of the service and the minimal function, timed the same way: the package and the
peer compiled to bytecode first, as a deployed bundle's are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_photos import photos  # noqa: E402
from serving import Server, compile_like_buildpack, cpu_model, startup_phases  # noqa: E402

from devstack.emulator import StorageEmulator  # noqa: E402
from devstack.stack import function_command  # noqa: E402

PEER = REPO / "bench" / "peers" / "onnx_peer.py"


def cold_start(command: list[str], env: dict, path: str, image: tuple[bytes, str], log: Path) -> float:
    """Milliseconds from starting ``command`` to its first 200 for ``image`` on ``path``; stops it after."""
    server = Server(command, env, path, image, log=log)
    server.stop()
    return server.first_answer_ms


def top_imports(log: Path, count: int = 12) -> list[tuple[str, float]]:
    """The largest top-level imports (cumulative ms) in a ``-X importtime`` log."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|", 2)
            if name.startswith(" ") and not name.startswith("  ") and cumulative.strip().isdigit():
                found.append((name.strip(), int(cumulative) / 1000))
    return sorted(found, key=lambda item: -item[1])[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="starts of each server (default 7)")
    parser.add_argument("--model", default="efficientnet_lite0", help="the bundled model to serve (default Lite0)")
    parser.add_argument("--importtime", action="store_true", help="also one start of each under -X importtime")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args(argv)

    from imgclassify.publish.sources import publish_bundled
    from imgclassify.store.objects import GcsStore
    from imgclassify.store.snapshot import write_snapshot

    image = photos()["small"]
    work = Path(tempfile.mkdtemp(prefix="cold-start-"))
    with StorageEmulator() as emulator:
        env = {"STORAGE_EMULATOR_HOST": emulator.url}
        os.environ.update(env)  # this process's client: the bucket and the publish
        bucket = "cold-start-models"
        emulator.create_bucket(bucket)
        publish_bundled(GcsStore(bucket), [args.model], log=lambda _: None)
        snapshot = work / "model_snapshot"
        manifest = write_snapshot(GcsStore(bucket), snapshot, args.model)
        labels = work / "labels.json"
        labels.write_text(json.dumps(list(manifest.labels)))
        service_env = {**env, "MODEL_STORE": f"gs://{bucket}", "DEFAULT_MODEL": args.model,
                       "GOOGLE_CLOUD_PROJECT": "bench"}
        service = function_command("classify", 0)[:-1] + ["{port}"]
        framework = str(Path(sys.executable).with_name("functions-framework"))
        servers = {
            "snapshot": (service, {**service_env, "MODEL_SNAPSHOT_DIR": str(snapshot)}, "/v1/classify"),
            "download": (service, {**service_env, "MODEL_SNAPSHOT_DIR": str(work / "none")}, "/v1/classify"),
            "minimal": ([framework, "--target", "classify", "--source", str(PEER), "--host", "127.0.0.1",
                         "--port", "{port}"],
                        {"MODEL_PATH": str(snapshot / "model.onnx"), "LABELS_PATH": str(labels),
                         "RESIZE": str(manifest.preprocessing.resize),
                         "CROP": str(manifest.preprocessing.crop_size)}, "/"),
        }
        times: dict[str, list[float]] = {name: [] for name in servers}
        phases: dict[str, list[dict]] = {"snapshot": [], "download": []}
        names = list(servers)
        compile_like_buildpack()
        cold_start(*servers["minimal"], image, work / "warm-page-cache.log")  # the first start reads files from disk
        for round_number in range(args.rounds):
            order = names[round_number % 3:] + names[:round_number % 3]
            for name in order:
                log = work / f"{name}-{round_number}.log"
                times[name].append(cold_start(*servers[name], image, log))
                if name in phases:
                    phases[name].append(startup_phases(log))
            print(f"round {round_number + 1}: " + ", ".join(f"{name} {times[name][-1]:.0f} ms" for name in names),
                  flush=True)
        imports = {}
        if args.importtime:
            for name, (command, server_env, path) in servers.items():
                log = work / f"{name}-importtime.log"
                cold_start(command, {**server_env, "PYTHONPROFILEIMPORTTIME": "1"}, path, image, log)
                imports[name] = top_imports(log)

    medians = {name: round(statistics.median(values)) for name, values in times.items()}
    result = {
        "cpu": cpu_model(), "model": args.model, "rounds": args.rounds, "cold_start_ms": medians, "all_ms": times,
        "ratios": {"snapshot_vs_minimal": round(medians["snapshot"] / medians["minimal"], 3),
                   "download_vs_minimal": round(medians["download"] / medians["minimal"], 3),
                   "snapshot_vs_download": round(medians["snapshot"] / medians["download"], 3)},
        "phases_ms": {name: {key: statistics.median(entry[key] for entry in entries if key in entry)
                             for key in entries[0] if key != "model_source" and entries[0][key] is not None}
                      for name, entries in phases.items()},
        "model_source": {name: sorted({entry.get("model_source") for entry in entries}) for name, entries in
                         phases.items()},
        "imports_ms": imports,
    }
    print(f"\nCPU: {result['cpu']}, {args.model}, {args.rounds} interleaved rounds, medians (ms):")
    for name, value in medians.items():
        print(f"  {name:<9} {value:>6}")
    print("ratios:", json.dumps(result["ratios"]))
    for name, value in result["phases_ms"].items():
        print(f"phases, {name} (from {result['model_source'][name]}):", json.dumps(value))
    for name, found in imports.items():
        print(f"largest imports, {name}:", ", ".join(f"{module} {ms:.0f}" for module, ms in found))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    shutil.rmtree(work)  # the servers' logs: kept only when a start fails (its error names the log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
