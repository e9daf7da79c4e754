"""Infrastructure, offline: cloudbuild.yaml."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml

from devstack.processes import REPO
from tests.support.infra import (
    TERRAFORM_DIR,
)


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


def test_cloudbuild_deploys_a_snapshot_of_the_default_model_from_the_weights_bucket_the_state_names(cloudbuild):
    steps = {step["id"]: step for step in cloudbuild["steps"]}
    reads_the_state = steps["image-repository"]["args"][-1]
    assert "terraform output -raw weights_bucket > /workspace/weights-bucket.txt" in reads_the_state
    assert 'output "weights_bucket"' in (TERRAFORM_DIR / "outputs.tf").read_text()
    deploy = steps["deploy"]["args"][-1]
    exported = deploy.index('export MODEL_STORE="gs://$$(cat /workspace/weights-bucket.txt)"')
    assert exported < deploy.index("infra/terraform/deploy.sh")
    # deploy.sh builds the bundles with this image's Python, which has no storage client: the
    # script reads the store with gcloud then (tests/infra/test_deploy_script.py)
    assert steps["deploy"]["name"].startswith("gcr.io/google.com/cloudsdktool/cloud-sdk")
    assert 'python3 "$repo/scripts/build_bundles.py"' in (TERRAFORM_DIR / "deploy.sh").read_text()


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




def test_every_builds_submit_line_names_the_service_account_as_the_api_wants_it():
    # The API takes projects/PROJECT/serviceAccounts/EMAIL; a bare name or email is refused.
    for path in (REPO / "cloudbuild.yaml", REPO / "docs" / "deploy.md"):
        text = path.read_text()
        values = re.findall(r"--service-account=(\S+)", text)
        assert values, path
        for value in values:
            assert re.fullmatch(r"projects/[$A-Z_a-z0-9-]+/serviceAccounts/[$A-Z_a-z0-9@.-]+", value), (path, value)
