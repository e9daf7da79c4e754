"""With LOCAL_API_KEY the local router checks keys and quotas as API Gateway does, over the real stack.

Refusals are ESPv2's (status, JSON body, no CORS headers: the function is never reached); what
passes is the functions' own answer, CORS headers included.
"""

from __future__ import annotations

import shlex
import subprocess

import pytest
import requests

from devstack.gateway import BAD_KEY_MESSAGE, NO_KEY_MESSAGE
from devstack.processes import REPO
from devstack.run import banner
from tests.conftest import LOCAL_API_KEY
from tests.support.photos import cat_jpeg

pytestmark = pytest.mark.integration

ORIGIN = "http://allowed.example"  # the stack fixture's CORS_ALLOWED_ORIGINS
KEYED = {"x-api-key": LOCAL_API_KEY}


def cors_headers(response: requests.Response) -> set[str]:
    return {name.lower() for name in response.headers if name.lower().startswith("access-control-")}


def classify(url: str, **headers: str) -> requests.Response:
    return requests.post(f"{url}/v1/models/efficientnet_lite0:classify", data=cat_jpeg(),
                         headers={"Content-Type": "image/jpeg", "Origin": ORIGIN, **headers}, timeout=120)


def test_a_request_without_a_key_gets_espv2s_401_without_cors_headers(keyed_stack):
    response = requests.get(f"{keyed_stack.url}/v1/models", headers={"Origin": ORIGIN}, timeout=30)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"code": 401, "message": NO_KEY_MESSAGE}
    assert cors_headers(response) == set()


def test_a_wrong_key_gets_espv2s_400_without_cors_headers(keyed_stack):
    response = classify(keyed_stack.url, **{"x-api-key": LOCAL_API_KEY + "-old"})
    assert (response.status_code, response.json()) == (400, {"code": 400, "message": BAD_KEY_MESSAGE})
    assert cors_headers(response) == set()


def test_the_right_key_reaches_the_function_which_adds_its_cors_headers(keyed_stack):
    response = classify(keyed_stack.url, **KEYED)
    assert response.status_code == 200, response.text
    assert response.json()["model"]["name"] == "efficientnet_lite0"
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_a_preflight_needs_no_key(keyed_stack):
    response = requests.options(f"{keyed_stack.url}/v1/classify", timeout=30, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key"})
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_without_local_api_key_the_router_checks_no_key(stack):
    assert requests.get(f"{stack.url}/v1/models", timeout=30).status_code == 200


def test_a_spent_quota_gets_espv2s_429_and_other_metrics_still_pass(gateway_with_quotas):
    gateway = gateway_with_quotas(classify=2)
    assert [classify(gateway.url, **KEYED).status_code for _ in range(2)] == [200, 200]
    refused = requests.post(f"{gateway.url}/v1/classify", data=cat_jpeg(), timeout=60,
                            headers={"Content-Type": "image/jpeg", "Origin": ORIGIN, **KEYED})
    assert refused.status_code == 429
    assert refused.json() == {"code": 429, "message": (
        "RESOURCE_EXHAUSTED: Quota exceeded for quota metric 'classify requests' and limit "
        "'classify-requests-per-minute' of service 'imgclassify.local' for consumer 'project_number:0'.")}
    assert cors_headers(refused) == set()
    assert requests.get(f"{gateway.url}/v1/models", headers=KEYED, timeout=30).status_code == 200


def test_the_page_gets_the_key_in_its_config(keyed_stack, stack):
    keyed = requests.get(f"{keyed_stack.url}/config.js", timeout=30)
    assert keyed.text == f'window.IMGCLASSIFY_CONFIG = {{"apiBase": "", "apiKey": "{LOCAL_API_KEY}"}};\n'
    assert 'apiKey: ""' in requests.get(f"{stack.url}/config.js", timeout=30).text


def test_make_devs_curl_examples_work_with_the_key_it_prints(keyed_stack):
    text = banner(keyed_stack)
    assert f"the key: {LOCAL_API_KEY}" in text
    commands = [shlex.split(line.strip()) for line in text.splitlines() if line.strip().startswith("curl ")]
    assert len(commands) == 2
    for command in commands:
        result = subprocess.run([command[0], "--silent", "--fail", *command[1:]], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        assert result.stdout.startswith('{"')
    keyless = [part for part in commands[0] if part not in ("-H", f"x-api-key: {LOCAL_API_KEY}")]
    result = subprocess.run([*keyless, "--silent", "--write-out", "%{http_code}", "--output", "/dev/null"],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout == "401"
