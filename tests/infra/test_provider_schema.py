"""Every block of infra/terraform against hashicorp/google's real schema, offline.

The schema is the committed part of ``terraform providers schema -json`` for the pinned
release (tests/infra/provider_schema/, written by scripts/refresh_provider_schema.py); for
google-beta, which publishes none, the schema its Go source declares at the pinned tag (the
same script, --beta-source). time_sleep and terraform_data are listed below; the planted-typo
tests show the check fails on each kind of mistake it is there to catch.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from scripts.refresh_provider_schema import pinned_version, render, subset, used_types
from tests.support.infra import TERRAFORM_DIR
from tests.support.terraform_schema import Block, blocks_in, check, provider_schema

SHARED_SCHEMA = Path("/work/shared/terraform/google-6.50.0.schema.json.gz")
# Checked by other means: terraform_data is Terraform's own; time_sleep (hashicorp/time) sets
# only create_duration and triggers, both in its documentation.
UNCHECKED = {"terraform": {"terraform_data"}, "time": {"time_sleep"}}
CHECKED = ("google", "google-beta")


@pytest.fixture(scope="module")
def schema() -> dict:
    return provider_schema(pinned_version())


@pytest.fixture(scope="module")
def schemas(schema) -> dict[str, dict]:
    return {"google": schema, "google-beta": provider_schema(pinned_version(), "google-beta")}


def all_blocks() -> list[Block]:
    return list(blocks_in(TERRAFORM_DIR))


def test_the_committed_schema_is_the_pinned_release_and_names_its_source(schema):
    assert schema["version"] == pinned_version() == "6.50.0"
    assert schema["provider"] == "registry.terraform.io/hashicorp/google"
    assert "lonegunmanb/terraform-google-schema" in schema["source"]


def test_the_committed_schema_holds_every_google_type_the_configuration_uses(schema):
    used = used_types()
    assert set(schema["resource_schemas"]) == used["resource"]
    assert set(schema["data_source_schemas"]) == used["data"]


@pytest.mark.skipif(not SHARED_SCHEMA.exists(), reason=f"{SHARED_SCHEMA} is not on this machine")
def test_the_refresh_script_writes_the_committed_file_from_the_full_schema(schema):
    with gzip.open(SHARED_SCHEMA, "rt") as handle:
        full = json.load(handle)
    committed = (TERRAFORM_DIR.parent.parent / "tests" / "infra" / "provider_schema" / "google-6.50.0.json")
    assert render(subset(full, schema["source"], "6.50.0")) == committed.read_text()


def test_the_google_beta_schema_is_read_from_the_providers_source_at_the_pinned_tag(schemas):
    beta = schemas["google-beta"]
    assert beta["version"] == pinned_version()
    assert beta["source"].startswith(f"hashicorp/terraform-provider-google-beta v{pinned_version()} (commit ")
    assert set(beta["resource_schemas"]) == used_types("google-beta")["resource"] == {
        "google_api_gateway_api", "google_api_gateway_api_config", "google_api_gateway_gateway"}


def test_every_block_is_checked_or_listed_with_its_provider():
    by_provider: dict[str, set[str]] = {}
    for block in all_blocks():
        by_provider.setdefault(block.provider, set()).add(block.type)
    assert {provider: types for provider, types in by_provider.items() if provider not in CHECKED} == UNCHECKED


@pytest.mark.parametrize("block", [b for b in all_blocks() if b.provider in CHECKED], ids=lambda b: b.address)
def test_every_resource_and_data_block_matches_the_provider_schema(schemas, block):
    assert check(block, schemas[block.provider]) == []


# --- planted typos: each kind of mistake is caught -----------------------------------------

PLANTED = [
    # (file, text to replace, replacement, expected problem)
    ("storage.tf", "uniform_bucket_level_access", "uniform_bucket_level_acess",
     "unknown argument 'uniform_bucket_level_acess'"),
    ("gateway.tf", "allowed_referrers = browser_key_restrictions.value",
     "allowed_referer = browser_key_restrictions.value",
     "dynamic.browser_key_restrictions.content: unknown argument 'allowed_referer'"),
    ("gateway.tf", "    api_targets {\n      service = google_api_gateway_api.main.managed_service\n    }\n",
     "    api_targets {\n      service = google_api_gateway_api.main.managed_service\n    }\n"
     + "    server_key_restrictions {\n      allowed_ips = []\n    }\n" * 2,
     "2 'server_key_restrictions' blocks; at most 1 allowed"),
    ("gateway.tf", '  display_name = "${var.name_prefix} web page"\n',
     '  display_name = "${var.name_prefix} web page"\n  key_string   = "planted"\n',
     "'key_string' is computed by the provider and cannot be set"),
    ("gateway.tf", '  service            = google_api_gateway_api.main.managed_service\n', "",
     "the required argument 'service' is missing"),
    ("gateway.tf", "  openapi_documents {", "  openapi_document {", "unknown block 'openapi_document'"),
    ("gateway.tf", "      google_service_account = google_service_account.gateway.email\n", "",
     "gateway_config.backend_config: the required argument 'google_service_account' is missing"),
]


def planted_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM_DIR, copy, ignore=shutil.ignore_patterns(".terraform*"))
    text = (copy / file).read_text()
    assert old in text, f"{file} no longer has {old!r}: re-plant this typo"
    (copy / file).write_text(text.replace(old, new, 1))
    return copy


@pytest.mark.parametrize(("file", "old", "new", "expected"), PLANTED, ids=[p[3][:48] for p in PLANTED])
def test_a_planted_mistake_is_caught(schemas, tmp_path, file, old, new, expected):
    problems = [problem for block in blocks_in(planted_copy(tmp_path, file, old, new)) if block.provider in CHECKED
                for problem in check(block, schemas[block.provider])]
    assert any(expected in problem for problem in problems), problems


def test_a_deprecated_argument_is_caught(schema):
    # No argument the configuration sets is deprecated; one the schema marks so is refused.
    deprecated = [(type_name, name) for type_name, body in schema["resource_schemas"].items()
                  for name, attribute in body["block"].get("attributes", {}).items() if attribute.get("deprecated")]
    type_name, name = deprecated[0]
    block = Block("resource", type_name, "planted", "planted.tf", {name: "x"})
    assert f"{name!r} is deprecated" in " ".join(check(block, schema))


def test_an_unknown_type_is_caught(schema):
    block = Block("resource", "google_storage_buckets", "planted", "planted.tf", {"name": "x", "location": "EU"})
    assert check(block, schema) == ["planted.tf: google_storage_buckets.planted: google_storage_buckets is not a "
                                    "resource type of registry.terraform.io/hashicorp/google 6.50.0"]
