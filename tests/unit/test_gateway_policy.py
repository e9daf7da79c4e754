"""The local gateway's rules come from the gateway spec Terraform deploys, and refuse as ESPv2 does."""

from __future__ import annotations

import json

import pytest

from devstack.gateway import BAD_KEY_MESSAGE, NO_KEY_MESSAGE, SPEC_TEMPLATE, GatewayPolicy, render_template
from imgclassify.serving.routes import ROUTES

KEY = "local-key-1"


class Clock:
    """A clock the test moves, so that a minute passes without waiting for one."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(classify: int = 3, list_models: int = 5, clock=None) -> GatewayPolicy:
    values = {"classify_requests_per_minute": classify, "list_models_requests_per_minute": list_models}
    spec = render_template(SPEC_TEMPLATE.read_text(), values)
    return GatewayPolicy.from_spec(spec, KEY, **({"clock": clock} if clock else {}))


def test_every_route_needs_the_key_in_the_declared_header_and_no_preflight_does():
    rules = policy()
    assert rules.key_header == "x-api-key"
    for route in ROUTES:
        assert rules.operations[(route.method, route.template)].secured, route
        assert not rules.operations[("OPTIONS", route.template)].secured, route
    assert rules.check("OPTIONS", "/v1/classify", {}, {}) is None


def test_each_route_spends_the_quota_metric_its_function_is_counted_by():
    rules = policy()
    for route in ROUTES:
        metric = {"classify": "classify-requests", "list_models": "list-models-requests"}[route.function]
        assert rules.operations[(route.method, route.template)].metric_costs == {metric: 1}, route


def test_the_quota_values_are_the_terraform_defaults_unless_overridden():
    defaults = GatewayPolicy.from_template(KEY)
    assert {metric: limit.per_minute for metric, limit in defaults.limits.items()} == {
        "classify-requests": 120, "list-models-requests": 600}
    overridden = GatewayPolicy.from_template(KEY, {"classify_requests_per_minute": 7})
    assert overridden.limits["classify-requests"].per_minute == 7


def test_a_request_without_a_key_is_refused_as_espv2_refuses_it():
    refusal = policy().check("GET", "/v1/models", {}, {})
    assert refusal.status == 401
    assert json.loads(refusal.body()) == {"code": 401, "message": NO_KEY_MESSAGE}
    assert refusal.body().startswith(b'{"code":401,"message":"UNAUTHENTICATED: Method doesn\'t allow unregistered')


def test_a_wrong_key_is_refused_as_invalid_argument():
    refusal = policy().check("POST", "/v1/classify", {"x-api-key": KEY + "x"}, {})
    assert (refusal.status, json.loads(refusal.body())) == (400, {"code": 400, "message": BAD_KEY_MESSAGE})


def test_the_key_in_the_query_is_not_the_declared_location():
    assert policy().check("GET", "/v1/models", {}, {"key": KEY}).status == 401


def test_a_spent_quota_is_refused_until_a_minute_has_passed():
    clock = Clock()
    rules = policy(classify=3, clock=clock)
    headers = {"x-api-key": KEY}
    # Both classify routes spend the one classify limit.
    for template in ("/v1/classify", "/v1/models/{name}:classify", "/v1/classify"):
        assert rules.check("POST", template, headers, {}) is None
    refusal = rules.check("POST", "/v1/classify", headers, {})
    assert refusal.status == 429
    assert json.loads(refusal.body())["message"] == (
        "RESOURCE_EXHAUSTED: Quota exceeded for quota metric 'classify requests' and limit "
        "'classify-requests-per-minute' of service 'imgclassify.local' for consumer 'project_number:0'.")
    assert rules.check("GET", "/v1/models", headers, {}) is None, "another metric's limit is not spent"
    clock.now += 59.9
    assert rules.check("POST", "/v1/classify", headers, {}).status == 429
    clock.now += 0.2
    assert rules.check("POST", "/v1/classify", headers, {}) is None


def test_refused_requests_spend_no_quota():
    rules = policy(classify=1)
    for _ in range(5):
        assert rules.check("POST", "/v1/classify", {}, {}).status == 401
        assert rules.check("POST", "/v1/classify", {"x-api-key": "nope"}, {}).status == 400
    assert rules.check("POST", "/v1/classify", {"x-api-key": KEY}, {}) is None
    assert rules.check("POST", "/v1/classify", {"x-api-key": KEY}, {}).status == 429


def test_a_spec_whose_limit_is_not_per_minute_is_refused():
    spec = render_template(SPEC_TEMPLATE.read_text(), {"classify_requests_per_minute": 1,
                                                       "list_models_requests_per_minute": 1})
    spec["x-google-management"]["quota"]["limits"][0]["unit"] = "1/d/{project}"
    with pytest.raises(ValueError, match="is not 1/min"):
        GatewayPolicy.from_spec(spec, KEY)


def test_a_quota_value_the_rendering_does_not_know_fails_loudly():
    spec = render_template(SPEC_TEMPLATE.read_text(), {"list_models_requests_per_minute": 1})
    with pytest.raises(ValueError, match="UNSET"):
        GatewayPolicy.from_spec(spec, KEY)


def test_a_key_restricted_to_referrers_needs_a_matching_referer():
    rules = policy()
    rules.allowed_referrers = ("https://storage.googleapis.com/*",)
    headers = {"x-api-key": KEY}
    refusal = rules.check("GET", "/v1/models", headers, {})
    assert (refusal.status, json.loads(refusal.body())["message"]) == (403, "PERMISSION_DENIED: Referer blocked.")
    assert rules.check("GET", "/v1/models", {**headers, "referer": "https://elsewhere.example/"}, {}).status == 403
    assert rules.check("GET", "/v1/models", {**headers, "referer": "https://storage.googleapis.com/"}, {}) is None
