# Buckets: model weights, function sources, the web page; and the uploaded source zips.

# Published models (models/catalog.json, models/NAME/VERSION/...). Private, versioned: a
# manifest or catalog overwritten by mistake can be restored from its previous generation.
resource "google_storage_bucket" "weights" {
  #checkov:skip=CKV_GCP_62:Reads and writes are recorded by Cloud Storage data-access audit logs when storage_data_access_logs is on (audit.tf; off by default for their cost); legacy usage-log objects would duplicate them.
  count = var.create_weights_bucket ? 1 : 0

  name                        = var.weights_bucket
  project                     = var.project_id
  location                    = local.storage_location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
  labels                      = local.labels

  versioning {
    enabled = true
  }

  # Versions exist for recovery, not for ever: drop overwritten generations after 30 days.
  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 30
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# Function source zips, named after their hash; only Terraform and the function builds read them.
resource "google_storage_bucket" "sources" {
  #checkov:skip=CKV_GCP_62:Reads and writes are recorded by Cloud Storage data-access audit logs when storage_data_access_logs is on (audit.tf; off by default for their cost); legacy usage-log objects would duplicate them.
  #checkov:skip=CKV_GCP_78:Objects are named after their sha256 and never overwritten, so there is no earlier version to keep.
  name                        = local.sources_bucket
  project                     = var.project_id
  location                    = local.storage_location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  labels                      = local.labels

  # Old zips are only history: the deployed functions keep their own copy of the build.
  lifecycle_rule {
    condition {
      age = 90
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# The web page, served straight from Cloud Storage at
# https://storage.googleapis.com/SITE_BUCKET/index.html: HTTPS with no domain, certificate or
# load balancer to pay for. The page is public by nature (HTML, JS, and a browser API key that
# only works against this API), so its objects are readable by anyone; nothing else is.
# With a domain, put an external Application Load Balancer with Cloud CDN in front instead.
resource "google_storage_bucket" "site" {
  #checkov:skip=CKV_GCP_62:Anonymous page views of a public static page are not worth a log bucket; uploads are in the audit logs (audit.tf).
  #checkov:skip=CKV_GCP_78:The page is uploaded from git on every deploy; git is its version history.
  #checkov:skip=CKV_GCP_114:The page must be publicly readable; enforced prevention would block its one public grant (iam.tf). Enforced when site_public_read is false.
  name                        = local.site_bucket
  project                     = var.project_id
  location                    = local.storage_location
  uniform_bucket_level_access = true
  public_access_prevention    = var.site_public_read ? "inherited" : "enforced"
  force_destroy               = true
  labels                      = local.labels

  website {
    main_page_suffix = "index.html"
  }

  depends_on = [google_project_service.apis]
}

locals {
  weights_bucket = var.create_weights_bucket ? google_storage_bucket.weights[0].name : var.weights_bucket
}

# One object per bundle, named after the zip's sha256: a code change gives a new name, which
# redeploys exactly the functions built from that bundle. scripts/build_bundles.py makes the
# zips byte-for-byte reproducible, so an unchanged tree never redeploys.
resource "google_storage_bucket_object" "function_source" {
  for_each = local.bundle_zips

  bucket       = google_storage_bucket.sources.name
  name         = "${each.key}/${fileexists(each.value) ? filesha256(each.value) : "missing"}.zip"
  source       = each.value
  content_type = "application/zip"

  lifecycle {
    precondition {
      condition     = fileexists(each.value)
      error_message = "${each.value} does not exist: build the bundles first (python scripts/build_bundles.py)."
    }
  }
}
