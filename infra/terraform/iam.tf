# Service accounts and every IAM grant of the stack, in one place.
# Each account holds only what its job needs; tests/infra/ checks the rules below.
#  - classify, list_models: read the weights bucket (classify also reads allowed_gcs_buckets);
#  - gateway: invokes the functions, and is the only principal that may;
#  - builder: builds the functions' images (reads the sources and Cloud Functions' copy of them,
#    writes the image repository and logs);
#  - batch: reads weights and its input bucket, writes its output bucket.

resource "google_service_account" "classify" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-classify"
  display_name = "imgclassify classify function"
  description  = "Runtime identity of the classify functions (shared and dedicated): reads model weights."
}

resource "google_service_account" "list_models" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-list-models"
  display_name = "imgclassify list_models function"
  description  = "Runtime identity of the list_models function: reads the model catalog and manifests."
}

resource "google_service_account" "gateway" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-gateway"
  display_name = "imgclassify API Gateway"
  description  = "Identity API Gateway calls the functions with; the only invoker of the functions."
}

resource "google_service_account" "builder" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-builder"
  display_name = "imgclassify function builds"
  description  = "Cloud Build identity of the functions' image builds."
}

resource "google_service_account" "batch" {
  project      = var.project_id
  account_id   = "${var.name_prefix}-batch"
  display_name = "imgclassify batch job"
  description  = "Runtime identity of the batch job: reads weights and input images, writes results."
}

# --- Runtime accounts: read the weights bucket, nothing else ---------------------------

resource "google_storage_bucket_iam_member" "weights_readers" {
  for_each = {
    classify    = google_service_account.classify.member
    list_models = google_service_account.list_models.member
    batch       = google_service_account.batch.member
  }

  bucket = local.weights_bucket
  role   = "roles/storage.objectViewer"
  member = each.value
}

# gcs_uri inputs: classify reads only the buckets the service is configured to accept.
resource "google_storage_bucket_iam_member" "classify_input_readers" {
  for_each = toset(var.allowed_gcs_buckets)

  bucket = each.value
  role   = "roles/storage.objectViewer"
  member = google_service_account.classify.member
}

# --- Gateway: the only invoker of every function -----------------------------------------

resource "google_cloud_run_v2_service_iam_member" "gateway_invokes" {
  for_each = google_cloudfunctions2_function.function

  project  = var.project_id
  location = var.region
  # A gen2 function runs as the Cloud Run service of the same name; invoking it is run.invoker there.
  name   = each.value.name
  role   = "roles/run.invoker"
  member = google_service_account.gateway.member
}

# --- Builder: what a gen2 function build needs -----------------------------------------
# Cloud Functions copies each source zip from our sources bucket into its own bucket in this
# project, gcf-v2-sources-PROJECT_NUMBER-REGION, and the build downloads it from there: without
# read access to that bucket every build fails with "Access to bucket gcf-v2-sources-... denied"
# (hashicorp/terraform-provider-google#20571). The provider's own example grants Storage Object
# Admin on the whole project; the build only reads, so it gets Object Viewer, on that bucket
# alone. The grant is made on the project with a condition on the bucket's name, because the
# bucket does not exist before the first function does.

data "google_project" "main" {
  project_id = var.project_id
}

locals {
  gcf_sources_bucket = "gcf-v2-sources-${data.google_project.main.number}-${var.region}"
}

resource "google_project_iam_member" "builder_reads_gcf_sources" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.builder.member

  condition {
    title       = "gcf-v2-sources bucket only"
    description = "Function builds read their source from the bucket Cloud Functions copies it to; nothing else."
    # The bucket itself (objects.list) and the objects in it (objects.get); no other bucket,
    # not even one whose name merely starts with the same characters.
    expression = "resource.name == \"projects/_/buckets/${local.gcf_sources_bucket}\" || resource.name.startsWith(\"projects/_/buckets/${local.gcf_sources_bucket}/\")"
  }
}

# Our own copy of the zips: the same bytes as the copy above, so reading them grants nothing new.
resource "google_storage_bucket_iam_member" "builder_reads_sources" {
  bucket = google_storage_bucket.sources.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.builder.member
}

resource "google_artifact_registry_repository_iam_member" "builder_pushes_images" {
  project    = var.project_id
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.builder.member
}

resource "google_project_iam_member" "builder_writes_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.builder.member
}

# IAM is eventually consistent: a build that starts right after its grants may still be
# refused. The provider's build-account example waits 60 s between the grants and the
# function (cloudfunctions2_basic_builder), and its gen1 twin still failed now and then until
# the wait was doubled (GoogleCloudPlatform/magic-modules#11909). The functions depend on this
# wait, so it runs on the first apply (and whenever a grant is recreated), not on every apply.
resource "time_sleep" "builder_grants_settle" {
  create_duration = "120s"

  triggers = {
    gcf_sources = google_project_iam_member.builder_reads_gcf_sources.id
    sources     = google_storage_bucket_iam_member.builder_reads_sources.id
    images      = google_artifact_registry_repository_iam_member.builder_pushes_images.id
    logs        = google_project_iam_member.builder_writes_logs.id
  }
}

# --- Batch job ---------------------------------------------------------------------------
# Only once the job exists (batch_image set): before that, its account needs no bucket, and a
# bucket named ahead of time is not touched until the job that uses it is deployed.

resource "google_storage_bucket_iam_member" "batch_reads_input" {
  count = var.batch_image != null && var.batch_input_bucket != null ? 1 : 0

  bucket = var.batch_input_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.batch.member
}

# Object User: create, overwrite and delete objects (a retried task rewrites its shard), no IAM.
resource "google_storage_bucket_iam_member" "batch_writes_output" {
  count = var.batch_image != null && var.batch_output_bucket != null ? 1 : 0

  bucket = var.batch_output_bucket
  role   = "roles/storage.objectUser"
  member = google_service_account.batch.member
}

# --- The web page: the one public grant ------------------------------------------------

resource "google_storage_bucket_iam_member" "site_public_read" {
  #checkov:skip=CKV_GCP_28:The site bucket holds only the public web page; anonymous read of its objects is its purpose.
  count = var.site_public_read ? 1 : 0

  bucket = google_storage_bucket.site.name
  # Reads objects, lists nothing: objectViewer would also list the bucket to the world.
  role   = "roles/storage.legacyObjectReader"
  member = "allUsers"
}

# --- The deployer (Cloud Build's account): what later applies need, on this stack only -------
#
# docs/deploy.md step 2 gives it project roles without service-account use or storage; the
# first apply (by the operator) grants it use of the stack's own accounts (to deploy functions
# and the job as them) and storage on the stack's own buckets (the state bucket is granted in
# step 2). Unset deployer_email: no grants.

resource "google_service_account_iam_member" "deployer_uses" {
  for_each = var.deployer_email == null ? {} : {
    classify    = google_service_account.classify.name
    list_models = google_service_account.list_models.name
    gateway     = google_service_account.gateway.name
    builder     = google_service_account.builder.name
    batch       = google_service_account.batch.name
  }

  service_account_id = each.value
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${var.deployer_email}"
}

resource "google_storage_bucket_iam_member" "deployer_manages" {
  for_each = var.deployer_email == null ? {} : merge(
    { sources = google_storage_bucket.sources.name, site = google_storage_bucket.site.name },
    var.create_weights_bucket ? { weights = google_storage_bucket.weights[0].name } : {},
  )

  bucket = each.value
  role   = "roles/storage.admin"
  member = "serviceAccount:${var.deployer_email}"
}
