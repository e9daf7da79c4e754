# Names, shared settings and the APIs the stack needs.

locals {
  gateway_region   = coalesce(var.gateway_region, var.region)
  storage_location = coalesce(var.storage_location, var.region)
  sources_bucket   = coalesce(var.sources_bucket, "${var.project_id}-${var.name_prefix}-sources")
  site_bucket      = coalesce(var.site_bucket, "${var.project_id}-${var.name_prefix}-site")
  bundle_dir       = coalesce(var.function_bundle_dir, "${path.module}/../../build/functions")
  labels           = merge({ app = var.name_prefix, managed-by = "terraform" }, var.labels)

  # The page is served from storage.googleapis.com (see storage.tf), so that is its origin.
  site_origin = "https://storage.googleapis.com"
  site_url    = "${local.site_origin}/${local.site_bucket}/index.html"
  # The page sends its origin as Referer (strict-origin-when-cross-origin), never its path.
  api_key_referrers = var.api_key_allowed_referrers == null ? ["${local.site_origin}/*"] : var.api_key_allowed_referrers
  cors_origins      = length(var.cors_allowed_origins) > 0 ? var.cors_allowed_origins : [local.site_origin]

  # Every function deployment, shared and dedicated, in one map: key => settings.
  # Dedicated classify deployments run the classify code with their model as the default,
  # preloaded at start-up, behind the literal gateway path /v1/models/NAME:classify. Their
  # bundle is classify-NAME where the build made one (the classify bundle with a snapshot of
  # NAME: scripts/build_bundles.py --terraform-vars, as deploy.sh runs it), else classify's.
  dedicated = {
    for model, settings in var.dedicated_classify : "classify_${replace(model, "/[-.]/", "_")}" => merge(settings, {
      entry_point = "classify"
      bundle      = fileexists("${local.bundle_dir}/classify-${model}.zip") ? "classify-${model}" : "classify"
      name        = "${var.name_prefix}-classify-${replace(model, "/[_.]/", "-")}"
      model       = model
    })
  }
  functions = merge(
    {
      classify    = merge(var.classify, { entry_point = "classify", bundle = "classify", name = "${var.name_prefix}-classify", model = null })
      list_models = merge(var.list_models, { entry_point = "list_models", bundle = "list_models", name = "${var.name_prefix}-list-models", model = null })
    },
    local.dedicated,
  )
  # The zip of each bundle a deployment runs (storage.tf uploads them).
  bundle_zips = {
    for bundle in distinct([for function in values(local.functions) : function.bundle]) :
    bundle => "${local.bundle_dir}/${bundle}.zip"
  }
}

resource "google_project_service" "apis" {
  for_each = toset([
    "apigateway.googleapis.com",
    "apikeys.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "run.googleapis.com",
    "servicecontrol.googleapis.com",
    "servicemanagement.googleapis.com",
    "storage.googleapis.com",
  ])

  project = var.project_id
  service = each.value
  # Other stacks in the project may use the same APIs: never switch them off on destroy.
  disable_on_destroy = false
}
