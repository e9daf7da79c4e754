"""Infrastructure, offline: Terraform."""

from __future__ import annotations

import json
import os
import re
import subprocess

from devstack.processes import REPO
from tests.support.infra import (
    CHECKOV,
    TERRAFORM_DIR,
    TF_ENV,
    load_hcl,
    resources,
    terraform,
)


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
    # A new revision (any deploy of the function) runs the boost again: it follows update_time.
    assert boost["triggers_replace"]["revision"] == \
        "${google_cloudfunctions2_function.function[each.key].update_time}"
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


