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
import textwrap
from collections.abc import Iterator
from pathlib import Path

import hcl2
import pytest
import requests
import yaml
from hcl2 import SerializationOptions
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV2SpecValidator

import devstack.router
from devstack.processes import REPO
from imgclassify.serving import routes

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


def test_versions_pin_every_provider_exactly_and_the_lock_file_agrees():
    versions = load_hcl("versions.tf")["terraform"][0]
    assert versions["required_version"].startswith(">= 1.9")  # validations that refer to other values
    providers = versions["required_providers"][0]
    assert {name: spec["source"] for name, spec in providers.items()} == {
        "google": "hashicorp/google", "google-beta": "hashicorp/google-beta", "time": "hashicorp/time"}
    for name, spec in providers.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", spec["version"]), f"{name} must be pinned exactly: {spec['version']}"
    assert providers["google"]["version"] == providers["google-beta"]["version"], "one release of both"
    # The lock file cannot be produced here (no provider downloads): docs/deploy.md says how.
    # Once committed, it must lock the very versions pinned above.
    lock = TERRAFORM_DIR / ".terraform.lock.hcl"
    if lock.exists():
        locked = {re.sub(r"^registry\.terraform\.io/", "", address): body["version"]
                  for block in load_hcl(lock.name)["provider"] for address, body in block.items()}
        assert locked == {spec["source"]: spec["version"] for spec in providers.values()}
    docs = (REPO / "docs" / "deploy.md").read_text()
    assert "terraform providers lock -platform=linux_amd64" in docs
    assert "infra/terraform/.terraform.lock.hcl" not in (REPO / ".gitignore").read_text()


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


# --- Settings: validated at plan time, applied from one copy ------------------------------------

CLOUD_RUN_SIZES = ("cpu 1 with memory_mb 128-4096, cpu 2 with memory_mb 128-8192, cpu 4 with memory_mb 2048-16384, "
                   "cpu 6 with memory_mb 4096-24576, cpu 8 with memory_mb 4096-32768")


@pytest.mark.parametrize(("settings", "variable"), [
    ({"classify": {"cpu": 3}}, "classify"),
    ({"classify": {"cpu": 5, "memory_mb": 8192}}, "classify"),
    ({"classify": {"cpu": 7, "memory_mb": 8192}}, "classify"),
    ({"classify": {"cpu": 4, "memory_mb": 1024}}, "classify"),
    ({"classify": {"cpu": 1, "memory_mb": 8192}}, "classify"),
    ({"list_models": {"cpu": 8, "memory_mb": 2048}}, "list_models"),
    ({"dedicated_classify": {"big": {"cpu": 6, "memory_mb": 2048}}}, "dedicated_classify"),
    ({"dedicated_classify": {"big": {"cpu": 2.5}}}, "dedicated_classify"),
    ({"batch_cpu": 1}, "batch_memory_mb"),  # with the default 8192 MiB
    ({"batch_cpu": 3, "batch_memory_mb": 4096}, "batch_cpu"),
])
def test_sizes_cloud_run_rejects_fail_the_plan_with_the_allowed_combinations(settings, variable, tmp_path):
    result = plan_variables(tmp_path, settings)
    assert result.returncode != 0
    message = " ".join(result.stderr.split())
    assert f"{variable}: Cloud Run allows" in message or f"{variable} must be" in message, message
    assert CLOUD_RUN_SIZES in message, message


@pytest.mark.parametrize("settings", [
    {"classify": {"cpu": 4, "memory_mb": 2048}, "list_models": {"cpu": 1, "memory_mb": 256}},
    {"classify": {"cpu": 8, "memory_mb": 32768}, "dedicated_classify": {"big": {"cpu": 6, "memory_mb": 24576}}},
    {"batch_cpu": 1, "batch_memory_mb": 4096},
    {"batch_cpu": 6, "batch_memory_mb": 4096},
    {},
])
def test_sizes_cloud_run_accepts_plan(settings, tmp_path):
    result = plan_variables(tmp_path, settings)
    assert result.returncode == 0, result.stderr


def test_the_example_settings_pass_every_validation_and_name_only_what_they_mark_to_change(tmp_path):
    example = TERRAFORM_DIR / "terraform.tfvars.example"
    result = plan_variables(tmp_path, {}, var_file=example)
    assert result.returncode == 0, result.stderr
    settings = load_hcl(example.name)
    # Buckets named there are granted to (or read by) the stack: none may be a sample name.
    assert settings["allowed_gcs_buckets"] == []
    assert settings["batch_input_bucket"] is None and settings["batch_output_bucket"] is None
    assert "batch_image" not in settings, "the build sets the batch image (build.tfvars)"
    for line in example.read_text().splitlines():
        assignment = line.split("#", 1)[0]
        if "my-project" in assignment:
            assert "# CHANGE:" in line, f"a placeholder without a note saying to change it: {line}"


def test_every_function_runs_as_many_server_threads_as_it_takes_concurrent_requests(tmp_path):
    """functions-framework starts 4 x CPU threads unless THREADS is set; it must be the concurrency."""
    environment = evaluate_locals(tmp_path, "local.function_environment", {
        "list_models": {"concurrency": 40},
        "classify": {"concurrency": 3, "environment": {"THREADS": "64", "LOG_LEVEL": "DEBUG"}},
        "dedicated_classify": {"efficientnet_lite2": {"concurrency": 2}},
    }, sources=("main.tf", "functions.tf"), stubs={"weights_bucket": '"weights"'})
    assert {key: env["THREADS"] for key, env in environment.items()} == {
        "list_models": "40", "classify": "3", "classify_efficientnet_lite2": "2"}
    assert environment["classify"]["LOG_LEVEL"] == "DEBUG", "other entries of environment still apply"
    service = resources("google_cloudfunctions2_function")["function"]["service_config"][0]
    assert service["max_instance_request_concurrency"] == "${each.value.concurrency}"


def test_the_api_key_output_says_how_the_gateway_takes_it(spec):
    outputs = {name: body for block in load_hcl("outputs.tf")["output"] for name, body in block.items()}
    description = outputs["api_key"]["description"]
    (scheme,) = spec["securityDefinitions"].values()
    assert scheme["in"] == "header"
    assert scheme["name"].lower() in description.lower() and "header" in description
    assert "?key" not in description


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


def test_batch_bucket_grants_exist_only_with_the_job_and_a_named_bucket():
    grants = resources("google_storage_bucket_iam_member")
    for name, variable in (("batch_reads_input", "batch_input_bucket"), ("batch_writes_output", "batch_output_bucket")):
        assert grants[name]["count"] == f"${{var.batch_image != null && var.{variable} != null ? 1 : 0}}"
    assert resources("google_cloud_run_v2_job")["batch"]["count"] == "${var.batch_image == null ? 0 : 1}"


def test_only_the_builder_has_project_level_roles_logs_and_the_gcf_sources_bucket_alone():
    project = {(account_of(grant.member), grant.role): grant for grant in iam_grants()
               if grant.resource.startswith("google_project_iam_member.")}
    assert set(project) == {("builder", "roles/logging.logWriter"), ("builder", "roles/storage.objectViewer")}
    assert "condition" not in resources("google_project_iam_member")["builder_writes_logs"]


def test_builds_can_read_the_copy_of_their_source_cloud_functions_makes_and_no_other_bucket():
    """hashicorp/terraform-provider-google#20571: gen2 builds fetch from gcf-v2-sources-NUMBER-REGION."""
    (data,) = load_hcl("iam.tf")["data"]
    assert data["google_project"]["main"]["project_id"] == "${var.project_id}"
    (names,) = load_hcl("iam.tf")["locals"]
    assert names["gcf_sources_bucket"] == "gcf-v2-sources-${data.google_project.main.number}-${var.region}"
    grant = resources("google_project_iam_member")["builder_reads_gcf_sources"]
    assert grant["role"] == "roles/storage.objectViewer"
    assert grant["member"] == "${google_service_account.builder.member}"
    (condition,) = grant["condition"]
    bucket = "gcf-v2-sources-42-europe-west1"
    allows = iam_condition(condition["expression"].replace("${local.gcf_sources_bucket}", bucket))
    assert allows("projects/_/buckets/gcf-v2-sources-42-europe-west1")  # objects.list
    assert allows("projects/_/buckets/gcf-v2-sources-42-europe-west1/objects/classify/function-source.zip")
    assert not allows("projects/_/buckets/gcf-v2-sources-42-europe-west1-other/objects/x")
    assert not allows("projects/_/buckets/gcf-v2-sources-42-us-central1/objects/x")
    assert not allows("projects/_/buckets/my-weights/objects/models/catalog.json")


def test_functions_wait_for_the_build_grants_to_settle():
    """The provider's build-account example waits 60 s between the grants and the function."""
    function = resources("google_cloudfunctions2_function")["function"]
    assert "${time_sleep.builder_grants_settle}" in function["depends_on"]
    settle = resources("time_sleep")["builder_grants_settle"]
    assert int(settle["create_duration"].rstrip("s")) >= 60
    builder_grants = {f"${{{grant.resource}.id}}" for grant in iam_grants() if account_of(grant.member) == "builder"}
    assert set(settle["triggers"].values()) == builder_grants, "the wait must come after every grant the build uses"


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
    """The router dispatches with imgclassify.serving.routes.match; the gateway with the spec."""
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
    assert {"test", "build-batch", "push-batch", "deploy", "publish-web", "smoke"} <= seen


def test_cloudbuild_tests_and_builds_the_image_before_it_deploys_and_smoke_checks_after(cloudbuild):
    steps = {step["id"]: step for step in cloudbuild["steps"]}

    def before(step_id: str) -> set[str]:
        direct = set(steps[step_id].get("waitFor", [])) - {"-"}
        return direct.union(*(before(each) for each in direct)) if direct else set()

    assert {"test", "push-batch", "build-batch", "image-repository"} <= before("deploy")
    assert "deploy" in before("publish-web")
    assert "publish-web" in before("smoke"), "the smoke check sees the page's config too"
    assert "test" in before("push-batch"), "only a tested image may become :latest"
    assert "image-repository" in before("pull-batch-cache")
    build = steps["build-batch"]["args"][-1]
    assert '--cache-from="$$repo/batch-base:latest"' in build and "--file=batch/Dockerfile" in build
    assert 'docker pull "$$repo/batch-base:latest"' in steps["pull-batch-cache"]["args"][-1]
    assert "make test" in steps["test"]["args"][-1]
    publish = steps["publish-web"]["args"][-1]
    assert "IMGCLASSIFY_CONFIG" in publish and "gcloud storage rsync /workspace/web" in publish
    smoke = steps["smoke"]
    assert smoke["args"][:3] == ["scripts/smoke.py", "--terraform-outputs", "/workspace/terraform-outputs.json"]
    assert smoke["entrypoint"] == "python3" and smoke["name"].startswith("python:3.11")


def test_cloudbuild_applies_the_operators_settings_and_nothing_of_its_own_but_the_image(cloudbuild):
    """The build's apply must not undo the operator's: it goes through deploy.sh, with no -var of its own."""
    steps = {step["id"]: step for step in cloudbuild["steps"]}
    deploy = steps["deploy"]["args"][-1]
    assert "infra/terraform/deploy.sh ${_TF_STATE_BUCKET} ${_TF_STATE_PREFIX} -auto-approve" in deploy
    assert "-var" not in deploy.replace("-var-file", "") and "-var-file" not in deploy
    assert "gs://${_TF_STATE_BUCKET}/${_TF_STATE_PREFIX}/build.tfvars" in deploy
    text = (REPO / "cloudbuild.yaml").read_text()
    assert "terraform apply" not in text, "only deploy.sh applies"
    # Where images go comes from the state the operator's first apply wrote, not from substitutions.
    assert "terraform output -raw image_repository" in steps["image-repository"]["args"][-1]
    assert set(cloudbuild["substitutions"]) == {"_TF_STATE_BUCKET", "_TF_STATE_PREFIX", "_TERRAFORM_VERSION",
                                                "_BATCH_BASE_TARGET"}


def test_cloudbuild_declares_every_substitution_it_uses_and_uses_every_one_it_declares(cloudbuild):
    text = (REPO / "cloudbuild.yaml").read_text()
    body = text.split("\nsteps:", 1)[1]
    declared = set(cloudbuild["substitutions"])
    used = set(re.findall(r"(?<!\$)\$\{?(_[A-Z0-9_]+)", text.split("\noptions:", 1)[0] + body))
    assert used - declared == set(), "undeclared substitutions"
    used_in_steps = set(re.findall(r"(?<!\$)\$\{?(_[A-Z0-9_]+)", body)) | {
        name for value in cloudbuild["substitutions"].values() for name in re.findall(r"\$\{(_[A-Z0-9_]+)\}", value)}
    assert declared - used_in_steps == set(), "declared but unused substitutions"
    # Shell variables must be escaped as $$NAME, or Cloud Build would try to substitute them.
    assert not re.findall(r"(?<!\$)\$\{?[a-z][a-z_]*", body.replace("$$", "")), "unescaped shell variable"


def test_cloudbuild_runs_only_files_that_exist():
    assert (REPO / "scripts" / "build_bundles.py").is_file()
    assert (REPO / "scripts" / "smoke.py").is_file()
    assert os.access(TERRAFORM_DIR / "deploy.sh", os.X_OK)
    assert (TERRAFORM_DIR / "versions.tf").is_file()
    assert (REPO / "web" / "index.html").is_file()
    dockerfile = REPO / "batch" / "Dockerfile"
    if dockerfile.exists():  # the batch job's own issue adds it; its base stage is the build cache
        assert re.search(r"^FROM\s+\S+\s+AS\s+base\s*$", dockerfile.read_text(), re.IGNORECASE | re.MULTILINE)


# --- deploy.sh: one copy of the settings, for the build and for people --------------------------


@pytest.fixture
def cloud_tools(tmp_path) -> dict:
    """Stand-ins for gcloud and terraform, which cannot reach Google Cloud from here.

    gcloud serves ``gs://BUCKET/PATH`` from a local directory; terraform records its arguments
    (with the content of every -var-file) and succeeds.
    """
    bin_dir, gcs, record = tmp_path / "bin", tmp_path / "gcs", tmp_path / "terraform-calls.jsonl"
    bin_dir.mkdir()
    gcs.mkdir()
    (bin_dir / "gcloud").write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import shutil, sys
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
            import os
            sys.exit(0 if os.path.exists(local(args[2])) else 1)
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
    init, apply = cloud_tools["calls"]()
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


# --- Monitoring: metrics from the lines the functions really log ---------------------------------

BUILT_IN_METRICS = {"run.googleapis.com/request_count", "run.googleapis.com/container/instance_count",
                    "run.googleapis.com/container/memory/utilizations"}


@pytest.fixture(scope="module")
def log_metrics(tmp_path_factory) -> dict:
    """log_metrics.tf's metrics, as Terraform evaluates them (name_prefix: imgclassify)."""
    return evaluate_locals(tmp_path_factory.mktemp("metrics"), "local.log_metrics", {}, sources=("log_metrics.tf",))


@pytest.fixture(scope="module")
def logged_entries(stack) -> list[dict]:
    """The functions' stdout lines after real requests, as Cloud Logging stores them."""
    cat = (REPO / "scripts" / "data" / "chelsea.jpg").read_bytes()
    jpeg = {"Content-Type": "image/jpeg"}
    assert requests.post(stack.url + "/v1/models/efficientnet_lite1:classify", data=cat, headers=jpeg,
                         timeout=120).status_code == 200
    assert requests.get(stack.url + "/v1/models/no-such-model", timeout=60).status_code == 404
    assert requests.post(stack.url + "/v1/classify", data=cat[:600], headers=jpeg, timeout=60).status_code == 422
    assert requests.options(stack.url + "/v1/classify", timeout=60, headers={
        "Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"}).status_code == 204
    entries = []
    for function in ("classify", "list_models"):
        for line in (stack.log_dir / f"{function}.log").read_text().splitlines():
            if line.startswith("{"):
                entries.append(cloud_logging_entry(json.loads(line), f"imgclassify-{function.replace('_', '-')}"))
    return entries


def test_request_metrics_count_every_request_line_and_nothing_else(log_metrics, logged_entries):
    import imgclassify.serving.http

    logger = imgclassify.serving.http.log.name
    request_lines = [entry for entry in logged_entries if entry["jsonPayload"].get("logger") == logger]
    assert len(request_lines) >= 4
    assert [entry for entry in logged_entries if log_filter_matches(log_metrics["requests"]["filter"], entry)] == (
        request_lines)
    timed = [entry for entry in request_lines if entry["httpRequest"]["requestMethod"] != "OPTIONS"]
    latency_filter = log_metrics["request_latency"]["filter"]
    assert [entry for entry in logged_entries if log_filter_matches(latency_filter, entry)] == timed
    for entry in timed:
        assert float(extract(log_metrics["request_latency"]["value"], entry)) == entry["jsonPayload"]["latency_ms"]


def test_request_metric_labels_come_from_fields_the_request_line_has(log_metrics, logged_entries):
    labels = {name: label["extractor"] for name, label in log_metrics["requests"]["labels"].items()}
    seen = []
    for entry in logged_entries:
        if not log_filter_matches(log_metrics["requests"]["filter"], entry):
            continue
        got = {name: extract(extractor, entry) for name, extractor in labels.items()}
        status = entry["httpRequest"]["status"]
        assert got["status"] == str(status) and got["status_class"] == str(status)[0]
        assert got["error_code"] == entry["jsonPayload"].get("error")
        assert got["model"] == entry["jsonPayload"].get("model")
        seen.append(got)
    assert {"status": "200", "status_class": "2", "error_code": None, "model": "efficientnet_lite1"} in seen
    assert {"status": "404", "status_class": "4", "error_code": "UNKNOWN_MODEL", "model": None} in seen
    assert {"status": "422", "status_class": "4", "error_code": "UNDECODABLE_IMAGE", "model": None} in seen
    latency_labels = log_metrics["request_latency"]["labels"]
    assert latency_labels["status_class"]["extractor"] == log_metrics["requests"]["labels"]["status_class"]["extractor"]


def test_cold_start_metric_counts_each_instance_start_with_its_time(log_metrics, logged_entries):
    import imgclassify.serving.bootstrap

    starts = [entry for entry in logged_entries if log_filter_matches(log_metrics["cold_starts"]["filter"], entry)]
    ready = [entry for entry in logged_entries if "startup_ms" in entry["jsonPayload"]]
    assert {entry["resource"]["labels"]["service_name"] for entry in starts} == {
        "imgclassify-classify", "imgclassify-list-models"}, ready
    for entry in starts:
        assert entry["jsonPayload"]["logger"] == imgclassify.serving.bootstrap.log.name
        assert float(extract(log_metrics["cold_starts"]["value"], entry)) == entry["jsonPayload"]["startup_ms"][
            "process_age"] > 0


def test_model_load_metric_counts_each_load_with_its_model_and_time(log_metrics, logged_entries):
    import imgclassify.runtime.cache

    loads = [entry for entry in logged_entries if log_filter_matches(log_metrics["model_loads"]["filter"], entry)]
    cache_logger = imgclassify.runtime.cache.log.name
    cache_lines = [entry for entry in logged_entries if entry["jsonPayload"].get("logger") == cache_logger
                   and entry["jsonPayload"]["message"].startswith("loaded ")]
    assert loads == cache_lines and loads
    models = {extract(log_metrics["model_loads"]["labels"]["model"]["extractor"], entry) for entry in loads}
    assert models <= {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} and models
    for entry in loads:
        milliseconds = float(extract(log_metrics["model_loads"]["value"], entry))
        assert f" in {milliseconds:.0f} ms" in entry["jsonPayload"]["message"] and milliseconds > 0


def test_log_metrics_are_declared_as_the_monitoring_resource_makes_them(log_metrics):
    assert set(log_metrics) == {"requests", "request_latency", "cold_starts", "model_loads"}
    for key, metric in log_metrics.items():
        assert metric["name"].startswith("imgclassify/"), key
        assert (metric["value"] is None) == (metric["value_type"] == "INT64") == (metric["buckets"] is None), key
        assert len(metric["labels"]) <= 10, "Cloud Logging allows 10 labels per metric"
    resource = resources("google_logging_metric")["function"]
    assert resource["for_each"] == "${local.log_metrics}"


def test_dashboard_and_alerts_use_only_metrics_and_labels_that_exist(log_metrics, tmp_path):
    types = {f"logging.googleapis.com/user/{metric['name']}": set(metric["labels"]) for metric in log_metrics.values()}
    dashboard = json.loads(render_template(tmp_path, TERRAFORM_DIR / "dashboard.json.tftpl", {
        "title": "imgclassify image classification",
        "metrics": {key: f"logging.googleapis.com/user/{metric['name']}" for key, metric in log_metrics.items()},
        "run_service_filter": 'resource.type="cloud_run_revision"',
    }))
    assert dashboard["mosaicLayout"]["tiles"]
    queries = list(find_key(dashboard, "timeSeriesFilter")) + [
        side for ratio in find_key(dashboard, "timeSeriesFilterRatio") for side in ratio.values()]
    charted = set()
    for query in queries:
        (metric_type,) = re.findall(r'metric\.type="([^"]+)"', query["filter"])
        charted.add(metric_type)
        check_metric_labels(metric_type, query["filter"], query.get("aggregation", {}).get("groupByFields", []), types)
    assert set(types) <= charted, "every log-based metric is on the dashboard"

    policies = resources("google_monitoring_alert_policy")
    assert set(policies) == {"errors", "latency"}
    conditions = {name: alert_conditions(policy) for name, policy in policies.items()}
    for name, policy in policies.items():
        assert policy["notification_channels"] == "${var.alert_notification_channels}"
        assert policy["depends_on"] == ["${time_sleep.log_metrics_settle}"], "new metrics need time to appear"
        for threshold in conditions[name].values():
            for filter_key, aggregation_key in (("filter", "aggregations"),
                                                ("denominator_filter", "denominator_aggregations")):
                if filter_key not in threshold:
                    continue
                text = re.sub(r"\$\{local\.log_metric_types\.(\w+)\}",
                              lambda found: f"logging.googleapis.com/user/{log_metrics[found.group(1)]['name']}",
                              threshold[filter_key])
                (metric_type,) = re.findall(r'metric\.type="([^"]+)"', text)
                check_metric_labels(metric_type, text, threshold[aggregation_key][0]["group_by_fields"], types)
    (logged, run) = conditions["errors"].values()
    assert logged["filter"] == logged["denominator_filter"] + ' AND metric.label.status_class="5"'
    assert run["filter"] == run["denominator_filter"] + ' AND metric.label.response_code_class="5xx"'
    for ratio in (logged, run):
        assert ratio["threshold_value"] == "${var.alert_5xx_ratio}"
        assert ratio["aggregations"] == ratio["denominator_aggregations"], "a ratio needs the same grouping"
    (latency,) = conditions["latency"].values()
    assert "request_latency" in latency["filter"] and latency["threshold_value"] == "${var.alert_p99_latency_ms}"
    assert latency["aggregations"][0]["cross_series_reducer"] == "REDUCE_PERCENTILE_99"


def alert_conditions(policy: dict) -> dict[str, dict]:
    """An alert policy's condition_threshold blocks by display name, dynamic blocks expanded."""
    found = {condition["display_name"]: condition["condition_threshold"][0]
             for condition in policy.get("conditions", [])}
    for dynamic in policy.get("dynamic", []):
        block = dynamic["conditions"]
        for key, value in block["for_each"].items():
            def expand(item, key=key, value=value):
                if isinstance(item, str):
                    item = item.replace("${conditions.key}", key)
                    return re.sub(r"\$\{conditions\.value\.(\w+)\}", lambda m: value[m.group(1)], item)
                if isinstance(item, list):
                    return [expand(each) for each in item]
                if isinstance(item, dict):
                    return {name: expand(each) for name, each in item.items()}
                return item

            (content,) = expand(block["content"])
            found[content["display_name"]] = content["condition_threshold"][0]
    return found


def check_metric_labels(metric_type: str, text: str, group_by: list[str], types: dict[str, set[str]]) -> None:
    """A metric this stack defines (or Cloud Run's own), and only labels that metric has."""
    if metric_type in BUILT_IN_METRICS:
        return
    assert metric_type in types, f"{metric_type} is not one of the log-based metrics"
    used = set(re.findall(r"metric\.labels?\.(\w+)", text + " " + " ".join(group_by)))
    assert used <= types[metric_type], f"{metric_type} has no label {used - types[metric_type]}"


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
    return render_template(workdir, SPEC_TEMPLATE, values)


def iam_condition(expression: str):
    """The resource names an IAM condition made of ``resource.name == "X"`` and ``startsWith("X")`` terms allows."""
    terms = [term.strip() for term in expression.split("||")]
    tests = []
    for term in terms:
        found = re.fullmatch(r'resource\.name == "([^"]+)"', term) or re.fullmatch(
            r'resource\.name\.startsWith\("([^"]+)"\)', term)
        assert found, f"condition term this test cannot read: {term}"
        value = found.group(1)
        tests.append((lambda name, value=value: name == value) if "==" in term else
                     (lambda name, value=value: name.startswith(value)))
    return lambda name: any(test(name) for test in tests)


REQUIRED_VARIABLES = {"project_id": "my-project", "weights_bucket": "my-project-weights"}


def terraform_workdir(workdir: Path, settings: dict, sources: tuple[str, ...] = (), stubs: dict | None = None) -> Path:
    """A provider-free Terraform module: variables.tf, the locals blocks of ``sources``, ``settings``."""
    shutil.copyfile(TERRAFORM_DIR / "variables.tf", workdir / "variables.tf")
    blocks = [block for name in sources for block in locals_blocks((TERRAFORM_DIR / name).read_text())]
    if stubs:
        blocks.append("locals {\n" + "".join(f"  {name} = {value}\n" for name, value in stubs.items()) + "}\n")
    (workdir / "module.tf").write_text("\n".join(blocks))
    (workdir / "settings.tfvars.json").write_text(json.dumps({**REQUIRED_VARIABLES, **settings}))
    return workdir


def plan_variables(workdir: Path, settings: dict, var_file: Path | None = None) -> subprocess.CompletedProcess:
    """``terraform plan`` of the variables alone: runs every validation, offline."""
    terraform_workdir(workdir, settings)
    init = subprocess.run([terraform(), "init", "-input=false", "-no-color"], cwd=workdir, capture_output=True,
                          text=True, env=TF_ENV, timeout=120)
    assert init.returncode == 0, init.stderr
    files = ["-var-file=settings.tfvars.json"] if var_file is None else [f"-var-file={var_file}"]
    return subprocess.run([terraform(), "plan", "-input=false", "-no-color", "-lock=false", *files], cwd=workdir,
                          capture_output=True, text=True, env=TF_ENV, timeout=120)


def evaluate_locals(workdir: Path, expression: str, settings: dict, sources: tuple[str, ...],
                    stubs: dict | None = None):
    """``expression`` evaluated by ``terraform console`` over the named files' locals."""
    terraform_workdir(workdir, settings, sources, stubs)
    result = subprocess.run([terraform(), "console", "-var-file=settings.tfvars.json"], cwd=workdir,
                            input=f"jsonencode({expression})", capture_output=True, text=True, env=TF_ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(json.loads(result.stdout))


def locals_blocks(text: str) -> list[str]:
    """The top-level ``locals { ... }`` blocks of a Terraform file, as text."""
    blocks = []
    for start in (found.start() for found in re.finditer(r"^locals \{", text, re.MULTILINE)):
        depth = 0
        for index in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[index], 0)
            if depth == 0 and text[index] == "}":
                blocks.append(text[start:index + 1])
                break
    return blocks


def render_template(workdir: Path, template: Path, values: dict) -> str:
    """``template`` rendered by Terraform's own templatefile."""
    expression = f"jsonencode({{out = templatefile({json.dumps(str(template))}, " \
                 f"jsondecode({json.dumps(json.dumps(values))}))}})"
    result = subprocess.run([terraform(), "console"], input=expression, cwd=workdir, capture_output=True, text=True,
                            env=TF_ENV, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(json.loads(result.stdout))["out"]


def find_key(value, key: str) -> Iterator:
    """Every value stored under ``key`` anywhere in a JSON document."""
    if isinstance(value, dict):
        for name, item in value.items():
            if name == key:
                yield item
            yield from find_key(item, key)
    elif isinstance(value, list):
        for item in value:
            yield from find_key(item, key)


def cloud_logging_entry(line: dict, service_name: str) -> dict:
    """A JSON stdout line of a Cloud Run service as Cloud Logging stores it: the special keys
    (severity, httpRequest, trace) become the entry's own fields, the rest its jsonPayload."""
    payload = dict(line)
    entry = {"resource": {"type": "cloud_run_revision", "labels": {"service_name": service_name}},
             "severity": payload.pop("severity", "DEFAULT")}
    if "httpRequest" in payload:
        entry["httpRequest"] = payload.pop("httpRequest")
    if "logging.googleapis.com/trace" in payload:
        entry["trace"] = payload.pop("logging.googleapis.com/trace")
    payload.pop("logging.googleapis.com/spanId", None)
    entry["jsonPayload"] = payload
    return entry


def log_field(entry: dict, path: str):
    value = entry
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


LOG_FILTER_TERM = re.compile(r'([A-Za-z_][\w.]*)(=~|!=|>=|<=|=|>|<)("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?)')


def log_filter_matches(text: str, entry: dict) -> bool:
    """Cloud Logging's query language, for the terms this stack's filters use: A AND B AND ..."""
    for term in text.split(" AND "):
        found = LOG_FILTER_TERM.fullmatch(term.strip())
        assert found, f"a filter term this test cannot read: {term!r}"
        path, operator, literal = found.groups()
        expected, value = json.loads(literal), log_field(entry, path)
        if value is None:
            return False
        if operator == "=~":
            ok = re.search(expected, str(value)) is not None
        elif operator == "=":
            ok = str(value) == str(expected)
        elif operator == "!=":
            ok = str(value) != str(expected)
        else:
            ok = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}[operator](
                float(value), float(expected))
        if not ok:
            return False
    return True


def extract(extractor: str, entry: dict) -> str | None:
    """A log-based metric's EXTRACT(field) or REGEXP_EXTRACT(field, "regex") on one entry."""
    found = re.fullmatch(r'EXTRACT\(([\w.]+)\)|REGEXP_EXTRACT\(([\w.]+), ("(?:[^"\\]|\\.)*")\)', extractor)
    assert found, f"an extractor this test cannot read: {extractor!r}"
    if found.group(1):
        value = log_field(entry, found.group(1))
        return None if value is None else str(value)
    value, pattern = log_field(entry, found.group(2)), re.compile(json.loads(found.group(3)))
    assert pattern.groups == 1, "Cloud Logging requires exactly one capture group"
    match = pattern.search(str(value)) if value is not None else None
    return match.group(1) if match else None
