#!/usr/bin/env bash
# Create a TPU VM slice (one host or a pod slice) for rl-jax. See tpu/README.md.

usage() {
  cat <<'EOF'
usage: tpu/create.sh NAME --zone=ZONE --accelerator-type=TYPE [--version=RUNTIME]
                     [--spot | --preemptible] [--project=PROJECT] [--dry-run] [-- GCLOUD_ARGS...]

Creates the TPU VM slice NAME:
  gcloud compute tpus tpu-vm create NAME --zone=ZONE --accelerator-type=TYPE --version=RUNTIME

  NAME                 the slice's name (or --name=NAME, or TPU_NAME)
  --zone=ZONE          e.g. us-central2-b (v4), us-west4-a or us-east5-b (v5e) (or TPU_ZONE)
  --accelerator-type   e.g. v4-8, v4-32 (16 chips), v5litepod-16 (v5e, 16 chips), v5p-8, v6e-16
  --version=RUNTIME    the TPU VM image; default by generation: tpu-ubuntu2204-base (v2, v3,
                       v4), v2-alpha-tpuv5-lite (v5litepod), v2-alpha-tpuv5 (v5p),
                       v2-alpha-tpuv6e (v6e)
  --spot               Spot VMs: much cheaper, can be preempted at any time (see "Resuming
                       after preemption" in tpu/README.md)
  --preemptible        the older preemptible VMs (same idea, 24 h at most)
  --project=PROJECT    a project other than gcloud's configured one (or TPU_PROJECT)
  --dry-run            print the gcloud command instead of running it (also DRY_RUN=1)
  -- GCLOUD_ARGS...    passed on to gcloud as they are (e.g. --network=NET
                       --service-account=SA --internal-ips)
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ACCELERATOR=""
VERSION=""
PRICING=()
GCLOUD_ARGS=()

while [[ $# -gt 0 ]]; do
  if take_option accelerator-type "$@"; then
    ACCELERATOR=$OPTVAL
  elif take_option version "$@"; then
    VERSION=$OPTVAL
  elif [[ $1 == --spot || $1 == --preemptible ]]; then
    [[ ${#PRICING[@]} -eq 0 || ${PRICING[0]} == "$1" ]] ||
      usage_error "--spot and --preemptible exclude each other"
    PRICING=("$1")
    OPTSHIFT=1
  elif [[ $1 == -- ]]; then
    shift
    GCLOUD_ARGS=("$@")
    break
  elif ! parse_common "$@"; then
    usage_error "unknown option: $1"
  fi
  shift "$OPTSHIFT"
done

require_slice
[[ -n $ACCELERATOR ]] || usage_error "--accelerator-type is required (e.g. v4-32)"
if [[ -z $VERSION ]]; then
  case $ACCELERATOR in
    v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    v5e-*) usage_error "v5e slices are called v5litepod-N in gcloud: --accelerator-type=v5litepod-${ACCELERATOR#v5e-}" ;;
    *) usage_error "no default runtime for '$ACCELERATOR': pass --version=RUNTIME" ;;
  esac
fi

tpu_vm create --accelerator-type="$ACCELERATOR" --version="$VERSION" \
  ${PRICING[@]+"${PRICING[@]}"} ${GCLOUD_ARGS[@]+"${GCLOUD_ARGS[@]}"}

if [[ $DRY_RUN != 1 ]]; then
  printf '\nnext: tpu/setup.sh %s --zone=%s ...   (see tpu/README.md)\n' "$TPU_NAME" "$ZONE" >&2
fi
