# Monitoring as code: the log-based metrics of log_metrics.tf, a dashboard of them
# (dashboard.json.tftpl), and alerts on the 5xx ratio and on p99 latency.

resource "google_logging_metric" "function" {
  for_each = local.log_metrics

  project         = var.project_id
  name            = each.value.name
  description     = each.value.description
  filter          = each.value.filter
  value_extractor = each.value.value
  label_extractors = {
    for key, label in each.value.labels : key => label.extractor
  }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = each.value.value_type
    unit         = each.value.unit
    display_name = each.value.display_name

    dynamic "labels" {
      for_each = each.value.labels
      content {
        key         = labels.key
        value_type  = "STRING"
        description = labels.value.description
      }
    }
  }

  dynamic "bucket_options" {
    for_each = each.value.buckets == null ? [] : [each.value.buckets]
    content {
      exponential_buckets {
        scale              = bucket_options.value.scale
        growth_factor      = bucket_options.value.growth_factor
        num_finite_buckets = bucket_options.value.num_finite_buckets
      }
    }
  }

  depends_on = [google_project_service.apis]
}

locals {
  # Metric types as Cloud Monitoring names them, for the dashboard and the alerts.
  log_metric_types = { for key, metric in google_logging_metric.function : key => "logging.googleapis.com/user/${metric.name}" }
  # Cloud Run's own metrics of the same services (requests no instance answered, instances, memory).
  run_service_filter = "resource.type=\"cloud_run_revision\" AND resource.label.service_name=monitoring.regex.full_match(\"${var.name_prefix}-(classify|list-models).*\")"
}

resource "google_monitoring_dashboard" "main" {
  project = var.project_id
  dashboard_json = templatefile("${path.module}/dashboard.json.tftpl", {
    title              = "${var.name_prefix} image classification"
    metrics            = local.log_metric_types
    run_service_filter = local.run_service_filter
  })
}

# A new log-based metric's descriptor can take a while to reach Cloud Monitoring, and an alert
# policy that names it before then fails with 404 "Cannot find metric(s)"
# (hashicorp/terraform-provider-google#11102). The alerts wait for this, which waits once per
# new metric.
resource "time_sleep" "log_metrics_settle" {
  create_duration = "120s"

  triggers = { for key, metric in google_logging_metric.function : key => metric.id }
}

resource "google_monitoring_alert_policy" "errors" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: 5xx ratio above ${var.alert_5xx_ratio * 100} %"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.alert_notification_channels

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      More than ${var.alert_5xx_ratio * 100} % of the responses of `$${resource.label.service_name}` were 5xx over 5 minutes.
      The dashboard "${var.name_prefix} image classification" shows error codes by count; the request lines are in Logs Explorer:
      `${local.request_log_filter} AND httpRequest.status>=500`.
      `STORAGE_UNAVAILABLE` is the weights bucket; `INTEGRITY_ERROR` a model file that does not match its checksum; `INTERNAL` a bug, with its stack trace logged.
    EOT
  }

  # Two views of the same ratio, per function: what the functions answered with (their own
  # request lines; error codes on the dashboard), and what Cloud Run answered with, which also
  # counts crashes, timeouts and requests no instance could take (they never reach a log line).
  dynamic "conditions" {
    for_each = {
      "5xx ratio of the functions' responses" = {
        all    = "metric.type=\"${local.log_metric_types.requests}\" AND resource.type=\"cloud_run_revision\""
        errors = "metric.label.status_class=\"5\""
      }
      "5xx ratio at Cloud Run" = {
        all    = "metric.type=\"run.googleapis.com/request_count\" AND ${local.run_service_filter}"
        errors = "metric.label.response_code_class=\"5xx\""
      }
    }
    content {
      display_name = conditions.key
      condition_threshold {
        filter             = "${conditions.value.all} AND ${conditions.value.errors}"
        denominator_filter = conditions.value.all
        comparison         = "COMPARISON_GT"
        threshold_value    = var.alert_5xx_ratio
        duration           = "300s"

        # A ratio needs the same alignment and grouping on both sides.
        aggregations {
          alignment_period     = "300s"
          per_series_aligner   = "ALIGN_DELTA"
          cross_series_reducer = "REDUCE_SUM"
          group_by_fields      = ["resource.label.service_name"]
        }
        denominator_aggregations {
          alignment_period     = "300s"
          per_series_aligner   = "ALIGN_DELTA"
          cross_series_reducer = "REDUCE_SUM"
          group_by_fields      = ["resource.label.service_name"]
        }
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  depends_on = [time_sleep.log_metrics_settle]
}

resource "google_monitoring_alert_policy" "latency" {
  project               = var.project_id
  display_name          = "${var.name_prefix}: p99 latency above ${var.alert_p99_latency_ms} ms"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.alert_notification_channels

  documentation {
    mime_type = "text/markdown"
    content   = <<-EOT
      The p99 latency of `$${resource.label.service_name}` (inside the function, preflights excluded) stayed above ${var.alert_p99_latency_ms} ms for 10 minutes.
      Check the dashboard "${var.name_prefix} image classification": model loads (a cache too small for the models in use loads them again and again), cold starts, instances at their maximum, memory.
    EOT
  }

  conditions {
    display_name = "p99 request latency"
    condition_threshold {
      filter          = "metric.type=\"${local.log_metric_types.request_latency}\" AND resource.type=\"cloud_run_revision\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_p99_latency_ms
      duration        = "600s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_PERCENTILE_99"
        group_by_fields      = ["resource.label.service_name"]
      }
    }
  }

  alert_strategy {
    auto_close = "1800s"
  }

  depends_on = [time_sleep.log_metrics_settle]
}
