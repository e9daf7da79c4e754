# One Docker repository for everything built from this repo: the functions' images (built by
# Cloud Functions from the source zips) and the batch job's images (built by Cloud Build).
resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:Holds images built from this public source tree, nothing confidential: Google-managed encryption; a KMS key would add cost and a failure mode, not protection.
  project       = var.project_id
  location      = var.region
  repository_id = var.name_prefix
  description   = "imgclassify images: function builds and the batch job (batch-base:latest is the build cache)"
  format        = "DOCKER"
  labels        = local.labels

  # Builds pile up: delete images older than 30 days, but always keep each image's 10 newest
  # versions (KEEP wins over DELETE), so no running revision ever loses its image.
  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 10
    }
  }
  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "2592000s"
    }
  }

  depends_on = [google_project_service.apis]
}
