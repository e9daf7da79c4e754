"""Infrastructure, offline: The gateway spec."""

from __future__ import annotations

import yaml
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV2SpecValidator

import devstack.router
from imgclassify.serving import routes
from tests.support.infra import (
    BACKENDS,
    DEDICATED,
    operations,
    render_spec,
)


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
    # A preflight waits as long as its route: a scaled-to-zero backend loads its model before it
    # listens, and the preflight may be the request that meets that cold start.
    for path, item in spec["paths"].items():
        deadlines = {method: operation["x-google-backend"]["deadline"] for method, operation in item.items()}
        assert len(set(deadlines.values())) == 1, (path, deadlines)
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


