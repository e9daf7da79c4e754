# Service accounts and every IAM grant of the stack, in one place.
# Each account holds only what its job needs; tests/test_infra.py checks the rules below.
#  - classify, list_models: read the weights bucket (classify also reads allowed_gcs_buckets);
#  - gateway: invokes the functions, and is the only principal that may;
#  - builder: builds the functions' images (reads sources, writes the image repository, logs);
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

# --- Batch job ---------------------------------------------------------------------------

resource "google_storage_bucket_iam_member" "batch_reads_input" {
  count = var.batch_input_bucket == null ? 0 : 1

  bucket = var.batch_input_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.batch.member
}

# Object User: create, overwrite and delete objects (a retried task rewrites its shard), no IAM.
resource "google_storage_bucket_iam_member" "batch_writes_output" {
  count = var.batch_output_bucket == null ? 0 : 1

  bucket = var.batch_output_bucket
  role   = "roles/storage.objectUser"
  member = google_service_account.batch.member
}

# --- The web page: the one public grant ------------------------------------------------

resource "google_storage_bucket_iam_member" "site_public_read" {
  #checkov:skip=CKV_GCP_28:The site bucket holds only the public web page; anonymous read of its objects is its purpose.
  count = var.site_public_read ? 1 : 0

  bucket = google_storage_bucket.site.name
  role   = "roles/storage.objectViewer"
  member = "allUsers"
}
