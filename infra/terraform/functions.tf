# The Cloud Functions (gen2): classify, list_models, and one classify per dedicated model.

locals {
  # Environment of each deployment: computed settings first, then the variable's own entries,
  # which win, except THREADS. The names are those of the README's configuration table
  # (imgclassify/settings.py), plus THREADS, which functions-framework reads: it starts
  # 4 x vCPU gunicorn threads unless told otherwise, so an instance allowed 40 concurrent
  # requests on one vCPU would queue 36 of them instead of letting Cloud Run scale out.
  # Google's concurrency guidance for Python functions: THREADS = the concurrency.
  function_environment = {
    for key, function in local.functions : key => merge(
      {
        MODEL_STORE          = "gs://${local.weights_bucket}"
        GOOGLE_CLOUD_PROJECT = var.project_id
        CORS_ALLOWED_ORIGINS = join(",", local.cors_origins)
      },
      function.entry_point == "classify" ? tomap({
        # Half the memory for warm models; the rest is the runtime, requests and decoded images.
        # A lone forward uses every vCPU the instance is given (concurrent ones one each): said
        # here rather than read from the CPUs the sandbox shows, which may not be the quota.
        CACHE_BUDGET_MB     = tostring(floor(function.memory_mb / 2))
        ENGINE_THREADS      = tostring(function.cpu)
        ALLOWED_GCS_BUCKETS = join(",", var.allowed_gcs_buckets)
      }) : tomap({}),
      function.model == null ? tomap({}) : tomap({ DEFAULT_MODEL = function.model, PRELOAD_DEFAULT_MODEL = "true" }),
      function.environment,
      # Always the concurrency: one setting, so the two can never disagree.
      { THREADS = tostring(function.concurrency) },
    )
  }
}

resource "google_cloudfunctions2_function" "function" {
  #checkov:skip=CKV_GCP_124:API Gateway calls from outside any VPC, so ingress must allow all; IAM is the gate (run.invoker for the gateway account only).
  for_each = local.functions

  project     = var.project_id
  location    = var.region
  name        = each.value.name
  description = each.value.model == null ? "imgclassify ${each.value.entry_point}" : "imgclassify classify, dedicated to ${each.value.model}"
  labels      = local.labels

  build_config {
    runtime           = "python311"
    entry_point       = each.value.entry_point
    service_account   = google_service_account.builder.id
    docker_repository = google_artifact_registry_repository.images.id

    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.function_source[each.value.bundle].name
      }
    }
  }

  service_config {
    available_memory                 = "${each.value.memory_mb}Mi"
    available_cpu                    = tostring(each.value.cpu)
    max_instance_request_concurrency = each.value.concurrency
    min_instance_count               = each.value.min_instances
    max_instance_count               = each.value.max_instances
    timeout_seconds                  = each.value.timeout_seconds
    environment_variables            = local.function_environment[each.key]
    service_account_email            = each.value.entry_point == "classify" ? google_service_account.classify.email : google_service_account.list_models.email
    all_traffic_on_latest_revision   = true
    # Reachable from the internet, because API Gateway is outside any VPC, but nobody can call
    # it without an ID token for an account with run.invoker, and only the gateway has that (iam.tf).
    ingress_settings = "ALLOW_ALL"
  }

  # The build's grants, once they have settled (iam.tf); the runtime's read of the weights.
  depends_on = [
    google_project_service.apis,
    time_sleep.builder_grants_settle,
    google_storage_bucket_iam_member.weights_readers,
  ]
}

# Startup CPU boost is a setting of the Cloud Run service under each gen2 function, which the
# Cloud Functions API does not expose; gcloud sets it on that service after every change of the
# function (a function deploy makes a new revision), so Terraform needs gcloud where it runs.
resource "terraform_data" "startup_cpu_boost" {
  for_each = local.functions

  triggers_replace = {
    function = google_cloudfunctions2_function.function[each.key].id
    # Every deploy of the function (a new revision, from Terraform or not) changes update_time;
    # the new revision has no boost until this runs again.
    revision    = google_cloudfunctions2_function.function[each.key].update_time
    source      = google_storage_bucket_object.function_source[each.value.bundle].name
    settings    = jsonencode(each.value)
    environment = jsonencode(local.function_environment[each.key])
  }

  provisioner "local-exec" {
    command = join(" ", [
      "gcloud run services update ${google_cloudfunctions2_function.function[each.key].name}",
      "--project=${var.project_id} --region=${var.region} --quiet",
      each.value.startup_cpu_boost ? "--cpu-boost" : "--no-cpu-boost",
    ])
  }
}
