# API Gateway in front of the functions: routes, API keys, quotas, CORS preflight.

locals {
  # The spec is rendered from openapi.yaml.tftpl, whose routes tests/infra/ checks against
  # imgclassify/serving/routes.py (the table the functions and the local router follow).
  # Backends are the Cloud Run URLs of the functions (service_config.uri, not the
  # cloudfunctions.net url): with APPEND_PATH_TO_ADDRESS the function then receives the full
  # request path, /v1/..., which is what imgclassify/serving/http.py routes on.
  openapi_spec = templatefile("${path.module}/openapi.yaml.tftpl", {
    title = "${var.name_prefix} image classification"
    list_models = {
      address          = google_cloudfunctions2_function.function["list_models"].service_config[0].uri
      deadline_seconds = var.list_models.timeout_seconds
    }
    classify = {
      address          = google_cloudfunctions2_function.function["classify"].service_config[0].uri
      deadline_seconds = var.classify.timeout_seconds
    }
    dedicated = {
      for key, function in local.dedicated : function.model => {
        address          = google_cloudfunctions2_function.function[key].service_config[0].uri
        deadline_seconds = function.timeout_seconds
        operation_suffix = replace(function.model, "/[^A-Za-z0-9]/", "_")
      }
    }
    classify_requests_per_minute    = var.classify_requests_per_minute
    list_models_requests_per_minute = var.list_models_requests_per_minute
  })
}

resource "google_api_gateway_api" "main" {
  provider = google-beta

  project      = var.project_id
  api_id       = var.name_prefix
  display_name = "${var.name_prefix} API"
  labels       = local.labels

  depends_on = [google_project_service.apis]
}

# API configs are immutable: each spec change makes a new config, whose id carries the spec's
# hash, created before the old one is destroyed so the gateway always points at a live config.
resource "google_api_gateway_api_config" "main" {
  provider = google-beta

  project       = var.project_id
  api           = google_api_gateway_api.main.api_id
  api_config_id = "${var.name_prefix}-${substr(sha256(local.openapi_spec), 0, 12)}"
  display_name  = "${var.name_prefix} ${substr(sha256(local.openapi_spec), 0, 12)}"
  labels        = local.labels

  openapi_documents {
    document {
      path     = "openapi.yaml"
      contents = base64encode(local.openapi_spec)
    }
  }

  # The gateway signs its calls to the functions as this account (the only invoker, iam.tf).
  gateway_config {
    backend_config {
      google_service_account = google_service_account.gateway.email
    }
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "google_api_gateway_gateway" "main" {
  provider = google-beta

  project      = var.project_id
  region       = local.gateway_region
  gateway_id   = "${var.name_prefix}-gateway"
  display_name = "${var.name_prefix} gateway"
  api_config   = google_api_gateway_api_config.main.id
  labels       = local.labels
}

# API keys are checked against the API's own managed service, which must be enabled.
resource "google_project_service" "gateway_managed_service" {
  project            = var.project_id
  service            = google_api_gateway_api.main.managed_service
  disable_on_destroy = false

  depends_on = [google_api_gateway_gateway.main]
}

# A deleted key's name stays taken for 30 days: each key gets a random suffix, kept in state
# (ignore_changes), so a destroy and a new apply within that time create a new name.
resource "terraform_data" "api_key_suffix" {
  input = substr(replace(uuid(), "-", ""), 0, 8)

  lifecycle {
    ignore_changes = [input]
  }
}

# The key the web page sends as X-Api-Key: good for this API only, and from the page's
# referrers only (local.api_key_referrers). Quotas are counted per consumer project: the
# project that owns the key.
resource "google_apikeys_key" "web" {
  project      = var.project_id
  name         = "${var.name_prefix}-web-${terraform_data.api_key_suffix.output}"
  display_name = "${var.name_prefix} web page"

  restrictions {
    api_targets {
      service = google_api_gateway_api.main.managed_service
    }

    dynamic "browser_key_restrictions" {
      for_each = length(local.api_key_referrers) > 0 ? [local.api_key_referrers] : []
      content {
        allowed_referrers = browser_key_restrictions.value
      }
    }
  }

  depends_on = [google_project_service.gateway_managed_service]
}
