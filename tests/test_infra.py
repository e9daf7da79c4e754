"""Offline checks of everything that deploys: Terraform, the gateway spec, cloudbuild.yaml.

Nothing here reaches Google Cloud. Terraform formats the code and renders the gateway spec
with its own ``templatefile`` (``terraform console`` needs no providers); checkov runs from
its own virtualenv (``make checkov-venv``); python-hcl2 reads the IAM grants. A missing tool
fails the test rather than skipping it: CI installs them all.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import hcl2
import pytest
import yaml
from hcl2 import SerializationOptions
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV2SpecValidator

import devstack.router
from devstack.processes import REPO
from imgclassify import routes

TERRAFORM_DIR = REPO / "infra" / "terraform"
SPEC_TEMPLATE = TERRAFORM_DIR / "openapi.yaml.tftpl"
CHECKOV = Path(os.environ.get("CHECKOV", REPO / ".local" / "checkov-venv" / "bin" / "checkov"))
TF_ENV = {**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null", "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}

BACKENDS = {
    "list_models": "https://list-models-abc123-ew.a.run.app",
    "classify": "https://classify-abc123-ew.a.run.app",
}
DEDICATED = {"efficientnet_lite2": "https://classify-efficientnet-lite2-abc123-ew.a.run.app",
             "big.model-v2": "https://classify-big-model-v2-abc123-ew.a.run.app"}
RUNTIME_ACCOUNTS = {"classify", "list_models"}
IAM_GRANT = re.compile(r"_iam_(member|binding|policy)$")


def terraform() -> str:
    found = shutil.which("terraform")
    assert found, "terraform is not on PATH; the infrastructure checks need it (see .ci/run)"
    return found


# --- Terraform -----------------------------------------------------------------------------


def test_terraform_code_is_formatted():
    result = subprocess.run([terraform(), "fmt", "-check", "-recursive", "-diff", str(TERRAFORM_DIR)],
                            capture_output=True, text=True, env=TF_ENV, timeout=120)
    assert result.returncode == 0, f"run: terraform fmt -recursive infra/terraform\n{result.stdout}{result.stderr}"


def test_checkov_finds_nothing_and_every_skip_says_why():
    assert CHECKOV.exists(), f"{CHECKOV} is missing: run `make checkov-venv`"
    result = subprocess.run([str(CHECKOV), "--directory", str(TERRAFORM_DIR), "--framework", "terraform",
                             "--skip-download", "--compact", "--output", "json"],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "LOG_LEVEL": "ERROR"})
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(check["check_id"], check["resource"]) for each in reports for check in each["results"]["failed_checks"]]
    assert failed == [], failed
    assert result.returncode == 0, result.stderr[-2000:]
    skipped = [check for each in reports for check in each["results"]["skipped_checks"]]
    assert skipped, "checkov reported no skips: is it reading the inline comments?"
    for check in skipped:
        reason = check.get("check_result", {}).get("suppress_comment", "")
        assert len(reason) > 30, f"{check['check_id']} on {check['resource']} is skipped without a real reason"


def test_every_checkov_skip_in_the_code_names_a_check_and_a_reason():
    skips = [(path.name, line.strip()) for path in TERRAFORM_DIR.glob("*.tf")
             for line in path.read_text().splitlines() if "checkov:skip" in line]
    assert skips
    for file, line in skips:
        assert re.fullmatch(r"#checkov:skip=CKV2?_GCP_\d+:.{30,}", line), f"{file}: {line}"


def test_versions_pin_terraform_and_both_google_providers():
    versions = load_hcl("versions.tf")["terraform"][0]
    assert versions["required_version"]
    providers = versions["required_providers"][0]
    assert providers["google"]["source"] == "hashicorp/google"
    assert providers["google-beta"]["source"] == "hashicorp/google-beta"
    for name in ("google", "google-beta"):
        assert re.match(r"~> \d+\.\d+", providers[name]["version"]), providers[name]


def test_every_variable_has_a_type_and_a_description_and_every_output_a_description():
    variables = {name: body for block in load_hcl("variables.tf")["variable"] for name, body in block.items()}
    assert {"project_id", "region", "weights_bucket", "classify", "list_models", "dedicated_classify",
            "classify_requests_per_minute", "list_models_requests_per_minute", "batch_image",
            "batch_parallelism", "batch_task_count", "batch_timeout_seconds"} <= set(variables)
    for name, body in variables.items():
        assert body.get("type") and len(body.get("description", "")) > 15, name
    constrained = [name for name, body in variables.items() if "validation" in body]
    assert len(constrained) >= 15, constrained
    outputs = {name: body for block in load_hcl("outputs.tf")["output"] for name, body in block.items()}
    assert {"gateway_url", "api_key", "site_url", "site_bucket", "weights_bucket"} <= set(outputs)
    for name, body in outputs.items():
        assert len(body.get("description", "")) > 10, name
    assert outputs["api_key"]["sensitive"] is True


def test_function_settings_are_variables_and_functions_have_no_public_invoker():
    function = resources("google_cloudfunctions2_function")["function"]
    service = function["service_config"][0]
    for field, expected in {"available_memory": "memory_mb", "available_cpu": "cpu",
                            "max_instance_request_concurrency": "concurrency", "min_instance_count": "min_instances",
                            "max_instance_count": "max_instances", "timeout_seconds": "timeout_seconds"}.items():
        assert f"each.value.{expected}" in str(service[field]), field
    assert "function_environment" in service["environment_variables"]
    boost = resources("terraform_data")["startup_cpu_boost"]
    assert "each.value.startup_cpu_boost" in json.dumps(boost)
    assert function["build_config"][0]["runtime"] == "python311"
    # The source object's name carries the zip's hash, so a code change redeploys.
    source = resources("google_storage_bucket_object")["function_source"]
    assert "filesha256(each.value)" in source["name"]


def test_api_config_id_follows_the_spec_hash_and_is_created_before_the_old_one_goes():
    config = resources("google_api_gateway_api_config")["main"]
    assert "sha256(local.openapi_spec)" in config["api_config_id"]
    assert config["lifecycle"][0]["create_before_destroy"] is True
    assert config["gateway_config"][0]["backend_config"][0]["google_service_account"] == (
        "${google_service_account.gateway.email}")
    key = resources("google_apikeys_key")["web"]
    assert key["restrictions"][0]["api_targets"][0]["service"] == "${google_api_gateway_api.main.managed_service}"


def test_batch_job_takes_image_parallelism_task_count_and_timeout_from_variables():
    job = resources("google_cloud_run_v2_job")["batch"]
    text = json.dumps(job)
    for variable in ("batch_image", "batch_parallelism", "batch_task_count", "batch_timeout_seconds", "batch_args"):
        assert f"var.{variable}" in text, variable
    assert job["template"][0]["template"][0]["service_account"] == "${google_service_account.batch.email}"


# --- IAM: least privilege ----------------------------------------------------------------------


def test_no_public_principal_except_read_of_the_web_page():
    public = [grant for grant in iam_grants() if grant.member in ("allUsers", "allAuthenticatedUsers")]
    assert [(grant.resource, grant.target, grant.role) for grant in public] == [
        ("google_storage_bucket_iam_member.site_public_read", "${google_storage_bucket.site.name}",
         "roles/storage.objectViewer")]
    for path in TERRAFORM_DIR.glob("*.tf"):
        assert "allAuthenticatedUsers" not in path.read_text(), path.name


def test_grants_are_additive_members_never_authoritative_bindings_or_policies():
    kinds = {kind for kind in resource_kinds() if IAM_GRANT.search(kind)}
    assert kinds and all(kind.endswith("_iam_member") for kind in kinds), kinds


def test_function_accounts_only_read_the_weights_bucket():
    for grant in iam_grants():
        account = account_of(grant.member)
        if account not in RUNTIME_ACCOUNTS:
            continue
        assert grant.resource.startswith("google_storage_bucket_iam_member."), grant
        assert grant.role == "roles/storage.objectViewer", grant
        # classify may also read the buckets gcs_uri inputs are allowed from: the same variable
        # becomes ALLOWED_GCS_BUCKETS, so the function and its account always agree.
        assert grant.target == "${local.weights_bucket}" or (
            account == "classify" and grant.for_each == "${toset(var.allowed_gcs_buckets)}"), grant
    readers = {account_of(grant.member) for grant in iam_grants() if grant.target == "${local.weights_bucket}"}
    assert readers == {"classify", "list_models", "batch"}


def test_functions_run_as_their_own_accounts():
    service = resources("google_cloudfunctions2_function")["function"]["service_config"][0]
    assert service["service_account_email"] == (
        '${each.value.entry_point == "classify" ? google_service_account.classify.email : '
        "google_service_account.list_models.email}")
    assert "google_service_account.builder" in resources("google_cloudfunctions2_function")["function"][
        "build_config"][0]["service_account"]


def test_only_the_gateway_invokes_the_functions_and_it_can_do_nothing_else():
    invokers = [grant for grant in iam_grants() if grant.role in ("roles/run.invoker", "roles/cloudfunctions.invoker")]
    assert invokers and all(account_of(grant.member) == "gateway" for grant in invokers), invokers
    (invoke,) = invokers
    assert invoke.for_each == "${google_cloudfunctions2_function.function}", "every function deployment"
    assert [grant for grant in iam_grants() if account_of(grant.member) == "gateway"] == invokers


def test_batch_reads_weights_and_input_and_writes_only_its_output():
    batch = {(grant.target, grant.role) for grant in iam_grants() if account_of(grant.member) == "batch"}
    assert batch == {("${local.weights_bucket}", "roles/storage.objectViewer"),
                     ("${var.batch_input_bucket}", "roles/storage.objectViewer"),
                     ("${var.batch_output_bucket}", "roles/storage.objectUser")}


def test_only_the_builder_has_a_project_level_role_and_it_is_log_writing():
    project = [grant for grant in iam_grants() if grant.resource.startswith("google_project_iam_member.")]
    assert [(account_of(grant.member), grant.role) for grant in project] == [("builder", "roles/logging.logWriter")]


# --- The gateway spec ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> dict:
    """The spec as Terraform renders it, with two dedicated models."""
    return yaml.safe_load(render_spec(tmp_path_factory.mktemp("render"), DEDICATED))


def test_spec_is_valid_openapi_2(spec):
    assert spec["swagger"] == "2.0"
    validate(spec, cls=OpenAPIV2SpecValidator)


def test_spec_without_dedicated_models_is_valid_too(tmp_path):
    plain = yaml.safe_load(render_spec(tmp_path, {}))
    validate(plain, cls=OpenAPIV2SpecValidator)
    assert operations(plain) == {(route.template, route.method.lower()) for route in routes.ROUTES}


def test_spec_routes_are_exactly_the_route_table_plus_dedicated_models(spec):
    expected = {(route.template, route.method.lower()): route.operation for route in routes.ROUTES}
    expected |= {(f"/v1/models/{model}:classify", "post"): None for model in DEDICATED}
    assert operations(spec) == set(expected)
    for (path, method), operation in expected.items():
        if operation is not None:
            assert spec["paths"][path][method]["operationId"] == operation


def test_every_spec_path_answers_cors_preflight_without_a_key(spec):
    for path, item in spec["paths"].items():
        preflight = item.get("options")
        assert preflight is not None, f"{path} has no OPTIONS operation: API Gateway would refuse preflights"
        assert preflight["security"] == []
        assert "x-google-quota" not in preflight
        backends = {operation["x-google-backend"]["address"] for operation in item.values()}
        assert len(backends) == 1, f"{path}: preflight must reach the function that serves the path"


def test_spec_and_local_router_send_every_route_to_the_same_function(spec):
    """The router dispatches with imgclassify.routes.match; the gateway with the spec."""
    assert devstack.router.match is routes.match
    by_address = {address: function for function, address in BACKENDS.items()}
    by_address |= {address: "classify" for address in DEDICATED.values()}
    for path, item in spec["paths"].items():
        concrete = path.replace("{name}", "efficientnet_lite0")
        for method, operation in item.items():
            found = routes.match(concrete)
            assert found is not None, f"the local router has no route for {path}"
            route, params = found
            if method != "options":
                assert route.method.lower() == method, (path, method)
            assert by_address[operation["x-google-backend"]["address"]] == route.function, (path, method)
    for model, address in DEDICATED.items():
        operation = spec["paths"][f"/v1/models/{model}:classify"]["post"]
        assert operation["x-google-backend"]["address"] == address
        assert routes.match(f"/v1/models/{model}:classify")[1] == {"name": model}


def test_backends_append_the_path_authenticate_and_have_deadlines(spec):
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            backend = operation["x-google-backend"]
            assert backend["path_translation"] == "APPEND_PATH_TO_ADDRESS", (path, method)
            assert backend["jwt_audience"] == backend["address"], (path, method)
            assert isinstance(backend["deadline"], int | float) and backend["deadline"] > 0, (path, method)
    assert spec["paths"]["/v1/classify"]["post"]["x-google-backend"]["deadline"] == 120
    assert spec["paths"]["/v1/models"]["get"]["x-google-backend"]["deadline"] == 30


def test_api_key_is_required_and_quota_is_charged_on_every_non_preflight_operation(spec):
    assert spec["securityDefinitions"] == {"api_key": {"type": "apiKey", "name": "x-api-key", "in": "header"}}
    assert spec["security"] == [{"api_key": []}]
    management = spec["x-google-management"]
    metrics = {metric["name"] for metric in management["metrics"]}
    limits = {limit["metric"]: limit for limit in management["quota"]["limits"]}
    assert set(limits) == metrics == {"classify-requests", "list-models-requests"}
    assert limits["classify-requests"]["values"]["STANDARD"] == 77
    assert limits["list-models-requests"]["values"]["STANDARD"] == 555
    assert all(limit["unit"] == "1/min/{project}" for limit in limits.values())
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "options":
                continue
            assert "security" not in operation, (path, method)
            costs = operation["x-google-quota"]["metricCosts"]
            expected = "classify-requests" if method == "post" else "list-models-requests"
            assert costs == {expected: 1}, (path, method)


# --- cloudbuild.yaml -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cloudbuild() -> dict:
    return yaml.safe_load((REPO / "cloudbuild.yaml").read_text())


def test_cloudbuild_matches_cloud_builds_schema():
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.cloudbuild",
                             str(REPO / "cloudbuild.yaml")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cloudbuild_waits_only_for_steps_that_exist_before_it(cloudbuild):
    seen: set[str] = set()
    for step in cloudbuild["steps"]:
        for dependency in step.get("waitFor", []):
            assert dependency == "-" or dependency in seen, f"{step['id']} waits for unknown step {dependency}"
        assert step["id"] not in seen
        seen.add(step["id"])
    assert {"test", "bundles", "build-batch", "push-batch", "deploy", "publish-web"} <= seen


def test_cloudbuild_tests_bundles_and_builds_the_image_before_it_deploys(cloudbuild):
    steps = {step["id"]: step for step in cloudbuild["steps"]}

    def before(step_id: str) -> set[str]:
        direct = set(steps[step_id].get("waitFor", [])) - {"-"}
        return direct.union(*(before(each) for each in direct)) if direct else set()

    assert {"test", "bundles", "push-batch", "build-batch"} <= before("deploy")
    assert "deploy" in before("publish-web")
    assert "test" in before("push-batch"), "only a tested image may become :latest"
    build = " ".join(steps["build-batch"]["args"])
    assert "--cache-from=${_IMAGE_REPO}/batch-base:latest" in build and "--file=batch/Dockerfile" in build
    assert "docker pull ${_IMAGE_REPO}/batch-base:latest" in steps["pull-batch-cache"]["args"][-1]
    assert "make test" in steps["test"]["args"][-1]
    assert steps["bundles"]["args"][0] == "scripts/build_bundles.py"
    deploy = steps["deploy"]["args"][-1]
    assert "terraform apply" in deploy and "-lock-timeout" in deploy
    publish = steps["publish-web"]["args"][-1]
    assert "IMGCLASSIFY_CONFIG" in publish and "gcloud storage rsync /workspace/web" in publish


def test_cloudbuild_declares_every_substitution_it_uses_and_uses_every_one_it_declares(cloudbuild):
    text = (REPO / "cloudbuild.yaml").read_text()
    body = text.split("\nsteps:", 1)[1]
    declared = set(cloudbuild["substitutions"])
    used = set(re.findall(r"(?<!\$)\$\{?(_[A-Z0-9_]+)", text.split("\noptions:", 1)[0] + body))
    assert used - declared == set(), "undeclared substitutions"
    used_in_steps = set(re.findall(r"(?<!\$)\$\{?(_[A-Z0-9_]+)", body)) | {
        name for value in cloudbuild["substitutions"].values() for name in re.findall(r"\$\{(_[A-Z0-9_]+)\}", value)}
    assert declared - used_in_steps == set(), "declared but unused substitutions"
    assert {"_REGION", "_WEIGHTS_BUCKET", "_SITE_BUCKET", "_SOURCES_BUCKET", "_TF_STATE_BUCKET"} <= declared
    # Shell variables must be escaped as $$NAME, or Cloud Build would try to substitute them.
    assert not re.findall(r"(?<!\$)\$\{?[a-z][a-z_]*", body.replace("$$", "")), "unescaped shell variable"


def test_cloudbuild_runs_only_files_that_exist():
    assert (REPO / "scripts" / "build_bundles.py").is_file()
    assert (TERRAFORM_DIR / "versions.tf").is_file()
    assert (REPO / "web" / "index.html").is_file()
    dockerfile = REPO / "batch" / "Dockerfile"
    if dockerfile.exists():  # the batch job's own issue adds it; its base stage is the build cache
        assert re.search(r"^FROM\s+\S+\s+AS\s+base\s*$", dockerfile.read_text(), re.IGNORECASE | re.MULTILINE)


# --- make venv: CPU torch for a newcomer, the machine's own torch where it has one -----------------


# A PATH with make and a Python that has pip (this interpreter's), and no nvidia-smi unless added.
BASE_PATH = f"{Path(sys.executable).parent}:/usr/bin:/bin"
WITHOUT_PIP_SETTINGS = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}


def torch_pin(env: dict[str, str]) -> str:
    result = subprocess.run(["make", "--no-print-directory", "--eval", "show-torch-pin: ; @echo '$(TORCH_PIN)'",
                             "show-torch-pin"], cwd=REPO, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def test_make_venv_installs_cpu_only_torch_on_a_machine_without_a_gpu_or_a_torch_of_its_own(tmp_path):
    no_pip_config = {**WITHOUT_PIP_SETTINGS, "PIP_CONFIG_FILE": os.devnull, "PATH": BASE_PATH}
    assert torch_pin(no_pip_config) == (
        "torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu")


def test_make_venv_leaves_torch_to_a_machine_with_a_gpu_or_a_pip_constraint_on_torch(tmp_path):
    gpu = tmp_path / "gpu-bin"
    gpu.mkdir()
    (gpu / "nvidia-smi").write_text("#!/bin/sh\n")
    (gpu / "nvidia-smi").chmod(0o755)
    with_gpu = {**WITHOUT_PIP_SETTINGS, "PIP_CONFIG_FILE": os.devnull, "PATH": f"{gpu}:{BASE_PATH}"}
    assert torch_pin(with_gpu) == "torch==2.14.1 torchvision==0.29.1"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch<=2.14.1\ntorchvision<=0.29.1\n")
    config = tmp_path / "pip.conf"
    config.write_text(f"[global]\nconstraint = {constraints}\n")
    offline_machine = {**WITHOUT_PIP_SETTINGS, "PIP_CONFIG_FILE": str(config), "PATH": BASE_PATH}
    assert torch_pin(offline_machine) == "torch==2.14.1 torchvision==0.29.1"
    constraints.write_text("numpy<3\n")
    assert torch_pin(offline_machine).endswith("--index-url https://download.pytorch.org/whl/cpu")


# --- helpers ---------------------------------------------------------------------------------


def load_hcl(name: str) -> dict:
    options = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
    with open(TERRAFORM_DIR / name) as handle:
        return hcl2.load(handle, serialization_options=options)


def all_resources() -> Iterator[tuple[str, str, dict]]:
    for path in sorted(TERRAFORM_DIR.glob("*.tf")):
        for block in load_hcl(path.name).get("resource", []):
            for kind, named in block.items():
                for name, body in named.items():
                    yield kind, name, body


def resource_kinds() -> set[str]:
    return {kind for kind, _, _ in all_resources()}


def resources(kind: str) -> dict[str, dict]:
    return {name: body for each, name, body in all_resources() if each == kind}


class Grant(tuple):
    """One IAM member grant: (resource address, target, role, member, for_each)."""

    resource = property(lambda self: self[0])
    target = property(lambda self: self[1])
    role = property(lambda self: self[2])
    member = property(lambda self: self[3])
    for_each = property(lambda self: self[4])


def iam_grants() -> list[Grant]:
    """Every IAM grant, with ``member = each.value`` expanded over a literal for_each map."""
    grants = []
    for kind, name, body in all_resources():
        if not IAM_GRANT.search(kind):
            continue
        target = body.get("bucket") or body.get("repository") or body.get("project") or body.get("name")
        members = body.get("members") or [body["member"]]
        for_each = body.get("for_each")
        for member in members:
            expanded = list(for_each.values()) if member == "${each.value}" and isinstance(for_each, dict) else [member]
            grants += [Grant((f"{kind}.{name}", target, body["role"], each, for_each)) for each in expanded]
    return grants


def account_of(member: str) -> str | None:
    found = re.fullmatch(r"\$\{google_service_account\.(\w+)\.(member|email)\}", member)
    return found.group(1) if found else None


def operations(spec: dict) -> set[tuple[str, str]]:
    return {(path, method) for path, item in spec["paths"].items() for method in item if method != "options"}


def render_spec(workdir: Path, dedicated: dict[str, str]) -> str:
    """openapi.yaml.tftpl rendered by Terraform's templatefile, with gateway.tf's variables."""
    values = {
        "title": "imgclassify image classification",
        "list_models": {"address": BACKENDS["list_models"], "deadline_seconds": 30},
        "classify": {"address": BACKENDS["classify"], "deadline_seconds": 120},
        "dedicated": {model: {"address": address, "deadline_seconds": 300,
                              "operation_suffix": re.sub(r"[^A-Za-z0-9]", "_", model)}
                      for model, address in dedicated.items()},
        "classify_requests_per_minute": 77,
        "list_models_requests_per_minute": 555,
    }
    expression = f"jsonencode({{spec = templatefile({json.dumps(str(SPEC_TEMPLATE))}, " \
                 f"jsondecode({json.dumps(json.dumps(values))}))}})"
    result = subprocess.run([terraform(), "console"], input=expression, cwd=workdir, capture_output=True, text=True,
                            env=TF_ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(json.loads(result.stdout))["spec"]
