# Terraform and provider versions. API Gateway resources exist only in google-beta.
terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.20"
    }
    google-beta = {
      source  = "hashicorp/google-beta"
      version = "~> 6.20"
    }
  }

  # State lives in a bucket you create once (docs/deploy.md); the lock it takes also
  # serialises concurrent applies, and with them API Gateway config changes.
  #   terraform init -backend-config="bucket=STATE_BUCKET" -backend-config="prefix=imgclassify"
  backend "gcs" {}
}
