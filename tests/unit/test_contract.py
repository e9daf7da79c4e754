"""The public contract (imgclassify/serving/contract.py) is one document, and everything else agrees with it:
the route table, the error classes, the README's error table and the generated gateway spec."""

from __future__ import annotations

import ast
import importlib.util
import re

import pytest
import yaml
from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from devstack.processes import REPO
from imgclassify import errors
from imgclassify.serving import routes
from imgclassify.serving.contract import IMAGE_MEDIA_TYPES, error_codes_by_status, openapi_document

# What serves or runs the API (clients such as scripts/smoke.py may spell the codes they expect).
SOURCE_DIRS = ("imgclassify", "devstack", "functions", "batch")


@pytest.fixture(scope="module")
def document() -> dict:
    return openapi_document()


def load_gateway_generator():
    spec = importlib.util.spec_from_file_location("build_gateway_spec", REPO / "scripts" / "build_gateway_spec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python_sources():
    for folder in SOURCE_DIRS:
        yield from sorted((REPO / folder).rglob("*.py"))


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)


def test_the_operations_are_exactly_the_route_table_plus_a_preflight_per_path(document):
    operations = {(path, method): operation["operationId"]
                  for path, item in document["paths"].items() for method, operation in item.items()}

    expected = {(route.template, route.method.lower()): route.operation for route in routes.ROUTES}
    expected |= {(route.template, "options"): f"{route.operation}Preflight" for route in routes.ROUTES}
    assert operations == expected
    assert routes.match("/v1/openapi.json")[0].function == "list_models"


def test_every_error_code_is_in_the_error_schema_and_every_status_is_documented_where_it_can_happen(document):
    api_codes = {cls.code for cls in errors.api_error_classes()}
    schema_codes = set(document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"]["enum"])
    assert schema_codes == api_codes
    classify = document["paths"]["/v1/classify"]["post"]["responses"]
    for status, codes in error_codes_by_status().items():
        schema = document["components"]["schemas"][f"Error{status}"]["properties"]["error"]["properties"]
        assert set(schema["code"]["enum"]) == set(codes)
        assert schema["status"] == {"const": status}
        assert str(status) in classify or status in (405,), status


def test_one_class_per_code_and_every_class_lives_in_errors_py():
    classes = errors.all_error_classes()
    codes = [cls.code for cls in classes]

    assert len(codes) == len(set(codes)), sorted(code for code in codes if codes.count(code) > 1)
    assert all(cls.__module__ == "imgclassify.errors" for cls in classes)
    names = {cls.__name__ for cls in classes}
    for path in python_sources():
        if path.name == "errors.py" and path.parent.name == "imgclassify":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(base, "id", getattr(base, "attr", None)) for base in node.bases}
                assert not bases & names, f"{path}:{node.lineno} defines error class {node.name} outside errors.py"


def test_no_module_spells_an_error_code_as_a_string():
    codes = {cls.code for cls in errors.all_error_classes()}
    pattern = re.compile(r"\b(" + "|".join(sorted(codes, key=len, reverse=True)) + r")\b")
    for path in python_sources():
        if path.name == "errors.py" and path.parent.name == "imgclassify":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.keyword) and node.arg == "code":
                pytest.fail(f"{path}:{node.value.lineno} passes code=...: raise the error class of that code")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in codes:
                pytest.fail(f"{path}:{node.lineno} spells the code {node.value!r}: use its class from errors.py")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and '"code"' in node.value:
                assert not pattern.search(node.value), f"{path}:{node.lineno} writes an error's JSON by hand"


def test_the_readme_error_table_lists_exactly_the_codes_of_each_status():
    readme = (REPO / "README.md").read_text()
    table = readme.split("Errors are always JSON", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[int(cells[0])] = re.findall(r"`([A-Z0-9_]+)`", cells[1])

    assert rows == {status: sorted(codes) for status, codes in error_codes_by_status().items()}


def test_the_committed_gateway_spec_is_the_one_generated_from_the_contract():
    generator = load_gateway_generator()

    assert generator.TEMPLATE.read_text() == generator.gateway_template(), \
        "infra/terraform/openapi.yaml.tftpl is stale: run python3 scripts/build_gateway_spec.py"


def test_the_gateway_spec_has_every_operation_and_parameter_of_the_contract(document):
    import yaml

    generator = load_gateway_generator()
    # Terraform's directives and interpolations replaced by plain values, as terraform would.
    text = re.sub(r"(?s)%\{ for .*?%\{ endfor ~\}\n", "", generator.gateway_template())
    spec = yaml.safe_load(re.sub(r"\$\{[a-z_.]+\}", "1", text))
    for path, item in document["paths"].items():
        for method, operation in item.items():
            gateway = spec["paths"][path][method]
            assert gateway["operationId"] == operation["operationId"]
            assert [p["name"] for p in gateway.get("parameters", [])] == \
                [p["name"] for p in operation.get("parameters", [])]
            assert set(gateway["responses"]) == set(operation["responses"])
            if "requestBody" in operation:
                assert gateway["consumes"] == list(operation["requestBody"]["content"])


def test_the_client_generator_config_reads_every_raw_image_type_of_the_contract_as_binary():
    config = yaml.safe_load((REPO / "docs" / "openapi-python-client.yaml").read_text())

    assert config["content_type_overrides"] == {
        media_type: "application/octet-stream" for media_type in IMAGE_MEDIA_TYPES
        if media_type != "application/octet-stream"}
