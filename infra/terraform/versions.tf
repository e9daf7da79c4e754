# Terraform and provider versions. API Gateway resources exist only in google-beta.
#
# Providers are pinned to exact releases, so a laptop and Cloud Build resolve the same code;
# .terraform.lock.hcl, once produced where providers download and committed, adds their
# checksums for every platform that applies the stack. Upgrading is a deliberate change: edit the versions here, then regenerate the lock
# file as docs/deploy.md ("Provider versions and the lock file") shows.
terraform {
  # 1.9: variable validations may refer to other variables and locals (variables.tf).
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "6.50.0"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "6.50.0"
    }
    # time_sleep: IAM grants settle before the function builds use them (iam.tf), and new
    # log-based metrics before alert policies refer to them (monitoring.tf).
    time = {
      source  = "hashicorp/time"
      version = "0.13.1"
    }
  }

  # State lives in a bucket you create once (docs/deploy.md); the lock it takes also
  # serialises concurrent applies, and with them API Gateway config changes. The settings
  # (terraform.tfvars) live next to the state: infra/terraform/deploy.sh fetches them.
  backend "gcs" {}
}
