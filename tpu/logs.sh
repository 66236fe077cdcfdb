#!/usr/bin/env bash
# Show the rl-jax train log of one worker of a TPU VM slice, or of all. See tpu/README.md.

usage() {
  cat <<'EOF'
usage: tpu/logs.sh NAME --zone=ZONE [--worker=N|all] [--lines=N] [--no-follow]
                   [--project=PROJECT] [--dry-run]

Tails ~/rl_jax/rl-jax-train.log (written by tpu/launch.sh) on the slice NAME.

  --worker=N|all  worker 0 by default: process 0 prints the progress lines and writes the
                  metrics; `all` shows every worker's log, each line prefixed by its host name
  --lines=N       the last N lines first (default 100)
  --no-follow     print them and return instead of following the log (Ctrl-C ends following;
                  the run goes on)
  --project=PROJECT  a project other than gcloud's configured one (or TPU_PROJECT)
  --dry-run       print the gcloud command instead of running it (also DRY_RUN=1)
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WORKER=0
NLINES=100
FOLLOW=1

while [[ $# -gt 0 ]]; do
  if take_option worker "$@"; then
    WORKER=$OPTVAL
  elif take_option lines "$@"; then
    NLINES=$OPTVAL
  elif [[ $1 == --no-follow ]]; then
    FOLLOW=0
    OPTSHIFT=1
  elif ! parse_common "$@"; then
    usage_error "unknown option: $1"
  fi
  shift "$OPTSHIFT"
done

require_slice
[[ $WORKER == all || $WORKER =~ ^[0-9]+$ ]] || usage_error "--worker=$WORKER: a number or all"
[[ $NLINES =~ ^[0-9]+$ ]] || usage_error "--lines=$NLINES: a number"

tail="tail -n $NLINES"
[[ $FOLLOW == 0 ]] || tail+=" -F"
tail+=" $(quote_word "$REMOTE_DIR/$LOG_FILE")"
if [[ $WORKER == all ]]; then
  # shellcheck disable=SC2016  # $(hostname) is for the workers' shells
  tail+=' | sed -u "s/^/$(hostname): /"'
fi
on_workers "$WORKER" "$tail"
