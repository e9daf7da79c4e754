# Both providers bill and quota-check against the target project, so user credentials work
# for the APIs that insist on a quota project (API keys, API Gateway).
provider "google" {
  project               = var.project_id
  region                = var.region
  user_project_override = true
  billing_project       = var.project_id
}

provider "google-beta" {
  project               = var.project_id
  region                = var.region
  user_project_override = true
  billing_project       = var.project_id
}
