# Every input of the stack. Only project_id and weights_bucket have no default.

locals {
  # Cloud Run's vCPU and memory table (https://cloud.google.com/run/docs/configuring/jobs/cpu,
  # .../services/memory-limits): vCPUs above 1 must be 2, 4, 6 or 8, and each count takes a
  # memory range in MiB. Gen2 functions and the batch job are Cloud Run services and jobs, so
  # the validations below check every size against it at plan time, not at deploy time.
  cloud_run_memory_mb = {
    "1" = [128, 4096]
    "2" = [128, 8192]
    "4" = [2048, 16384]
    "6" = [4096, 24576]
    "8" = [4096, 32768]
  }
  cloud_run_sizes = join(", ", [for cpu, range in local.cloud_run_memory_mb : "cpu ${cpu} with memory_mb ${range[0]}-${range[1]}"])
}

# --- Project and placement -------------------------------------------------------------

variable "project_id" {
  description = "Google Cloud project that holds the whole stack."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID (6-30 lowercase letters, digits and hyphens), not a name or number."
  }
}

variable "region" {
  description = "Region of the functions, the batch job, the image repository and (by default) the buckets and the gateway."
  type        = string
  default     = "europe-west1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a region name such as europe-west1."
  }
}

variable "gateway_region" {
  description = "Region of the API Gateway gateway, if API Gateway is not offered in var.region (null: var.region)."
  type        = string
  default     = null

  validation {
    condition     = var.gateway_region == null || can(regex("^[a-z]+-[a-z]+[0-9]+$", coalesce(var.gateway_region, "x")))
    error_message = "gateway_region must be null or a region name such as europe-west1."
  }
}

variable "storage_location" {
  description = "Location of the buckets this stack creates (null: var.region, which keeps weight downloads in-region)."
  type        = string
  default     = null
}

variable "name_prefix" {
  description = "Prefix of every cloud resource name (functions, service accounts, gateway), so two stacks can share a project."
  type        = string
  default     = "imgclassify"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,10}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 3-12 lowercase letters, digits or hyphens, starting with a letter (service account IDs are at most 30 characters)."
  }
}

variable "labels" {
  description = "Labels added to every resource that takes labels."
  type        = map(string)
  default     = {}
}

# --- Buckets --------------------------------------------------------------------------

variable "weights_bucket" {
  description = "Bucket the models are published to (MODEL_STORE=gs://weights_bucket). Created here unless create_weights_bucket is false."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", var.weights_bucket))
    error_message = "weights_bucket must be a bucket name (3-63 lowercase letters, digits, dots, hyphens, underscores)."
  }
}

variable "create_weights_bucket" {
  description = "Create the weights bucket here (true), or use one that already exists with models in it (false)."
  type        = bool
  default     = true
}

variable "sources_bucket" {
  description = "Bucket for the functions' source zips (null: PROJECT-PREFIX-sources)."
  type        = string
  default     = null

  validation {
    condition     = var.sources_bucket == null || can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", coalesce(var.sources_bucket, "x")))
    error_message = "sources_bucket must be null or a bucket name."
  }
}

variable "site_bucket" {
  description = "Bucket that hosts the web page (null: PROJECT-PREFIX-site)."
  type        = string
  default     = null

  validation {
    condition     = var.site_bucket == null || can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", coalesce(var.site_bucket, "x")))
    error_message = "site_bucket must be null or a bucket name."
  }
}

variable "storage_data_access_logs" {
  description = "Turn on Cloud Storage data-access audit logs (DATA_READ, DATA_WRITE) for the whole project: every object read is a billed log entry (each model download by every instance, every batch image), and the setting is authoritative for storage.googleapis.com in the project. Off by default; docs/deploy.md gives the cost."
  type        = bool
  default     = false
}

variable "site_public_read" {
  description = "Grant allUsers read on the site bucket's objects so the page is reachable. Turn off where an organisation policy forbids public principals, and serve the bucket your own way."
  type        = bool
  default     = true
}

variable "function_bundle_dir" {
  description = "Directory holding classify.zip and list_models.zip from scripts/build_bundles.py (null: build/functions in the repository)."
  type        = string
  default     = null
}

# --- Functions ------------------------------------------------------------------------

variable "classify" {
  description = "The classify function: memory, vCPUs, concurrent requests per instance, instance range, request timeout, startup CPU boost, and environment variables added to (or overriding) the computed ones."
  type = object({
    memory_mb         = optional(number, 4096)
    cpu               = optional(number, 2)
    concurrency       = optional(number, 4)
    min_instances     = optional(number, 0)
    max_instances     = optional(number, 20)
    timeout_seconds   = optional(number, 120)
    startup_cpu_boost = optional(bool, true)
    environment       = optional(map(string), {})
  })
  default = {}

  validation {
    condition = (
      contains(keys(local.cloud_run_memory_mb), tostring(var.classify.cpu))
      && var.classify.memory_mb >= max(512, lookup(local.cloud_run_memory_mb, tostring(var.classify.cpu), [1, 0])[0])
      && var.classify.memory_mb <= lookup(local.cloud_run_memory_mb, tostring(var.classify.cpu), [1, 0])[1]
    )
    error_message = "classify: Cloud Run allows ${local.cloud_run_sizes} (and this function needs at least 512 MiB); got cpu = ${var.classify.cpu}, memory_mb = ${var.classify.memory_mb}."
  }

  validation {
    condition = (
      var.classify.concurrency >= 1 && var.classify.concurrency <= 1000
      && var.classify.min_instances >= 0 && var.classify.max_instances >= max(1, var.classify.min_instances)
      && var.classify.timeout_seconds >= 10 && var.classify.timeout_seconds <= 3600
      && alltrue([for key in keys(var.classify.environment) : can(regex("^[A-Z][A-Z0-9_]*$", key))])
    )
    error_message = "classify: concurrency 1-1000, 0 <= min_instances <= max_instances (>= 1), timeout_seconds 10-3600, environment names in UPPER_SNAKE_CASE."
  }
}

variable "list_models" {
  description = "The list_models function (same fields as var.classify). It never loads a model, so it is small and serves many requests at once."
  type = object({
    memory_mb         = optional(number, 512)
    cpu               = optional(number, 1)
    concurrency       = optional(number, 40)
    min_instances     = optional(number, 0)
    max_instances     = optional(number, 10)
    timeout_seconds   = optional(number, 30)
    startup_cpu_boost = optional(bool, true)
    environment       = optional(map(string), {})
  })
  default = {}

  validation {
    condition = (
      contains(keys(local.cloud_run_memory_mb), tostring(var.list_models.cpu))
      && var.list_models.memory_mb >= max(256, lookup(local.cloud_run_memory_mb, tostring(var.list_models.cpu), [1, 0])[0])
      && var.list_models.memory_mb <= lookup(local.cloud_run_memory_mb, tostring(var.list_models.cpu), [1, 0])[1]
    )
    error_message = "list_models: Cloud Run allows ${local.cloud_run_sizes} (and this function needs at least 256 MiB); got cpu = ${var.list_models.cpu}, memory_mb = ${var.list_models.memory_mb}."
  }

  validation {
    condition = (
      var.list_models.concurrency >= 1 && var.list_models.concurrency <= 1000
      && var.list_models.min_instances >= 0 && var.list_models.max_instances >= max(1, var.list_models.min_instances)
      && var.list_models.timeout_seconds >= 5 && var.list_models.timeout_seconds <= 3600
      && alltrue([for key in keys(var.list_models.environment) : can(regex("^[A-Z][A-Z0-9_]*$", key))])
    )
    error_message = "list_models: concurrency 1-1000, 0 <= min_instances <= max_instances (>= 1), timeout_seconds 5-3600, environment names in UPPER_SNAKE_CASE."
  }
}

variable "dedicated_classify" {
  description = "Heavy models that get a classify deployment of their own, keyed by model name: the gateway routes POST /v1/models/NAME:classify there instead of to the shared classify function. Fields as in var.classify."
  type = map(object({
    memory_mb         = optional(number, 8192)
    cpu               = optional(number, 4)
    concurrency       = optional(number, 4)
    min_instances     = optional(number, 0)
    max_instances     = optional(number, 10)
    timeout_seconds   = optional(number, 300)
    startup_cpu_boost = optional(bool, true)
    environment       = optional(map(string), {})
  }))
  default = {}

  validation {
    condition     = alltrue([for name in keys(var.dedicated_classify) : can(regex("^[a-z0-9][a-z0-9_.-]{0,23}$", name))])
    error_message = "dedicated_classify keys must be published model names of at most 24 characters (lowercase letters, digits, '_', '.', '-')."
  }

  validation {
    condition     = length(distinct([for name in keys(var.dedicated_classify) : replace(name, "/[_.]/", "-")])) == length(var.dedicated_classify)
    error_message = "dedicated_classify keys must stay distinct once '_' and '.' become '-' (their function names)."
  }

  validation {
    condition = alltrue([for settings in values(var.dedicated_classify) : (
      contains(keys(local.cloud_run_memory_mb), tostring(settings.cpu))
      && settings.memory_mb >= max(512, lookup(local.cloud_run_memory_mb, tostring(settings.cpu), [1, 0])[0])
      && settings.memory_mb <= lookup(local.cloud_run_memory_mb, tostring(settings.cpu), [1, 0])[1]
    )])
    error_message = "dedicated_classify: Cloud Run allows ${local.cloud_run_sizes} (and classify needs at least 512 MiB); got ${join(", ", [for name, settings in var.dedicated_classify : "${name}: cpu = ${settings.cpu}, memory_mb = ${settings.memory_mb}"])}."
  }

  validation {
    condition = alltrue([for settings in values(var.dedicated_classify) : (
      settings.concurrency >= 1 && settings.concurrency <= 1000
      && settings.min_instances >= 0 && settings.max_instances >= max(1, settings.min_instances)
      && settings.timeout_seconds >= 10 && settings.timeout_seconds <= 3600
      && alltrue([for key in keys(settings.environment) : can(regex("^[A-Z][A-Z0-9_]*$", key))])
    )])
    error_message = "dedicated_classify: same limits as var.classify (concurrency 1-1000, 0 <= min_instances <= max_instances (>= 1), timeout_seconds 10-3600, environment names in UPPER_SNAKE_CASE)."
  }
}

variable "cors_allowed_origins" {
  description = "Origins allowed to call the API from a browser (CORS_ALLOWED_ORIGINS). Empty: the site's own origin only."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for origin in var.cors_allowed_origins : origin == "*" || can(regex("^https?://[^/]+$", origin))])
    error_message = "cors_allowed_origins must be origins such as https://app.example.com (no path), or \"*\"."
  }
}

variable "allowed_gcs_buckets" {
  description = "Buckets that gcs_uri inputs may name (ALLOWED_GCS_BUCKETS). The classify service account is granted read on each, so each must exist."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for bucket in var.allowed_gcs_buckets : can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", bucket))])
    error_message = "allowed_gcs_buckets must be bucket names (no gs:// prefix, no path)."
  }
}

# --- Gateway, key and quotas ----------------------------------------------------------

variable "classify_requests_per_minute" {
  description = "Quota: classify requests (both classify routes together) per minute per consumer project."
  type        = number
  default     = 120

  validation {
    condition     = var.classify_requests_per_minute >= 1 && floor(var.classify_requests_per_minute) == var.classify_requests_per_minute
    error_message = "classify_requests_per_minute must be a whole number >= 1."
  }
}

variable "list_models_requests_per_minute" {
  description = "Quota: list_models requests (both model routes together) per minute per consumer project."
  type        = number
  default     = 600

  validation {
    condition     = var.list_models_requests_per_minute >= 1 && floor(var.list_models_requests_per_minute) == var.list_models_requests_per_minute
    error_message = "list_models_requests_per_minute must be a whole number >= 1."
  }
}

variable "api_key_allowed_referrers" {
  description = "HTTP referrers the web API key works from; it is always restricted to this API too. Default (null): the page's origin, https://storage.googleapis.com/* (the page sends only its origin as Referer: strict-origin-when-cross-origin). [] lifts the restriction."
  type        = list(string)
  default     = null
}

# --- Batch job ------------------------------------------------------------------------

variable "batch_image" {
  description = "Image of the batch job (batch/Dockerfile, pushed by Cloud Build). null: no job yet, as on the first apply before any image exists."
  type        = string
  default     = null
}

variable "batch_input_bucket" {
  description = "Bucket the batch job reads images from (read-only for its service account), granted once the job exists (batch_image). null: no input bucket access."
  type        = string
  default     = null

  validation {
    condition     = var.batch_input_bucket == null || can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", coalesce(var.batch_input_bucket, "x")))
    error_message = "batch_input_bucket must be null or a bucket name (no gs:// prefix, no path)."
  }
}

variable "batch_output_bucket" {
  description = "Bucket the batch job writes its JSONL results to, granted once the job exists (batch_image). null: no output bucket access."
  type        = string
  default     = null

  validation {
    condition     = var.batch_output_bucket == null || can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", coalesce(var.batch_output_bucket, "x")))
    error_message = "batch_output_bucket must be null or a bucket name (no gs:// prefix, no path)."
  }
}

variable "batch_args" {
  description = "Arguments of the batch job's container, e.g. [\"gs://in/photos/\", \"gs://out/results/\", \"--model\", \"efficientnet_lite0\"]; each execution may override them."
  type        = list(string)
  default     = []
}

variable "batch_parallelism" {
  description = "Batch tasks running at once."
  type        = number
  default     = 4

  validation {
    condition     = var.batch_parallelism >= 1 && var.batch_parallelism <= 100
    error_message = "batch_parallelism must be 1-100."
  }
}

variable "batch_task_count" {
  description = "Tasks per batch execution; the job shards its input across them (CLOUD_RUN_TASK_INDEX / CLOUD_RUN_TASK_COUNT)."
  type        = number
  default     = 4

  validation {
    condition     = var.batch_task_count >= 1 && var.batch_task_count <= 10000
    error_message = "batch_task_count must be 1-10000."
  }
}

variable "batch_timeout_seconds" {
  description = "Time limit of one batch task."
  type        = number
  default     = 3600

  validation {
    condition     = var.batch_timeout_seconds >= 60 && var.batch_timeout_seconds <= 86400
    error_message = "batch_timeout_seconds must be 60-86400."
  }
}

variable "batch_max_retries" {
  description = "Retries of a failed batch task."
  type        = number
  default     = 1

  validation {
    condition     = var.batch_max_retries >= 0 && var.batch_max_retries <= 10
    error_message = "batch_max_retries must be 0-10."
  }
}

variable "batch_cpu" {
  description = "vCPUs of one batch task (Cloud Run: 1, 2, 4, 6 or 8, each with its memory range; see batch_memory_mb)."
  type        = number
  default     = 4

  validation {
    condition     = contains(keys(local.cloud_run_memory_mb), tostring(var.batch_cpu))
    error_message = "batch_cpu must be 1, 2, 4, 6 or 8 (Cloud Run allows ${local.cloud_run_sizes}); got ${var.batch_cpu}."
  }
}

variable "batch_memory_mb" {
  description = "Memory of one batch task, in MiB; Cloud Run bounds it by batch_cpu."
  type        = number
  default     = 8192

  validation {
    condition = (
      var.batch_memory_mb >= max(1024, lookup(local.cloud_run_memory_mb, tostring(var.batch_cpu), [1, 0])[0])
      && var.batch_memory_mb <= lookup(local.cloud_run_memory_mb, tostring(var.batch_cpu), [1, 0])[1]
    )
    error_message = "batch_memory_mb: Cloud Run allows ${local.cloud_run_sizes} (and the job needs at least 1024 MiB); got batch_cpu = ${var.batch_cpu}, batch_memory_mb = ${var.batch_memory_mb}."
  }
}

# --- Monitoring (monitoring.tf) ---------------------------------------------------------

variable "alert_notification_channels" {
  description = "Cloud Monitoring notification channels (projects/PROJECT/notificationChannels/ID) the alert policies notify. Empty: incidents show in the console only."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for channel in var.alert_notification_channels : can(regex("^projects/[^/]+/notificationChannels/[0-9]+$", channel))])
    error_message = "alert_notification_channels must be channel names such as projects/my-project/notificationChannels/1234567890."
  }
}

variable "alert_5xx_ratio" {
  description = "Alert when more than this fraction of a function's responses are 5xx over 5 minutes, for 5 minutes."
  type        = number
  default     = 0.02

  validation {
    condition     = var.alert_5xx_ratio > 0 && var.alert_5xx_ratio < 1
    error_message = "alert_5xx_ratio must be a fraction between 0 and 1 (0.02 = 2 %)."
  }
}

variable "alert_p99_latency_ms" {
  description = "Alert when a function's p99 request latency over 5 minutes stays above this many milliseconds for 10 minutes."
  type        = number
  default     = 3000

  validation {
    condition     = var.alert_p99_latency_ms >= 100
    error_message = "alert_p99_latency_ms must be at least 100."
  }
}

variable "deployer_email" {
  description = "Email of the deployer account Cloud Build runs as (docs/deploy.md step 2). When set, it may act as the stack's own service accounts and manage the stack's buckets, and nothing wider; null: no grants (an Owner applies)."
  type        = string
  default     = null

  validation {
    condition     = var.deployer_email == null || can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z][a-z0-9-]+\\.iam\\.gserviceaccount\\.com$", var.deployer_email))
    error_message = "deployer_email must be a service account's email, NAME@PROJECT.iam.gserviceaccount.com."
  }
}
