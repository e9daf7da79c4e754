"""The post-deploy smoke check (scripts/smoke.py), run as Cloud Build runs it, against the local stack.

Without LOCAL_API_KEY the local router checks no API keys, so the check that a request without
a key is refused is skipped when no key is given; with one (the keyed_stack fixture) every check
runs, as against API Gateway. The tests below also show that each check fails when what it
checks is wrong, so a passing run means something.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from devstack.processes import REPO

SMOKE = REPO / "scripts" / "smoke.py"
ALLOWED_ORIGIN = "http://allowed.example"  # the stack fixture's CORS_ALLOWED_ORIGINS


def smoke(*args: str) -> subprocess.CompletedProcess:
    """scripts/smoke.py in a fresh interpreter, with the standard library only (-I -S: no site-packages)."""
    return subprocess.run([sys.executable, "-I", "-S", str(SMOKE), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def lines_starting(output: str, word: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(word + " ")]


@pytest.mark.integration
def test_smoke_check_passes_against_the_local_stack(stack):
    result = smoke(stack.url, "--origin", ALLOWED_ORIGIN)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = {line.split(":")[0] for line in lines_starting(result.stdout, "PASS")}
    assert passed == {"PASS list models", "PASS classify a cat", "PASS embed a cat", "PASS CORS preflight",
                      "PASS unknown model"}
    assert lines_starting(result.stdout, "SKIP") == [
        "SKIP key required: no key given (the local router checks keys only with LOCAL_API_KEY; "
        "API Gateway always does)"]


@pytest.mark.integration
def test_smoke_check_passes_whole_against_the_local_stack_with_keys_on(keyed_stack):
    result = smoke(keyed_stack.url, "--origin", ALLOWED_ORIGIN, "--key", keyed_stack.api_key)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = {line.split(":")[0] for line in lines_starting(result.stdout, "PASS")}
    assert passed == {"PASS list models", "PASS classify a cat", "PASS embed a cat", "PASS key required",
                      "PASS CORS preflight", "PASS unknown model"}
    assert "PASS key required: without a key: 401" in result.stdout
    assert lines_starting(result.stdout, "SKIP") == []


@pytest.mark.integration
def test_smoke_check_fails_with_a_key_the_gateway_does_not_know(keyed_stack):
    result = smoke(keyed_stack.url, "--origin", ALLOWED_ORIGIN, "--key", "not-the-key", "--wait", "0")
    assert result.returncode == 1
    assert "FAIL list models: " in result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("model", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_the_bundled_photo_is_a_cat_to_every_bundled_model(stack, model):
    result = smoke(stack.url, "--origin", ALLOWED_ORIGIN, "--model", model)
    assert result.returncode == 0, result.stdout + result.stderr
    assert any(line.startswith(f"PASS classify a cat: {model}@") for line in result.stdout.splitlines())


@pytest.mark.integration
def test_smoke_check_fails_when_a_request_without_key_is_served(stack):
    # Given a key, the check expects the keyless request to be refused; the local router serves it.
    result = smoke(stack.url, "--origin", ALLOWED_ORIGIN, "--key", "some-key")
    assert result.returncode == 1
    assert lines_starting(result.stdout, "FAIL") == [
        "FAIL key required: GET /v1/models without a key: expected 401 or 403, got 200"]


@pytest.mark.integration
def test_smoke_check_fails_when_the_pages_origin_is_not_allowed(stack):
    result = smoke(stack.url, "--origin", "https://elsewhere.example")
    assert result.returncode == 1
    (failure,) = lines_starting(result.stdout, "FAIL")
    assert failure.startswith("FAIL CORS preflight: preflight from https://elsewhere.example")


@pytest.mark.integration
def test_smoke_check_fails_for_a_model_the_service_does_not_list(stack):
    result = smoke(stack.url, "--origin", ALLOWED_ORIGIN, "--model", "no-such-model")
    assert result.returncode == 1
    assert "FAIL list models: --model 'no-such-model' is not among the listed" in result.stdout


def test_smoke_check_fails_when_nothing_answers(tmp_path):
    result = smoke("http://127.0.0.1:9", "--origin", ALLOWED_ORIGIN)
    assert result.returncode == 1
    assert "FAIL list models: GET /v1/models:" in result.stdout


def load_smoke_module():
    sys.path.insert(0, str(SMOKE.parent))
    try:
        import smoke as smoke_module
    finally:
        sys.path.remove(str(SMOKE.parent))
    return smoke_module


@pytest.mark.parametrize(("cors_origins", "origin"), [
    (["https://storage.googleapis.com"], "https://storage.googleapis.com"),
    (["https://photos.example.com", "https://admin.example.com"], "https://photos.example.com"),
    (["*"], "https://storage.googleapis.com"),
])
def test_smoke_check_reads_url_key_and_origin_from_terraform_outputs(tmp_path, cors_origins, origin):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({
        "gateway_url": {"value": "http://127.0.0.1:9", "sensitive": False},
        "api_key": {"value": "k-123", "sensitive": True},
        "site_url": {"value": "https://storage.googleapis.com/site-bucket/index.html", "sensitive": False},
        "cors_allowed_origins": {"value": cors_origins, "sensitive": False},
    }))
    target = load_smoke_module().target_from_terraform_outputs(outputs, None)
    assert (target.url, target.key, target.origin, target.referrer) == ("http://127.0.0.1:9", "k-123", origin,
                                                                         origin + "/")


def test_every_output_the_smoke_check_reads_is_an_output_of_the_stack():
    import hcl2

    with open(REPO / "infra" / "terraform" / "outputs.tf") as handle:
        declared = {name.strip('"') for block in hcl2.load(handle)["output"] for name in block}
    assert {"gateway_url", "api_key", "site_url", "cors_allowed_origins"} <= declared


@pytest.mark.integration
def test_smoke_check_sends_the_pages_referrer_to_a_key_restricted_to_it(stack):
    # The deployed key is restricted to the page's origin (api_key_allowed_referrers' default);
    # the page sends its origin as Referer (strict-origin-when-cross-origin), and so does the check.
    keyed = stack.behind_gateway("referrer-key", api_key_referrers=("https://storage.googleapis.com/*",))
    try:
        result = smoke(keyed.url, "--origin", ALLOWED_ORIGIN, "--key", "referrer-key",
                       "--referrer", "https://storage.googleapis.com/")
        assert result.returncode == 0, result.stdout + result.stderr
        without = smoke(keyed.url, "--origin", ALLOWED_ORIGIN, "--key", "referrer-key")
        assert without.returncode == 1
        assert "FAIL list models: GET /v1/models: expected 200, got 403" in without.stdout
        assert "Referer blocked." in without.stdout
    finally:
        keyed.stop()
