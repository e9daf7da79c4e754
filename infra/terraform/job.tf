# The batch job (Cloud Run job): classifies every image under an input prefix into JSONL files.
# Its image comes from batch/Dockerfile, built and pushed by Cloud Build, which passes
# batch_image; before the first image exists (first apply) there is no job.

resource "google_cloud_run_v2_job" "batch" {
  count = var.batch_image == null ? 0 : 1

  project  = var.project_id
  location = var.region
  name     = "${var.name_prefix}-batch"
  labels   = local.labels
  # The job holds no data; replacing it loses nothing.
  deletion_protection = false

  template {
    parallelism = var.batch_parallelism
    task_count  = var.batch_task_count
    labels      = local.labels

    template {
      service_account = google_service_account.batch.email
      timeout         = "${var.batch_timeout_seconds}s"
      max_retries     = var.batch_max_retries

      containers {
        image = var.batch_image
        args  = var.batch_args

        resources {
          limits = {
            cpu    = tostring(var.batch_cpu)
            memory = "${var.batch_memory_mb}Mi"
          }
        }

        env {
          name  = "MODEL_STORE"
          value = "gs://${local.weights_bucket}"
        }
        env {
          name  = "GOOGLE_CLOUD_PROJECT"
          value = var.project_id
        }
        env {
          name  = "CACHE_BUDGET_MB"
          value = tostring(floor(var.batch_memory_mb / 2))
        }
        env {
          name  = "ENGINE_THREADS"
          value = tostring(var.batch_cpu)
        }
      }
    }
  }

  depends_on = [
    google_project_service.apis,
    google_storage_bucket_iam_member.weights_readers,
    google_storage_bucket_iam_member.batch_reads_input,
    google_storage_bucket_iam_member.batch_writes_output,
  ]
}
