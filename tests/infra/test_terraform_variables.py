"""Infrastructure, offline: settings validated at plan time, applied from one copy."""

from __future__ import annotations

import pytest

from tests.support.infra import (
    TERRAFORM_DIR,
    evaluate_locals,
    load_hcl,
    plan_variables,
    resources,
)

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




@pytest.mark.parametrize(("setting", "expected"), [
    (None, ["https://storage.googleapis.com/*"]),   # default: the page's origin, what it sends as Referer
    ([], []),                                       # explicitly unrestricted
    (["https://photos.example.com/*"], ["https://photos.example.com/*"]),
])
def test_the_api_key_is_restricted_to_the_pages_origin_unless_set_otherwise(tmp_path, setting, expected):
    settings = {} if setting is None else {"api_key_allowed_referrers": setting}
    referrers = evaluate_locals(tmp_path, "local.api_key_referrers", settings, sources=("main.tf",),
                                stubs={"weights_bucket": '"weights"'})
    assert referrers == expected
    key = resources("google_apikeys_key")["web"]
    assert "local.api_key_referrers" in str(key["restrictions"])


def test_the_api_keys_name_carries_a_suffix_kept_in_state():
    # A deleted key's name is taken for 30 days: a fixed name could not be re-created sooner.
    key = resources("google_apikeys_key")["web"]
    assert key["name"] == "${var.name_prefix}-web-${terraform_data.api_key_suffix.output}"
    suffix = resources("terraform_data")["api_key_suffix"]
    assert "uuid()" in suffix["input"] and suffix["lifecycle"][0]["ignore_changes"] == ["input"]


def test_storage_audit_logs_are_off_by_default():
    variables = {name: body for block in load_hcl("variables.tf")["variable"] for name, body in block.items()}
    assert variables["storage_data_access_logs"]["default"] is False
