"""The batch job (imgclassify.batch): sharding, chunked output, resumption, parity with /v1/classify.

The expensive parts run once per module: a few hundred generated and real images uploaded
to the storage emulator, then four tasks run as separate processes over the real Lite0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from devstack.stack import LocalStack
from imgclassify import batch
from imgclassify.store.objects import GcsStore, LocalStore, ObjectStore
from tests.support.photos import encode, real_photo

REPO = Path(__file__).resolve().parents[2]
MODEL = "efficientnet_lite0"
TOP_K = 5
BATCH_SIZE = 8          # the four-task run and the kill test use the same size, so their rows can be compared
TASKS = 4
GENERATED = 300
# Batched forward passes differ from single-image ones in the last float bits (a property of
# the engine's CPU kernels, measured up to ~4e-7 in probability), so a score rounded to 6 places
# can differ by one unit in the last place. With batch size 1 the rows are equal bit for bit.
SCORE_TOLERANCE = 2e-6
integration = pytest.mark.integration


# --- the images ---------------------------------------------------------------------------


def generated_images(count: int, seed: int = 5) -> dict[str, bytes]:
    """Small noise, solid and gradient images in every supported format, some in sub-folders."""
    rng = np.random.default_rng(seed)
    formats = [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tif"),
               ("JPEG", "JPEG")]
    images = {}
    for index in range(count):
        height, width = (int(side) for side in rng.integers(16, 97, size=2))
        kind = index % 3
        if kind == 0:
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        elif kind == 1:
            pixels = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (height, width, 3)).copy()
        else:
            ramp = np.linspace(0, 255, width, dtype=np.uint8)
            pixels = np.stack([np.tile(ramp, (height, 1))] * 3, axis=-1)
            pixels[..., index % 3] = 255 - pixels[..., index % 3]
        fmt, extension = formats[index % len(formats)]
        folder = "generated/deeper" if index % 5 == 0 else "generated"
        images[f"{folder}/{index:03d}.{extension}"] = encode(pixels, fmt)
    return images


def real_photos() -> dict[str, bytes]:
    photos = {f"photos/{name}.jpg": encode(real_photo(name), "JPEG", quality=90)
              for name in ("chelsea", "coffee", "astronaut", "camera", "rocket")}
    photos["photos/chelsea.png"] = encode(real_photo("chelsea"), "PNG")
    photos["photos/coffee-small.webp"] = encode(Image.fromarray(real_photo("coffee")).resize((150, 100)), "WEBP")
    return photos


def corrupt_images() -> dict[str, bytes]:
    jpeg = encode(real_photo("chelsea"), "JPEG")
    return {
        "corrupt/text.jpg": b"this is a shopping list, not a photo\n",
        "corrupt/truncated.jpg": jpeg[:600],
        "corrupt/empty.png": b"",
        "corrupt/damaged.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    }


NOT_IMAGES = {"notes.txt": b"not an image", "generated/README": b"ignored", "generated/labels.json": b"{}"}


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    """Every image of the test prefix, by name relative to it."""
    return {**generated_images(GENERATED), **real_photos(), **corrupt_images()}


def upload(store: ObjectStore, objects: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda item: store.write(*item), objects.items()))


def fresh_bucket(emulator) -> str:
    name = f"batch-{uuid.uuid4().hex[:12]}"
    emulator.create_bucket(name)
    return name


@pytest.fixture(scope="module")
def photos_bucket(emulator, corpus) -> str:
    bucket = fresh_bucket(emulator)
    upload(GcsStore(bucket, "in"), {**corpus, **NOT_IMAGES})
    return bucket


# --- running the job ----------------------------------------------------------------------


def job_env(emulator, models_bucket: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "STORAGE_EMULATOR_HOST": emulator.url, "MODEL_STORE": f"gs://{models_bucket}",
            "PYTHONPATH": str(REPO), **extra}


def start_task(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "imgclassify.batch", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 180) -> str:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"task exited with {process.returncode}:\n{stderr[-3000:]}"
    return stdout


def read_rows(store: ObjectStore) -> list[dict]:
    """Every row of every chunk below ``store``."""
    return [json.loads(line) for name in store.list("") if name.endswith(".jsonl")
            for line in store.read(name).data.decode().splitlines()]


def log_entries(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def four_tasks(emulator, models_bucket, photos_bucket) -> dict:
    """The whole prefix split over four concurrent task processes, as Cloud Run would run them."""
    output = GcsStore(photos_bucket, "out-four")
    env = job_env(emulator, models_bucket, ENGINE_THREADS="1", CLOUD_RUN_TASK_COUNT=str(TASKS),
                  BATCH_LOG_SECONDS="0")
    processes = [
        start_task({**env, "CLOUD_RUN_TASK_INDEX": str(index)}, f"gs://{photos_bucket}/in/", output.uri,
                   "--model", MODEL, "--top-k", str(TOP_K),
                   "--batch-size", str(BATCH_SIZE), "--chunk-size", "32")
        for index in range(TASKS)
    ]
    logs = [finish(process) for process in processes]
    summaries = [json.loads(output.read(f"{batch.task_dir(index, TASKS)}/summary.json").data)
                 for index in range(TASKS)]
    return {"output": output, "rows": read_rows(output), "summaries": summaries, "logs": logs}


@pytest.fixture(scope="module")
def classify_url(emulator, models_bucket, tmp_path_factory) -> str:
    """The real classify function (functions-framework), single-threaded like the job's tasks here.

    The engine's last float bits depend on its thread count as well as on the batch size, so
    the API and the job are compared with the same thread count.
    """
    local = LocalStack(bucket=models_bucket, emulator=emulator, log_dir=tmp_path_factory.mktemp("classify-logs"))
    try:
        yield local.start_function("classify", env={"ENGINE_THREADS": "1"})
    finally:
        local.stop()


def relative(uri: str, bucket: str, prefix: str) -> str:
    start = f"gs://{bucket}/{prefix}/"
    assert uri.startswith(start)
    return uri[len(start):]


def api_classify(url: str, data: bytes) -> dict:
    """What /v1/classify answers for one image (the predictions, or the error object)."""
    response = requests.post(f"{url}/v1/models/{MODEL}:classify?top_k={TOP_K}", data=data,
                             headers={"Content-Type": "application/octet-stream"}, timeout=60)
    body = response.json()
    return body["error"] if "error" in body else body["results"][0]["predictions"]


# --- the four-task run ----------------------------------------------------------------------

@integration
def test_four_tasks_give_exactly_one_row_per_image(four_tasks, photos_bucket, corpus):
    uris = Counter(row["uri"] for row in four_tasks["rows"])

    assert sum(uris.values()) == len(corpus)
    assert set(uris) == {f"gs://{photos_bucket}/in/{name}" for name in corpus}
    assert max(uris.values()) == 1
    assert sum(summary["images"] for summary in four_tasks["summaries"]) == len(corpus)
    assert all(summary["images"] > 0 for summary in four_tasks["summaries"])  # every task had a share


@integration
def test_rows_name_the_pinned_model_version(four_tasks):
    job = json.loads(four_tasks["output"].read("job.json").data)
    predicted = [row for row in four_tasks["rows"] if "predictions" in row]

    assert (job["model"], job["version"]) == (MODEL, "1")
    assert {(row["model"], row["version"]) for row in predicted} == {(MODEL, "1")}
    assert {len(row["predictions"]) for row in predicted} == {TOP_K}


@integration
def test_real_photos_get_the_labels_the_api_gives(four_tasks, photos_bucket, classify_url):
    rows = {relative(row["uri"], photos_bucket, "in"): row for row in four_tasks["rows"]}

    for name, data in real_photos().items():
        expected = api_classify(classify_url, data)
        found = rows[name]["predictions"]
        assert [(p["label"], p["index"]) for p in found] == [(p["label"], p["index"]) for p in expected], name
        assert np.allclose([p["score"] for p in found], [p["score"] for p in expected], rtol=0,
                           atol=SCORE_TOLERANCE), name
    assert rows["photos/chelsea.jpg"]["predictions"][0]["index"] in range(281, 286)  # a cat
    assert rows["photos/coffee.jpg"]["predictions"][0]["index"] == 967  # espresso


@integration
def test_corrupt_images_become_the_error_rows_the_api_would_answer(four_tasks, photos_bucket, classify_url):
    rows = {relative(row["uri"], photos_bucket, "in"): row for row in four_tasks["rows"]}
    errors = {name: row["error"] for name, row in rows.items() if "error" in row}

    assert set(errors) == set(corrupt_images())
    assert errors["corrupt/text.jpg"]["code"] == "UNSUPPORTED_IMAGE_FORMAT"
    assert errors["corrupt/truncated.jpg"]["code"] == "UNDECODABLE_IMAGE"
    assert errors["corrupt/empty.png"] == {"code": "UNDECODABLE_IMAGE", "message": "the image is empty (0 bytes)",
                                          "status": 422}
    for name, data in corrupt_images().items():
        if data:  # an empty upload is refused before decoding (EMPTY_BODY); an empty object is a bad image
            assert errors[name] == api_classify(classify_url, data), name
    summary_errors = Counter()
    for summary in four_tasks["summaries"]:
        summary_errors.update(summary["error_codes"])
    assert summary_errors == Counter(error["code"] for error in errors.values())


@integration
def test_each_task_logs_json_progress_and_a_summary(four_tasks):
    entries = [entry for stdout in four_tasks["logs"] for entry in log_entries(stdout)]
    progress = [entry for entry in entries if entry.get("event") == "progress"]
    finished = [entry for entry in entries if entry.get("event") == "finished"]

    assert progress and all(entry["logger"] == "imgclassify.batch" for entry in progress)
    assert {"images_done", "images_total", "errors", "images_per_second", "task_index"} <= set(progress[-1])
    assert sorted(entry["task_index"] for entry in finished) == list(range(TASKS))
    assert all(summary["this_attempt"]["images_per_second"] > 0 for summary in four_tasks["summaries"])


# --- parity, interruption -------------------------------------------------------------------


@integration
def test_with_batch_size_one_rows_equal_the_api_bit_for_bit(emulator, models_bucket, classify_url):
    """Same decode, preprocessing, forward and rounding as the function (which runs one image per pass)."""
    images = {**real_photos(), **generated_images(6, seed=9),
              **{name: data for name, data in corrupt_images().items() if data}}
    bucket = fresh_bucket(emulator)
    upload(GcsStore(bucket, "in"), images)
    output = GcsStore(bucket, "out")

    finish(start_task(job_env(emulator, models_bucket, ENGINE_THREADS="1"), f"gs://{bucket}/in", output.uri,
                      "--model", MODEL, "--top-k", str(TOP_K), "--batch-size", "1"))

    for row in read_rows(output):
        name = relative(row["uri"], bucket, "in")
        assert row.get("predictions", row.get("error")) == api_classify(classify_url, images[name]), name


@integration
def test_a_task_killed_midway_and_rerun_completes_with_no_duplicates(emulator, models_bucket, four_tasks, corpus):
    names = sorted(name for name in corpus if name.startswith("generated/"))[:64]
    bucket = fresh_bucket(emulator)
    upload(GcsStore(bucket, "in"), {name: corpus[name] for name in names})
    output = GcsStore(bucket, "out")
    env = job_env(emulator, models_bucket, ENGINE_THREADS="1")
    args = (f"gs://{bucket}/in", output.uri, "--model", MODEL, "--top-k", str(TOP_K),
            "--batch-size", str(BATCH_SIZE), "--chunk-size", "8")
    chunks = len(names) // 8

    process = start_task(env, *args)
    deadline = time.monotonic() + 120
    while not batch.completed_chunks(output, 0, 1):
        assert process.poll() is None and time.monotonic() < deadline, "no chunk was written"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    written_before = batch.completed_chunks(output, 0, 1)
    assert 0 < len(written_before) < chunks, "the kill did not land midway"

    finish(start_task(env, *args))

    rows = read_rows(output)
    summary = json.loads(output.read(f"{batch.task_dir(0, 1)}/summary.json").data)
    assert sorted(relative(row["uri"], bucket, "in") for row in rows) == names
    assert summary["chunks_done_before"] == len(written_before)
    assert summary["chunks_written"] == chunks - len(written_before)
    assert summary["images"] == summary["predicted"] == len(names)
    # Same batch size: every image's row equals the one from the uninterrupted four-task run.
    reference = {relative(row["uri"], four_tasks["output"].bucket_name, "in"): row["predictions"]
                 for row in four_tasks["rows"] if "predictions" in row}
    assert {relative(row["uri"], bucket, "in"): row["predictions"] for row in rows} == {
        name: reference[name] for name in names}


# --- sharding, chunks and the resume logic (no processes) -----------------------------------


def test_a_name_always_belongs_to_the_same_task_whatever_else_is_listed():
    names = [f"photos/{index:05d}.jpg" for index in range(2000)]
    before = {name: batch.shard_of(name, 7) for name in names}
    shards = [batch.task_images(names, index, 7) for index in range(7)]

    assert sorted(name for shard in shards for name in shard) == sorted(names)  # each name in exactly one
    assert all(240 < len(shard) < 330 for shard in shards)  # about 2000 / 7 each
    grown = names[::2] + [f"new/{index}.png" for index in range(500)]
    assert all(batch.shard_of(name, 7) == before[name] for name in grown if name in before)


def test_sharding_is_the_same_in_every_process():
    names = [f"a/{index}.jpg" for index in range(50)]
    code = ("import json, sys; from imgclassify.batch import shard_of; "
            "print(json.dumps([shard_of(n, 13) for n in json.load(sys.stdin)]))")
    answers = [
        subprocess.run([sys.executable, "-c", code], input=json.dumps(names), capture_output=True, text=True,
                       check=True, cwd=REPO, env={**os.environ, "PYTHONHASHSEED": seed}, timeout=60).stdout
        for seed in ("1", "2")
    ]

    assert json.loads(answers[0]) == json.loads(answers[1]) == [batch.shard_of(name, 13) for name in names]


def test_only_image_extensions_are_listed_in_name_order(tmp_path):
    store = LocalStore(tmp_path)
    for name in ("b.JPG", "a/c.png", "a/z.txt", "d.tiff", "e.jsonl", "f.webp", "a/.hidden.jpg"):
        store.write(name, b"x")

    assert batch.list_images(store) == ["a/c.png", "b.JPG", "d.tiff", "f.webp"]


def test_chunks_are_fixed_slices_of_the_plan():
    assert batch.chunked(list("abcdefg"), 3) == [list("abc"), list("def"), ["g"]]
    assert batch.chunk_object(3, 10, 12) == "task-00003-of-00010/chunk-000012.jsonl"


def test_completed_chunks_are_this_tasks_chunk_objects_only(tmp_path):
    store = LocalStore(tmp_path)
    for name in ("task-00001-of-00004/chunk-000000.jsonl", "task-00001-of-00004/chunk-000002.jsonl",
                 "task-00001-of-00004/summary.json", "task-00001-of-00004/plan.json",
                 "task-00002-of-00004/chunk-000001.jsonl", "task-00001-of-00008/chunk-000001.jsonl"):
        store.write(name, b"{}\n")
    (tmp_path / "task-00001-of-00004" / ".tmp-half-written").write_bytes(b"{")

    assert batch.completed_chunks(store, 1, 4) == {0, 2}


def test_a_chunk_is_never_overwritten(tmp_path):
    store = LocalStore(tmp_path)

    assert batch.write_chunk(store, "t/chunk-000000.jsonl", [{"uri": "first"}]) is True
    assert batch.write_chunk(store, "t/chunk-000000.jsonl", [{"uri": "second"}]) is False
    assert store.read("t/chunk-000000.jsonl").data == b'{"uri": "first"}\n'


def test_a_rerun_with_other_parameters_is_refused(tmp_path):
    source, output = LocalStore(tmp_path / "in"), LocalStore(tmp_path / "out")
    output.write("job.json", json.dumps({"input": source.uri, "model": MODEL, "version": "1", "top_k": 5,
                                         "task_count": 4, "chunk_size": 64}).encode())
    same = batch.BatchOptions(input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=MODEL, task_count=4)

    assert batch.pin_job(output, source, same, registry=None)["version"] == "1"
    for changed in ({"top_k": 3}, {"task_count": 8}, {"chunk_size": 32}, {"model": f"{MODEL}@2"},
                    {"model": "efficientnet_lite1"}):
        options = replace(same, **changed)
        with pytest.raises(batch.BatchConfigError, match="belongs to another run"):
            batch.pin_job(output, source, options, registry=None)


def test_chunks_done_earlier_are_skipped_and_counted_on_a_local_store(tmp_path, emulator, models_bucket, capsys):
    images = generated_images(20, seed=3)
    upload(LocalStore(tmp_path / "in"), {**images, "broken.jpg": b"no"})
    output = LocalStore(tmp_path / "out")
    args = [str(tmp_path / "in"), str(tmp_path / "out"), "--model", MODEL,
            "--chunk-size", "8", "--batch-size", "4", "--top-k", "2"]
    env = job_env(emulator, models_bucket, ENGINE_THREADS="1")
    plan = sorted([*images, "broken.jpg"])
    earlier = [{"uri": "written by an earlier attempt", "error": {"code": "UNDECODABLE_IMAGE"}}] * 8
    output.write("task-00000-of-00001/chunk-000001.jsonl", batch.encode_rows(earlier))

    assert batch.main(args, env) == 0
    first = json.loads(output.read("task-00000-of-00001/summary.json").data)
    assert batch.main(args, env) == 0
    second = json.loads(output.read("task-00000-of-00001/summary.json").data)

    capsys.readouterr()
    assert output.read("task-00000-of-00001/chunk-000001.jsonl").data == batch.encode_rows(earlier)
    assert json.loads(output.read("task-00000-of-00001/plan.json").data)["images"] == plan
    uris = [row["uri"] for row in read_rows(output)]
    assert uris == [f"{tmp_path}/in/{name}" for name in plan[:8]] + [earlier[0]["uri"]] * 8 + [
        f"{tmp_path}/in/{name}" for name in plan[16:]]
    assert (first["chunks"], first["chunks_done_before"], first["chunks_written"]) == (3, 1, 2)
    assert (first["predicted"], first["errors"], first["this_attempt"]["images"]) == (12, 9, 13)
    assert (second["chunks_done_before"], second["chunks_written"], second["this_attempt"]["images"]) == (3, 0, 0)
    assert second["error_codes"] == first["error_codes"] == {"UNDECODABLE_IMAGE": 8, "UNSUPPORTED_IMAGE_FORMAT": 1}


@pytest.mark.parametrize("where", ["input", "output"])
def test_a_bucket_that_does_not_exist_is_named_and_nothing_of_the_run_is_written(where, tmp_path, emulator,
                                                                                  models_bucket, capsys):
    upload(LocalStore(tmp_path / "in"), generated_images(2, seed=4))
    missing = f"gs://missing-{uuid.uuid4().hex[:12]}/run/"
    args = [missing, str(tmp_path / "out")] if where == "input" else [str(tmp_path / "in"), missing]

    assert batch.main([*args, "--model", MODEL], job_env(emulator, models_bucket)) == 2

    assert f"OBJECT_NOT_FOUND: the bucket {missing.removesuffix('/run/')} does not exist" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_an_empty_input_is_refused_before_the_run_writes_anything(tmp_path, emulator, models_bucket, capsys):
    (tmp_path / "in").mkdir()

    assert batch.main([str(tmp_path / "in"), str(tmp_path / "out")], job_env(emulator, models_bucket)) == 2

    assert f"OBJECT_NOT_FOUND: {tmp_path / 'in'} holds no objects; is INPUT right?" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_without_a_published_model_the_job_names_the_store_it_read(tmp_path, capsys):
    upload(LocalStore(tmp_path / "in"), generated_images(2, seed=5))
    env = {**os.environ, "MODEL_STORE": str(tmp_path / "no-models")}

    assert batch.main([str(tmp_path / "in"), str(tmp_path / "out")], env) == 2

    assert (f"UNKNOWN_MODEL: no model is published yet; publish one with `python -m imgclassify.publish` "
            f"(model store: {tmp_path / 'no-models'}, from MODEL_STORE)") in capsys.readouterr().out


# --- command line and image -----------------------------------------------------------------


def test_flags_fall_back_to_cloud_run_and_batch_environment_variables():
    env = {"BATCH_INPUT": "gs://in/x/", "BATCH_OUTPUT": "gs://out/y", "BATCH_MODEL": "efficientnet_lite1@1",
           "BATCH_SIZE": "4", "BATCH_DOWNLOAD_CONCURRENCY": "3", "BATCH_CHUNK_SIZE": "100",
           "CLOUD_RUN_TASK_INDEX": "7", "CLOUD_RUN_TASK_COUNT": "10", "CLOUD_RUN_TASK_ATTEMPT": "2"}

    options = batch.parse_args([], env)
    overridden = batch.parse_args(["gs://in/z", "out", "--batch-size", "32", "--task-index", "0", "--top-k", "3"],
                                  env)

    assert options == batch.BatchOptions(input="gs://in/x/", output="gs://out/y", model="efficientnet_lite1@1",
                                         top_k=5, batch_size=4, download_concurrency=3, chunk_size=100,
                                         task_index=7, task_count=10, attempt="2")
    assert (overridden.input, overridden.output) == ("gs://in/z", "out")
    assert (overridden.batch_size, overridden.task_index, overridden.top_k) == (32, 0, 3)


@pytest.mark.parametrize("argv", [
    ["a", "b", "--task-index", "4", "--task-count", "4"],
    ["a", "b", "--top-k", "0"],
    ["a", "b", "--batch-size", "0"],
    ["a"],
])
def test_bad_arguments_stop_with_status_2(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        batch.parse_args(argv, {})

    assert stopped.value.code == 2


def test_the_job_image_runs_the_batch_module_from_the_copied_package():
    dockerfile = (REPO / "batch" / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", dockerfile, re.MULTILINE).group(1))
    stages = re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.MULTILINE)

    assert entrypoint == ["python", "-m", "imgclassify.batch"] and callable(batch.main)
    assert re.search(r"^COPY imgclassify/ /app/imgclassify/$", dockerfile, re.MULTILINE)
    assert stages == ["base", "job"]  # Cloud Build caches --target=base
    assert "torch" not in dockerfile.replace("no torch", "")  # models run on ONNX Runtime
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".local", "**/__pycache__"} <= set(ignored)


def test_the_job_image_base_is_pinned_by_digest_so_its_cache_holds_until_the_pin_changes():
    dockerfile = (REPO / "batch" / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE).group(1)

    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base)
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\} AS base$", dockerfile, re.MULTILINE)


def pins(path: Path) -> dict[str, str]:
    """``{name: version}`` of a requirements file's ``name==version`` lines."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


def test_the_job_image_pins_the_versions_the_functions_deploy():
    """ONNX Runtime and Pillow decide the last bits of a score: the job and the API must run the same ones."""
    functions = pins(REPO / "functions" / "requirements.txt")
    job = pins(REPO / "batch" / "requirements.txt")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    declared_names = {re.sub(r"[-_.]+", "-", re.split(r"[<>=\[ ]", item)[0]).lower() for item in declared}

    assert job == {name: functions[name] for name in job}
    assert set(job) == declared_names - {"functions-framework", "python-multipart", "pybase64"}  # request bodies
    assert "torch" not in job and "torch" not in functions
