"""Infrastructure, offline: deploy.sh: one copy of the settings, for the build and for people."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from devstack.processes import REPO
from imgclassify.publish.catalog_writes import publish
from imgclassify.store.catalog import onnx_object
from imgclassify.store.objects import LocalStore
from tests.support.infra import (
    REQUIRED_VARIABLES,
    TERRAFORM_DIR,
    evaluate_locals,
    terraform,
)
from tests.support.manifests import tiny_draft
from tests.support.onnx_graphs import colour_classifier, serialized

sys.path.insert(0, str(REPO / "scripts"))
import build_bundles  # noqa: E402


@pytest.fixture
def cloud_tools(tmp_path) -> dict:
    """Stand-ins for gcloud and terraform, which cannot reach Google Cloud from here.

    gcloud serves ``gs://BUCKET/PATH`` from a local directory (and refuses to read a bucket holding
    ``.forbidden``); terraform records its arguments (with the content of every -var-file) and
    succeeds, except ``console``, which needs no cloud: the real terraform runs it.
    """
    bin_dir, gcs, record = tmp_path / "bin", tmp_path / "gcs", tmp_path / "terraform-calls.jsonl"
    bin_dir.mkdir()
    gcs.mkdir()
    (bin_dir / "gcloud").write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, shutil, sys
        args = [a for a in sys.argv[1:] if a != "--quiet"]
        local = lambda uri: "{gcs}/" + uri.removeprefix("gs://")
        if args[:2] == ["storage", "cp"]:
            src, dst = args[2:4]
            try:
                shutil.copyfile(local(src) if src.startswith("gs://") else src,
                                local(dst) if dst.startswith("gs://") else dst)
            except FileNotFoundError:
                sys.exit("ERROR: (gcloud.storage.cp) The following URLs matched no objects or files: " + src)
        elif args[:2] == ["storage", "ls"]:
            sys.exit(0 if os.path.exists(local(args[2])) else 1)
        elif args[:2] == ["storage", "cat"]:
            bucket = "gs://" + args[2].removeprefix("gs://").split("/")[0]
            if os.path.exists(local(bucket) + "/.forbidden"):
                sys.exit("ERROR: (gcloud.storage.cat) HTTPError 403: deployer@p.iam.gserviceaccount.com does not "
                         "have storage.objects.get access to the Google Cloud Storage object.")
            try:
                sys.stdout.buffer.write(open(local(args[2]), "rb").read())
            except FileNotFoundError:
                sys.exit("ERROR: (gcloud.storage.cat) The following URLs matched no objects or files:\\n-" + args[2])
        else:
            sys.exit("unexpected gcloud call: " + " ".join(args))
        """))
    (bin_dir / "terraform").write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        paths = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("-var-file=")]
        with open("{record}", "a") as out:
            call = {{"args": sys.argv[1:], "cwd": os.getcwd(), "var_files": [open(p).read() for p in paths]}}
            out.write(json.dumps(call) + "\\n")
        if sys.argv[1] == "console":
            os.execv("{terraform()}", ["terraform", *sys.argv[1:]])
        """))
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return {"env": env, "gcs": gcs, "calls": lambda: [json.loads(line) for line in record.read_text().splitlines()]
            if record.exists() else []}


def run_deploy(tools: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TERRAFORM_DIR / "deploy.sh"), *args], capture_output=True, text=True,
                          env=tools["env"], timeout=300)


def test_deploy_applies_the_settings_kept_next_to_the_state_and_the_builds_image(cloud_tools):
    state = cloud_tools["gcs"] / "my-tfstate" / "imgclassify"
    state.mkdir(parents=True)
    (state / "terraform.tfvars").write_text('project_id = "my-project"\nclassify = { min_instances = 1 }\n')
    (state / "build.tfvars").write_text('batch_image = "europe-west1-docker.pkg.dev/p/imgclassify/batch:b1"\n')
    result = run_deploy(cloud_tools, "my-tfstate", "imgclassify", "-auto-approve")
    assert result.returncode == 0, result.stdout + result.stderr
    console, init, apply = cloud_tools["calls"]()
    # The bundles are built for the deployments these settings describe (below).
    assert console["args"][0] == "console" and console["var_files"] == [(state / "terraform.tfvars").read_text()]
    assert init["args"] == ["init", "-input=false", "-backend-config=bucket=my-tfstate",
                            "-backend-config=prefix=imgclassify"]
    assert apply["args"][:3] == ["apply", "-input=false", "-lock-timeout=30m"] and apply["args"][-1] == "-auto-approve"
    assert apply["var_files"] == [(state / "terraform.tfvars").read_text(), (state / "build.tfvars").read_text()]
    assert apply["cwd"] == str(TERRAFORM_DIR)
    assert not [arg for arg in apply["args"] if arg.startswith("-var=")]


def test_deploy_without_settings_in_the_state_bucket_stops_before_terraform(cloud_tools):
    (cloud_tools["gcs"] / "my-tfstate").mkdir()
    result = run_deploy(cloud_tools, "my-tfstate")
    assert result.returncode == 1
    assert "could not read gs://my-tfstate/imgclassify/terraform.tfvars" in result.stderr
    assert cloud_tools["calls"]() == []


def test_deploy_refuses_settings_that_only_this_machine_would_apply(cloud_tools):
    local = TERRAFORM_DIR / "zz-deploy-test.auto.tfvars"
    local.write_text("classify = { cpu = 4 }\n")
    try:
        result = run_deploy(cloud_tools, "my-tfstate")
    finally:
        local.unlink()
    assert result.returncode == 2
    assert "zz-deploy-test.auto.tfvars would be applied from this machine only" in result.stderr
    assert cloud_tools["calls"]() == []


# How Cloud Build's deploy step runs the script: a Python with the standard library only, gcloud on PATH.
def build_classify_bundle_without_the_storage_client(tools: dict, out, store: str | None,
                                                     *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-S", str(REPO / "scripts" / "build_bundles.py"), "classify",
                           "--out", str(out), *(["--store", store] if store else ["--no-snapshot"]), *options],
                          capture_output=True, text=True, env=tools["env"], timeout=300)


def test_the_premise_a_python_started_with_minus_s_has_no_storage_client():
    plain = subprocess.run([sys.executable, "-S", "-c", "import google.cloud.storage"], capture_output=True)
    assert plain.returncode != 0 and b"ModuleNotFoundError" in plain.stderr


def test_without_the_storage_client_the_snapshot_is_read_through_gcloud_and_verified(cloud_tools, tmp_path):
    store = LocalStore(cloud_tools["gcs"] / "weights")
    model = serialized(colour_classifier(3, seed=0))
    publish(store, tiny_draft("1"), {"onnx": model}, make_default=True)
    result = build_classify_bundle_without_the_storage_client(cloud_tools, tmp_path / "out", "gs://weights")
    assert result.returncode == 0, result.stdout + result.stderr
    snapshot = tmp_path / "out" / "classify" / "model_snapshot"
    assert (snapshot / "model.onnx").read_bytes() == model
    assert json.loads((snapshot / "manifest.json").read_text())["version"] == "1"
    size = sum(path.stat().st_size for path in snapshot.iterdir())
    said = f"classify: model snapshot tiny@1 from gs://weights ({size} bytes, read with gcloud, verified)"
    assert said in result.stdout


def test_without_the_storage_client_or_gcloud_a_store_stops_the_build_and_says_both_are_missing(tmp_path):
    result = build_classify_bundle_without_the_storage_client({"env": {"PATH": str(tmp_path)}}, tmp_path / "out",
                                                              "gs://weights")
    assert result.returncode == 1
    assert ("cannot read gs://weights: this Python has no google-cloud-storage and there is no gcloud on PATH"
            in result.stderr) and "Traceback" not in result.stderr


def test_through_gcloud_an_empty_store_gives_a_bundle_without_a_snapshot_and_a_warning(cloud_tools, tmp_path):
    (cloud_tools["gcs"] / "weights").mkdir()
    result = build_classify_bundle_without_the_storage_client(cloud_tools, tmp_path / "out", "gs://weights")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "classify: warning: no model snapshot (gs://weights has no published model yet)" in result.stdout
    assert (tmp_path / "out" / "classify.zip").is_file()
    assert not (tmp_path / "out" / "classify" / "model_snapshot").exists()


def reverse_bytes(path) -> None:
    path.write_bytes(path.read_bytes()[::-1])


@pytest.mark.parametrize("damage, said", [
    (lambda bucket: (bucket / ".forbidden").touch(),
     "gcloud storage cat gs://weights/models/catalog.json failed: ERROR: (gcloud.storage.cat) HTTPError 403"),
    (lambda bucket: reverse_bytes(bucket / onnx_object("tiny", "1")), "model.onnx of tiny@1 has sha256 "),
], ids=["unreadable", "corrupt_same_size"])
def test_through_gcloud_a_store_that_cannot_be_read_or_a_corrupt_model_stops_the_build(
        cloud_tools, tmp_path, damage, said):
    store = LocalStore(cloud_tools["gcs"] / "weights")
    publish(store, tiny_draft("1"), {"onnx": serialized(colour_classifier(3))}, make_default=True)
    damage(cloud_tools["gcs"] / "weights")
    result = build_classify_bundle_without_the_storage_client(cloud_tools, tmp_path / "out", "gs://weights")
    assert result.returncode == 1
    assert "cannot take the model snapshot from gs://weights: " in result.stderr and said in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "classify" / "model_snapshot").exists()


# --- the bundles follow the deployments the settings describe ---------------------------------

DEPLOYMENTS = [
    {"dedicated_classify": {"tiny_two": {}, "big.v2": {"environment": {"DEFAULT_MODEL": "tiny"}}}},
    {"classify": {"environment": {"DEFAULT_MODEL": "tiny_two", "LOG_LEVEL": "DEBUG"}}},
]


@pytest.mark.parametrize("settings", DEPLOYMENTS, ids=["dedicated", "shared_default_set"])
def test_the_build_reads_each_classify_deployments_default_model_as_terraform_sets_it(tmp_path, settings):
    var_file = tmp_path / "settings.tfvars.json"
    var_file.write_text(json.dumps({**REQUIRED_VARIABLES, **settings}))
    read = build_bundles.deployments_from([var_file])
    deployed = evaluate_locals(tmp_path, "{functions = local.functions, environment = local.function_environment}",
                               settings, sources=("main.tf", "functions.tf"), stubs={"weights_bucket": '"weights"'})
    defaults = {function["model"]: deployed["environment"][key].get("DEFAULT_MODEL")
                for key, function in deployed["functions"].items() if function["entry_point"] == "classify"}
    assert defaults == {None: read.shared, **read.dedicated}


def test_a_dedicated_deployment_runs_its_own_bundle_where_the_build_made_one_else_classifys(tmp_path):
    bundles = tmp_path / "bundles"
    own = build_bundles.DEDICATED_PREFIX + "tiny_two"
    built = ("classify", "list_models", own)
    bundles.mkdir()
    for name in built:
        (bundles / f"{name}.zip").touch()
    deployed = evaluate_locals(tmp_path, "{bundles = {for key, f in local.functions : key => f.bundle}, "
                               "zips = local.bundle_zips}", {**DEPLOYMENTS[0], "function_bundle_dir": str(bundles)},
                               sources=("main.tf", "functions.tf"), stubs={"weights_bucket": '"weights"'})
    assert deployed["bundles"] == {"classify": "classify", "list_models": "list_models",
                                   "classify_tiny_two": own, "classify_big_v2": "classify"}
    assert deployed["zips"] == {name: f"{bundles}/{name}.zip" for name in built}


def bundle_files(bundle) -> dict[str, bytes]:
    return {path.relative_to(bundle).as_posix(): path.read_bytes() for path in sorted(bundle.rglob("*"))
            if path.is_file()}


def test_each_dedicated_model_gets_the_classify_bundle_with_a_snapshot_of_its_own_and_a_rebuild_drops_it(
        cloud_tools, tmp_path):
    store = LocalStore(cloud_tools["gcs"] / "weights")
    default, dedicated = serialized(colour_classifier(3, seed=0)), serialized(colour_classifier(3, seed=1))
    publish(store, tiny_draft("1"), {"onnx": default}, make_default=True)
    publish(store, tiny_draft("4", name="tiny_two"), {"onnx": dedicated})
    settings = tmp_path / "my.tfvars"
    settings.write_text('project_id = "my-project"\ndedicated_classify = {\n  tiny_two = {}\n  unpublished = {}\n}\n')
    out = tmp_path / "out"
    (out / "classify-gone").mkdir(parents=True)
    (out / "classify-gone.zip").write_bytes(b"an earlier build's code")
    result = build_classify_bundle_without_the_storage_client(cloud_tools, out, "gs://weights",
                                                              "--terraform-vars", str(settings))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(path.name for path in out.iterdir()) == [
        "classify", "classify-tiny_two", "classify-tiny_two.zip", "classify.zip"]
    shared, own = bundle_files(out / "classify"), bundle_files(out / "classify-tiny_two")
    assert shared.pop("model_snapshot/model.onnx") == default and own.pop("model_snapshot/model.onnx") == dedicated
    assert json.loads(own.pop("model_snapshot/manifest.json"))["name"] == "tiny_two"
    assert json.loads(shared.pop("model_snapshot/manifest.json"))["name"] == "tiny"
    assert own == shared, "apart from the snapshot, the same code"
    assert "classify-tiny_two: model snapshot tiny_two@4 from gs://weights" in result.stdout
    assert ("classify-unpublished: warning: no model snapshot (no model named 'unpublished' is published"
            in result.stdout)
    assert "classify-unpublished: runs the classify bundle (no snapshot of unpublished)" in result.stdout

    again = build_classify_bundle_without_the_storage_client(cloud_tools, out, None, "--terraform-vars", str(settings))
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted(path.name for path in out.iterdir()) == ["classify", "classify.zip"]
    assert "classify-tiny_two: runs the classify bundle (built without snapshots)" in again.stdout


def test_settings_terraform_would_refuse_stop_the_bundle_build_with_its_message(cloud_tools, tmp_path):
    settings = tmp_path / "my.tfvars"
    settings.write_text('project_id = "my-project"\ndedicated_classify = { big = { cpu = 3 } }\n')
    result = build_classify_bundle_without_the_storage_client(cloud_tools, tmp_path / "out", None,
                                                              "--terraform-vars", str(settings))
    assert result.returncode == 1
    assert f"cannot read the deployments from {settings}" in result.stderr
    assert "dedicated_classify: Cloud Run allows" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
