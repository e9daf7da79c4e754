# Log-based metrics from the lines the functions write (monitoring.tf turns them into
# google_logging_metric resources, a dashboard and alerts). Only locals live here, depending
# on nothing but var.name_prefix, so tests/infra/ evaluates this very file with
# `terraform console` and matches every filter and extractor against real log lines.
#
# Where the fields come from: imgclassify/serving/http.py logs one JSON line per request, and
# imgclassify/logs.py formats every line. A gen2 function is a Cloud Run service of the same
# name, whose stdout lines become entries with resource.type "cloud_run_revision"; in a JSON
# line, "severity", "httpRequest" and "logging.googleapis.com/trace" become the entry's own
# severity, httpRequest and trace, and every other key stays under jsonPayload.

locals {
  function_log_filter = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^${var.name_prefix}-(classify|list-models)\""
  request_log_filter  = "${local.function_log_filter} AND jsonPayload.logger=\"imgclassify.requests\""

  # Milliseconds from 5 ms to about 6 minutes, each bucket 25 % wider than the last.
  latency_buckets_ms = { scale = 5, growth_factor = 1.25, num_finite_buckets = 50 }

  log_metrics = {
    # Every response, by status, status class (the 5xx alert), error code and model.
    requests = {
      name         = "${var.name_prefix}/requests"
      display_name = "${var.name_prefix} requests"
      description  = "Responses of the imgclassify functions, one per request line (imgclassify/serving/http.py)."
      filter       = local.request_log_filter
      value_type   = "INT64"
      unit         = "1"
      value        = null
      buckets      = null
      labels = {
        status       = { extractor = "EXTRACT(httpRequest.status)", description = "HTTP status" }
        status_class = { extractor = "REGEXP_EXTRACT(httpRequest.status, \"^([1-5])[0-9][0-9]$\")", description = "first digit of the status: 2, 4 or 5" }
        error_code   = { extractor = "EXTRACT(jsonPayload.error)", description = "error code of the JSON error body, empty on success" }
        model        = { extractor = "EXTRACT(jsonPayload.model)", description = "model that answered a classify request" }
      }
    }

    # Server-side latency of every request but CORS preflights (the p99 alert).
    request_latency = {
      name         = "${var.name_prefix}/request_latency"
      display_name = "${var.name_prefix} request latency"
      description  = "Time from request to response inside the function, in ms (latency_ms of the request line); preflights excluded."
      filter       = "${local.request_log_filter} AND httpRequest.requestMethod!=\"OPTIONS\""
      value_type   = "DISTRIBUTION"
      unit         = "ms"
      value        = "EXTRACT(jsonPayload.latency_ms)"
      buckets      = local.latency_buckets_ms
      labels = {
        status_class = { extractor = "REGEXP_EXTRACT(httpRequest.status, \"^([1-5])[0-9][0-9]$\")", description = "first digit of the status" }
      }
    }

    # One "ready" line per instance start (imgclassify/serving/bootstrap.py): the count is the cold
    # starts, the value how long the process took to be ready.
    cold_starts = {
      name         = "${var.name_prefix}/cold_starts"
      display_name = "${var.name_prefix} cold starts"
      description  = "Instance starts of the functions, valued by the ms from process start to ready (startup_ms.process_age)."
      filter       = "${local.function_log_filter} AND jsonPayload.logger=\"imgclassify.serving.bootstrap\" AND jsonPayload.startup_ms.process_age>=0"
      value_type   = "DISTRIBUTION"
      unit         = "ms"
      value        = "EXTRACT(jsonPayload.startup_ms.process_age)"
      buckets      = local.latency_buckets_ms
      labels       = {}
    }

    # One line per model loaded into an instance's cache (imgclassify/runtime/cache.py), with its time.
    model_loads = {
      name         = "${var.name_prefix}/model_loads"
      display_name = "${var.name_prefix} model loads"
      description  = "Models loaded into a function's warm cache, valued by the load time in ms."
      filter       = "${local.function_log_filter} AND jsonPayload.logger=\"imgclassify.runtime.cache\" AND jsonPayload.message=~\"^loaded \""
      value_type   = "DISTRIBUTION"
      unit         = "ms"
      value        = "REGEXP_EXTRACT(jsonPayload.message, \"in ([0-9]+) ms\")"
      buckets      = local.latency_buckets_ms
      labels = {
        model = { extractor = "REGEXP_EXTRACT(jsonPayload.message, \"^loaded [(]'([^']+)'\")", description = "model name" }
      }
    }
  }
}
