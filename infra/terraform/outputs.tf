# What the deploy needs next (config.js, uploads, curl) and what an operator looks up.

output "gateway_url" {
  description = "Base URL of the API (https://HOST, no trailing slash); the routes are under /v1/."
  value       = "https://${google_api_gateway_gateway.main.default_hostname}"
}

output "api_key" {
  description = "The web page's API key, restricted to this API. Send it in the X-Api-Key header, the only place the gateway spec takes a key from."
  value       = google_apikeys_key.web.key_string
  sensitive   = true
}

output "site_url" {
  description = "URL of the web page."
  value       = local.site_url
}

output "cors_allowed_origins" {
  description = "Origins the functions answer CORS requests from (CORS_ALLOWED_ORIGINS): the page's origin unless cors_allowed_origins says otherwise. The smoke check sends its preflight from the first."
  value       = local.cors_origins
}

output "site_bucket" {
  description = "Bucket the web/ directory is uploaded to."
  value       = google_storage_bucket.site.name
}

output "weights_bucket" {
  description = "Bucket the models are published to (MODEL_STORE)."
  value       = local.weights_bucket
}

output "sources_bucket" {
  description = "Bucket of the functions' source zips."
  value       = google_storage_bucket.sources.name
}

output "function_uris" {
  description = "Cloud Run URL of every function deployment (private: only the gateway may call them)."
  value       = { for key, function in google_cloudfunctions2_function.function : key => function.service_config[0].uri }
}

output "dedicated_routes" {
  description = "Model name => the gateway path routed to its dedicated classify deployment."
  value       = { for key, function in local.dedicated : function.model => "/v1/models/${function.model}:classify" }
}

output "service_accounts" {
  description = "Email of each service account the stack created."
  value = {
    classify    = google_service_account.classify.email
    list_models = google_service_account.list_models.email
    gateway     = google_service_account.gateway.email
    builder     = google_service_account.builder.email
    batch       = google_service_account.batch.email
  }
}

output "api_managed_service" {
  description = "The API's managed service name (API key restriction target, quota page in the console)."
  value       = google_api_gateway_api.main.managed_service
}

output "api_config_id" {
  description = "The API config the gateway serves (changes with every spec change)."
  value       = google_api_gateway_api_config.main.api_config_id
}

output "image_repository" {
  description = "Docker repository for the batch image and the function builds (REGION-docker.pkg.dev/PROJECT/REPO)."
  value       = "${google_artifact_registry_repository.images.location}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "batch_job" {
  description = "Name of the batch Cloud Run job (null until batch_image is set)."
  value       = one(google_cloud_run_v2_job.batch[*].name)
}
