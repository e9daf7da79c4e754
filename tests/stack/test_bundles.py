"""The deployable function bundles: reproducible, pinned, and self-contained.

The self-containment tests serve real requests from a built bundle under functions-framework
in a separate, isolated Python (``-I``: no PYTHONPATH, no user site, no script directory),
with this repository's editable install removed from the import system and an import guard
that refuses ``imgclassify`` from anywhere but the bundle. The guard writes where the package
came from, so the test proves it rather than assuming it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from packaging.requirements import Requirement
from packaging.version import Version

from devstack.processes import REPO, free_port, spawn, stop, wait_until_answers
from imgclassify.publish.catalog_writes import publish
from imgclassify.publish.cli import main as publish_main
from imgclassify.publish.sources import publish_bundled
from imgclassify.runtime.engines import EngineOptions
from imgclassify.runtime.registry import ModelRegistry
from imgclassify.store.catalog import onnx_object
from imgclassify.store.objects import GcsStore
from tests.support.manifests import tiny_draft
from tests.support.onnx_graphs import colour_classifier, serialized
from tests.support.photos import CAT_INDICES, cat_jpeg

sys.path.insert(0, str(REPO / "scripts"))
import build_bundles  # noqa: E402

# Makes the repository's own sources unimportable in a fresh `python -I` (argv[1]: the repo root).
CUT_OFF_REPO = textwrap.dedent(
    """
    import os
    import sys

    repo = sys.argv[1]
    # The venv has the repository installed in editable mode: drop its finder, its path hook and
    # placeholder, and any path into the repository (the venv itself may live there: it stays).
    sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
    sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
    venv = os.path.realpath(sys.prefix) + os.sep


    def keep(entry):
        where = os.path.realpath(entry) + os.sep
        return "__editable__" not in entry and (where.startswith(venv) or not where.startswith(repo + os.sep))


    sys.path[:] = [entry for entry in sys.path if entry and keep(entry)]
    sys.path_importer_cache.clear()
    """
)

# Then: imgclassify only from the bundle, and functions-framework serving it.
LAUNCHER = CUT_OFF_REPO + textwrap.dedent(
    """
    import importlib.machinery

    bundle, record, blocked = sys.argv[2], sys.argv[3], sys.argv[4].split(",")


    class Guard:
        \"\"\"imgclassify only from the bundle; the packages in ``blocked`` not at all.\"\"\"

        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in blocked:
                raise ImportError(f"{name} is blocked in this test: the function must not need it")
            if top not in ("imgclassify", "devstack"):
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None:
                raise ImportError(f"{name} is not in the bundle {bundle}")
            # A namespace package's "origin" would be the list of its directories.
            origins = [spec.origin] if spec.origin else list(spec.submodule_search_locations or [])
            for origin in map(os.path.realpath, origins):
                if not origin.startswith(bundle + os.sep):
                    raise ImportError(f"{name} would come from {origin}, outside the bundle {bundle}")
                with open(record, "a") as out:
                    out.write(origin + "\\n")
            return spec


    sys.meta_path.insert(0, Guard())
    sys.argv = ["functions-framework", *sys.argv[5:]]
    from functions_framework._cli import _cli

    _cli()
    """
)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles")
    for function in build_bundles.FUNCTIONS:
        build_bundles.build_bundle(function, out)
    return out


def serve_bundle(bundle: Path, function: str, env: dict[str, str], workdir: Path, blocked: tuple[str, ...] = ()):
    """Start ``function`` from ``bundle``; return (url, process, record of imgclassify's origins)."""
    launcher = workdir / "launcher.py"
    launcher.write_text(LAUNCHER)
    record = workdir / f"{function}-imports.txt"
    port = free_port()
    bundle = bundle.resolve()
    command = [sys.executable, "-I", str(launcher), str(REPO.resolve()), str(bundle), str(record),
               ",".join(blocked) or "-", "--target", function, "--source", str(bundle / "main.py"),
               "--host", "127.0.0.1", "--port", str(port)]
    log = open(workdir / f"{function}.log", "wb")
    process = spawn(command, env={**env, "PYTHONPATH": ""}, cwd=bundle, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(url + "/v1/models/none", process, timeout=180)
    except Exception:
        stop(process)
        raise AssertionError((workdir / f"{function}.log").read_text()[-4000:]) from None
    return url, process, record


def test_the_isolated_interpreter_cannot_import_the_repository_copy(tmp_path):
    """The control for the serving tests below: without a bundle, imgclassify is nowhere to be found."""
    probe = tmp_path / "probe.py"
    probe.write_text(CUT_OFF_REPO + "import importlib.util\nprint(importlib.util.find_spec('imgclassify'))\n")
    found = subprocess.run([sys.executable, "-I", str(probe), str(REPO.resolve())], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert found.returncode == 0, found.stderr
    assert found.stdout.strip() == "None"
    plain = subprocess.run([sys.executable, "-I", "-c", "import imgclassify.serving.routes as r; print(r.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert plain.stdout.startswith(str(REPO.resolve())), "the venv was expected to have the repo installed editable"


def test_bundle_holds_the_entry_point_the_package_and_pinned_requirements(bundles):
    for function in build_bundles.FUNCTIONS:
        bundle = bundles / function
        assert (bundle / "main.py").read_bytes() == (REPO / "functions" / function / "main.py").read_bytes()
        shipped = sorted(p.relative_to(bundle / "imgclassify") for p in (bundle / "imgclassify").rglob("*.py"))
        assert shipped == [p.relative_to(REPO / "imgclassify") for p in build_bundles.package_files(function)]
        assert not list(bundle.rglob("__pycache__"))
        with zipfile.ZipFile(bundles / f"{function}.zip") as archive:
            names = archive.namelist()
            assert names == sorted(names)
            assert {"main.py", "requirements.txt", "imgclassify/__init__.py", "imgclassify/serving/http.py",
                    "imgclassify/serving/bootstrap.py", f"imgclassify/serving/{function}_app.py"} <= set(names)
            assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def shipped_parts(bundle: Path) -> set[str]:
    """The subpackages and ground modules of imgclassify a bundle holds."""
    return {path.name if path.is_dir() else path.stem for path in (bundle / "imgclassify").iterdir()}


def test_each_bundle_ships_only_its_part_of_the_package(bundles):
    ground = {"__init__", "errors", "settings", "logs", "memory", "inflight", "top_k"}
    assert shipped_parts(bundles / "classify") == ground | {"serving", "runtime", "imaging", "store"}
    assert shipped_parts(bundles / "list_models") == ground | {"serving", "store"}
    listing_serving = {path.name for path in (bundles / "list_models" / "imgclassify" / "serving").iterdir()}
    assert not listing_serving & {"classify_app.py", "service.py", "request_parsing.py", "image_sources.py"}
    classify_serving = {path.name for path in (bundles / "classify" / "imgclassify" / "serving").iterdir()}
    assert "list_models_app.py" not in classify_serving and "contract.py" not in classify_serving


TORCH_STACK = ("torch", "torchvision", "timm", "safetensors", "efficientnet_lite_pytorch")


def test_classify_pins_onnx_runtime_and_neither_bundle_installs_torch_or_the_onnx_package(bundles):
    classify = (bundles / "classify" / "requirements.txt").read_text().splitlines()
    listing = (bundles / "list_models" / "requirements.txt").read_text().splitlines()
    assert any(re.fullmatch(r"onnxruntime==\d+\.\d+\.\d+", line) for line in classify)
    assert not [line for line in classify + listing if line.startswith("onnx==")]
    for line in classify + listing:
        if line and not line.startswith(("#", "-")):
            assert "==" in line, f"{line!r} is not pinned exactly"
    installed = [Requirement(line).name for line in classify + listing if line and not line.startswith(("#", "-"))]
    assert not set(map(build_bundles.canonical, installed)) & set(map(build_bundles.canonical, TORCH_STACK))
    assert not [line for line in listing if re.match(r"onnx", line)]
    assert not [line for line in classify + listing if line.startswith("--extra-index-url")]


def test_pins_cover_every_runtime_dependency_within_its_declared_range():
    import tomllib

    _, pins = build_bundles.read_pins()
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for requirement in map(Requirement, declared):
        pinned = Requirement(pins[build_bundles.canonical(requirement.name)])
        (spec,) = pinned.specifier
        assert spec.operator == "=="
        assert requirement.specifier.contains(Version(spec.version).public, prereleases=True), (requirement, spec)


def test_zip_is_reproducible_byte_for_byte(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        out.mkdir()
        build_bundles.build_bundle("classify", out)
    assert (first / "classify.zip").read_bytes() == (second / "classify.zip").read_bytes()


@pytest.fixture(scope="module")
def readme_bucket(emulator, new_bucket_module) -> str:
    """A bucket as the README's commands leave it: the bundled Lite0, and an untrained torchvision
    model published with `python -m imgclassify.publish torchvision mobilenet_v3_small --random-init
    --name smoke`."""
    bucket = new_bucket_module("readme")
    publish_bundled(GcsStore(bucket), ["efficientnet_lite0"], log=lambda _: None)
    assert publish_main(["--store", f"gs://{bucket}", "torchvision", "mobilenet_v3_small", "--random-init",
                         "--name", "smoke"]) == 0
    return bucket


@pytest.fixture(scope="module")
def new_bucket_module(emulator):
    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        emulator.create_bucket(name)
        return name

    return make


def torch_probabilities(bucket: str, name: str, photo: bytes) -> np.ndarray:
    """What the torch engine, in this process, gives for ``photo`` on ``name``'s published weights."""
    registry = ModelRegistry.over(GcsStore(bucket), cache_budget_bytes=2**30, catalog_ttl_seconds=0,
                             engine_options=EngineOptions("torch"))
    model, _ = registry.get(name)
    assert model.engine.name == "torch"
    return model.probabilities([model.prepare(photo, max_pixels=10**8)])[0]


def test_built_classify_bundle_serves_bundled_and_torchvision_models_with_neither_torch_nor_onnx_importable(
        bundles, emulator, readme_bucket, tmp_path):
    env = {"STORAGE_EMULATOR_HOST": emulator.url, "MODEL_STORE": f"gs://{readme_bucket}",
           "DEFAULT_MODEL": "efficientnet_lite0", "GOOGLE_CLOUD_PROJECT": "bundle-test"}
    url, process, record = serve_bundle(bundles / "classify", "classify", env, tmp_path,
                                        blocked=TORCH_STACK + ("onnx",))
    try:
        response = requests.post(url + "/v1/models/efficientnet_lite0:classify", data=cat_jpeg(),
                                 headers={"Content-Type": "image/jpeg"}, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["predictions"][0]["index"] in CAT_INDICES
        direct = requests.post(url + "/", data=cat_jpeg(), headers={"Content-Type": "image/jpeg"}, timeout=120)
        assert direct.status_code == 200, direct.text
        smoke = requests.post(url + "/v1/models/smoke:classify", data=cat_jpeg(),
                              headers={"Content-Type": "image/jpeg"}, timeout=120)
    finally:
        stop(process)
    assert smoke.status_code == 200, smoke.text
    assert smoke.json()["model"] == {"name": "smoke", "version": "1", "random_init": True}
    predictions = smoke.json()["results"][0]["predictions"]
    expected = torch_probabilities(readme_bucket, "smoke", cat_jpeg())
    assert len(predictions) == 5
    # An untrained network's scores are nearly tied: compare each score, and the top-5 up to ties.
    assert max(abs(p["score"] - expected[p["index"]]) for p in predictions) <= 1e-4
    assert min(p["score"] for p in predictions) >= np.sort(expected)[-5] - 1e-4
    log = (tmp_path / "classify.log").read_text()
    assert "is blocked in this test" not in log
    origins = set(record.read_text().split())
    bundle = str((bundles / "classify").resolve())
    expected_origins = {f"{bundle}/imgclassify/__init__.py", f"{bundle}/imgclassify/serving/bootstrap.py",
                        f"{bundle}/imgclassify/runtime/engines.py", f"{bundle}/imgclassify/runtime/scores.py",
                        f"{bundle}/imgclassify/imaging/preprocess.py"}
    assert expected_origins <= origins
    assert all(origin.startswith(bundle + "/") for origin in origins)


def test_built_list_models_bundle_lists_models_with_neither_torch_nor_onnx_runtime_importable(
        bundles, emulator, models_bucket, tmp_path):
    env = {"STORAGE_EMULATOR_HOST": emulator.url, "MODEL_STORE": f"gs://{models_bucket}"}
    url, process, record = serve_bundle(bundles / "list_models", "list_models", env, tmp_path,
                                        blocked=TORCH_STACK + ("onnxruntime", "onnx"))
    try:
        listing = requests.get(url + "/v1/models", timeout=60)
        assert listing.status_code == 200, listing.text
        assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= {
            model["name"] for model in listing.json()["models"]}
        one = requests.get(url + "/v1/models/efficientnet_lite1", timeout=60)
        assert one.status_code == 200, one.text
    finally:
        stop(process)
    log = (tmp_path / "list_models.log").read_text()
    assert "is blocked in this test" not in log
    bundle = str((bundles / "list_models").resolve())
    assert all(origin.startswith(bundle + "/") for origin in record.read_text().split())
    assert json.loads(next(line for line in log.splitlines() if "ready" in line))["message"].startswith("list_models")


def startup_entries(log: Path) -> list[dict]:
    """The function's JSON log lines (gunicorn's own lines are not JSON)."""
    return [json.loads(line) for line in log.read_text(errors="replace").splitlines() if line.startswith("{")]


def classify_tiny(url: str) -> requests.Response:
    return requests.post(url + "/v1/classify", data=cat_jpeg(), headers={"Content-Type": "image/jpeg"}, timeout=120)


def test_a_classify_bundle_built_from_a_store_starts_from_its_snapshot_until_the_default_moves_on(
        emulator, new_bucket_module, tmp_path):
    bucket = new_bucket_module("snapshot")
    store = GcsStore(bucket)
    publish(store, tiny_draft("1"), {"onnx": serialized(colour_classifier(3, seed=0))}, make_default=True)
    said = []
    build_bundles.build_bundle("classify", tmp_path / "out", f"gs://{bucket}", say=said.append)
    bundle = tmp_path / "out" / "classify"
    assert said == [f"classify: model snapshot tiny@1 from gs://{bucket} "
                    f"({sum(p.stat().st_size for p in (bundle / 'model_snapshot').iterdir())} bytes, verified)"]
    with zipfile.ZipFile(tmp_path / "out" / "classify.zip") as archive:
        assert {"model_snapshot/manifest.json", "model_snapshot/model.onnx"} <= set(archive.namelist())
    # Only the snapshot can serve version 1 now: had the instance downloaded, the load would fail.
    store.delete(onnx_object("tiny", "1"))
    env = {"STORAGE_EMULATOR_HOST": emulator.url, "MODEL_STORE": f"gs://{bucket}", "GOOGLE_CLOUD_PROJECT": "t",
           "ENGINE_THREADS": "2"}

    def start(workdir: Path) -> tuple[requests.Response, list[dict], list[Path]]:
        """The first answer, the start-up log, and what the instance left in its temporary directory."""
        (workdir / "tmp").mkdir(parents=True)
        url, process, _ = serve_bundle(bundle, "classify", {**env, "TMPDIR": str(workdir / "tmp")}, workdir)
        try:
            answer = classify_tiny(url)
            return answer, startup_entries(workdir / "classify.log"), list((workdir / "tmp").glob("imgclassify-*"))
        finally:
            stop(process)

    from_snapshot, first_log, first_left = start(tmp_path / "first")
    publish(store, tiny_draft("2"), {"onnx": serialized(colour_classifier(3, seed=1))}, make_default=True)
    moved_on, second_log, second_left = start(tmp_path / "second")

    assert from_snapshot.status_code == 200, from_snapshot.text
    assert from_snapshot.json()["model"]["version"] == "1"
    source = next(entry for entry in first_log if "model_source" in entry)
    assert source["model_source"] == "snapshot" and source["message"].startswith("tiny@1 from the bundle's snapshot")
    ready = next(entry for entry in first_log if entry["message"].startswith("classify ready"))
    assert "snapshot" in ready["startup_ms"] and "download" not in ready["startup_ms"]
    # ONNX Runtime optimised the snapshot's graph beside the catalog read, before the fork; the
    # worker's build used it and deleted its files
    assert "prepared_ahead" in ready["startup_ms"] and first_left == []
    # a process forked before the app's imports made the catalog and manifest reads
    assert ready["startup_ms"]["read_ahead_wait"] > 0

    assert moved_on.status_code == 200, moved_on.text
    assert moved_on.json()["model"]["version"] == "2"
    source = next(entry for entry in second_log if "model_source" in entry)
    assert source["model_source"] == "store" and source["severity"] == "INFO"
    assert source["message"] == "tiny@2 from the store: the snapshot holds tiny@1, not tiny@2"
    ready = next(entry for entry in second_log if entry["message"].startswith("classify ready"))
    assert "download" in ready["startup_ms"] and "snapshot" not in ready["startup_ms"]
    assert "prepared_ahead" not in ready["startup_ms"] and second_left == []  # prepared for 1, discarded
    assert ready["startup_ms"]["read_ahead_wait"] > 0  # its reads named tiny@2, which then downloaded
