"""Infrastructure, offline: IAM: least privilege."""

from __future__ import annotations

import re

from devstack.processes import REPO
from tests.support.infra import (
    IAM_GRANT,
    RUNTIME_ACCOUNTS,
    TERRAFORM_DIR,
    account_of,
    iam_condition,
    iam_grants,
    load_hcl,
    resource_kinds,
    resources,
)


def test_no_public_principal_except_read_of_the_web_page():
    public = [grant for grant in iam_grants() if grant.member in ("allUsers", "allAuthenticatedUsers")]
    assert [(grant.resource, grant.target, grant.role) for grant in public] == [
        ("google_storage_bucket_iam_member.site_public_read", "${google_storage_bucket.site.name}",
         "roles/storage.legacyObjectReader")]
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




def test_the_public_grant_reads_objects_without_listing_the_bucket():
    # roles/storage.legacyObjectReader: storage.objects.get only; objectViewer adds objects.list
    # (and buckets.get), which would list the site bucket to anyone.
    (grant,) = [grant for grant in iam_grants() if grant.member == "allUsers"]
    assert grant.role == "roles/storage.legacyObjectReader"


def test_the_deployer_uses_only_the_stacks_accounts_and_manages_only_its_buckets():
    uses = resources("google_service_account_iam_member")["deployer_uses"]
    assert uses["role"] == "roles/iam.serviceAccountUser"
    accounts = set(re.findall(r"google_service_account\.(\w+)\.name", uses["for_each"]))
    assert accounts == set(resources("google_service_account")) == {"classify", "list_models", "gateway", "builder",
                                                                     "batch"}
    manages = resources("google_storage_bucket_iam_member")["deployer_manages"]
    assert manages["role"] == "roles/storage.admin"
    assert "google_storage_bucket.sources.name" in manages["for_each"] and "google_storage_bucket.site.name" in \
        manages["for_each"]


def test_the_deployers_project_roles_in_the_docs_hold_no_account_use_no_storage_and_conditional_iam_admin():
    docs = (REPO / "docs" / "deploy.md").read_text()
    step = docs[docs.index("## 2. Create the state bucket"):docs.index("## 3. ")]
    project_roles = set(re.search(r"for role in (.*?); do", step, re.S).group(1).replace("\\", " ").split())
    assert not project_roles & {"iam.serviceAccountUser", "storage.admin", "resourcemanager.projectIamAdmin",
                                "owner", "editor"}
    condition = re.search(r"--role=roles/resourcemanager.projectIamAdmin.*?hasOnly\(\[(.*?)\]\)", step, re.S)
    granted = {grant.role for grant in iam_grants() if grant.resource.startswith("google_project_iam_member.")}
    assert {role.strip(" '") for role in condition.group(1).split(",")} == granted
