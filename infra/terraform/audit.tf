# Cloud Storage data-access audit logs: who read or wrote which object, for every bucket in the
# project (the weights above all). This is the access record the buckets rely on instead of
# legacy usage-log objects. Anonymous reads of the public page are not logged (nothing to audit).
resource "google_project_iam_audit_config" "storage" {
  count = var.storage_data_access_logs ? 1 : 0

  project = var.project_id
  service = "storage.googleapis.com"

  audit_log_config {
    log_type = "DATA_READ"
  }
  audit_log_config {
    log_type = "DATA_WRITE"
  }
}
