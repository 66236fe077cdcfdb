#!/usr/bin/env bash
# Delete a TPU VM slice. See tpu/README.md.

usage() {
  cat <<'EOF'
usage: tpu/teardown.sh NAME --zone=ZONE [--async] [--project=PROJECT] [--dry-run]

Deletes the slice NAME without asking (`gcloud compute tpus tpu-vm delete NAME --quiet`):
everything on the workers' disks goes with it (the checkout, copied models and data, the
workers' logs); the workdir on a mounted bucket or share (checkpoints, metrics) stays. To stop a run with a last
checkpoint first: tpu/launch.sh NAME --zone=ZONE --stop.

  --async            return at once instead of waiting for the deletion
  --project=PROJECT  a project other than gcloud's configured one (or TPU_PROJECT)
  --dry-run          print the gcloud command instead of running it (also DRY_RUN=1)
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ASYNC=()

while [[ $# -gt 0 ]]; do
  if [[ $1 == --async ]]; then
    ASYNC=(--async)
    OPTSHIFT=1
  elif ! parse_common "$@"; then
    usage_error "unknown option: $1"
  fi
  shift "$OPTSHIFT"
done

require_slice
tpu_vm delete --quiet ${ASYNC[@]+"${ASYNC[@]}"}
