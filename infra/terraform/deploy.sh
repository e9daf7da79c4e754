#!/usr/bin/env bash
# Apply infra/terraform with the settings kept next to its state, and only those:
#
#   gs://STATE_BUCKET/PREFIX/terraform.tfvars   the operator's settings (required)
#   gs://STATE_BUCKET/PREFIX/build.tfvars       batch_image, written by Cloud Build (optional)
#
# Cloud Build's deploy step and an operator at a terminal both run this script, so both apply
# the same settings by construction: there is no second copy for either to drift from, and a
# hand-run apply keeps the batch image the last build deployed.
#
#   infra/terraform/deploy.sh STATE_BUCKET [PREFIX] [terraform apply options...]
#   e.g. infra/terraform/deploy.sh my-project-imgclassify-tfstate
#        infra/terraform/deploy.sh my-project-imgclassify-tfstate imgclassify -auto-approve
#
# It builds the function bundles from this checkout first (scripts/build_bundles.py), so what
# deploys is always the tree the script runs from; with MODEL_STORE set (Cloud Build sets it),
# classify's carries a verified snapshot of the model it serves by default, and each dedicated
# model's deployment a bundle with a snapshot of its own. Needs gcloud, terraform and Python 3.11.
set -euo pipefail

if [ $# -lt 1 ] || [[ $1 == -* ]]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
state_bucket=$1
shift
prefix=imgclassify
if [ $# -gt 0 ] && [[ $1 != -* ]]; then
  prefix=$1
  shift
fi

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

# Terraform would also read these, on this machine only: the settings must have one home.
for local_settings in "$here"/terraform.tfvars "$here"/terraform.tfvars.json "$here"/*.auto.tfvars "$here"/*.auto.tfvars.json; do
  if [ -e "$local_settings" ]; then
    echo "deploy.sh: $local_settings would be applied from this machine only." >&2
    echo "  Upload it (gcloud storage cp $local_settings gs://$state_bucket/$prefix/terraform.tfvars), then remove or rename it." >&2
    exit 2
  fi
done

settings_dir=$(mktemp -d)
trap 'rm -rf "$settings_dir"' EXIT
settings_uri="gs://$state_bucket/$prefix/terraform.tfvars"
if ! gcloud storage cp --quiet "$settings_uri" "$settings_dir/terraform.tfvars"; then
  echo "deploy.sh: could not read $settings_uri. Upload your settings there first (docs/deploy.md, step 3):" >&2
  echo "  gcloud storage cp my.tfvars $settings_uri" >&2
  exit 1
fi
var_files=(-var-file="$settings_dir/terraform.tfvars")
build_uri="gs://$state_bucket/$prefix/build.tfvars"
if gcloud storage ls "$build_uri" >/dev/null 2>&1; then
  gcloud storage cp --quiet "$build_uri" "$settings_dir/build.tfvars"
  var_files+=(-var-file="$settings_dir/build.tfvars")
fi

# The settings choose what the snapshots hold: classify's DEFAULT_MODEL, the dedicated models.
python3 "$repo/scripts/build_bundles.py" --terraform-vars "$settings_dir/terraform.tfvars"

cd "$here"
terraform init -input=false -backend-config="bucket=$state_bucket" -backend-config="prefix=$prefix"
terraform apply -input=false -lock-timeout=30m "${var_files[@]}" "$@"
