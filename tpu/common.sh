#!/usr/bin/env bash
# shellcheck shell=bash disable=SC2034  # the variables are read by the scripts sourcing this
# Shared by tpu/*.sh (sourced, not run): strict mode, option parsing, quoting, and `run`, through
# which every gcloud command goes. Under --dry-run (or DRY_RUN=1) `run` prints the command,
# `+ gcloud ...`, one per line on stdout, quoted so that it can be pasted into a shell, and
# runs nothing. Otherwise it prints the same line on stderr and runs the command.
#
# Each script defines `usage` (its --help text) before sourcing this file, then calls
# `parse_common "$@"` for every argument it does not know itself.
#
# Works with bash 3.2 (macOS) and later: no associative arrays, no `${x,,}`, no mapfile, and
# empty arrays are expanded as ${a[@]+"${a[@]}"} (set -u).

set -euo pipefail

SCRIPT=$(basename "$0")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

DRY_RUN=${DRY_RUN:-0}
TPU_NAME=${TPU_NAME:-}      # the slice (queued or created by create.sh)
ZONE=${TPU_ZONE:-}          # e.g. us-central2-b (v4), us-west4-a (v5e)
PROJECT=${TPU_PROJECT:-}    # empty: gcloud's configured project
# The checkout on every worker: relative to the remote home (where ssh commands start), or
# absolute. TPU_REMOTE_DIR must then be the same for setup.sh, launch.sh and logs.sh.
REMOTE_DIR=${TPU_REMOTE_DIR:-rl_jax}
REMOTE_DIR=${REMOTE_DIR#\~/}
LOG_FILE=rl-jax-train.log   # in REMOTE_DIR on each worker's own disk: one log per worker
PID_FILE=rl-jax-train.pid

GCLOUD_DOCS=https://cloud.google.com/sdk/docs/install
OPTVAL=""
OPTSHIFT=1

die() {
  printf '%s: error: %s\n' "$SCRIPT" "$*" >&2
  exit 2
}

warn() {
  printf '%s: warning: %s\n' "$SCRIPT" "$*" >&2
}

usage_error() {
  printf '%s: error: %s\n\n' "$SCRIPT" "$*" >&2
  usage >&2
  exit 2
}

# take_option NAME "$@": when $1 is --NAME=VALUE or --NAME VALUE, sets OPTVAL to VALUE and
# OPTSHIFT to the number of arguments used; returns 1 when $1 is another argument. A VALUE that
# starts with -- must be given as --NAME=VALUE.
take_option() {
  local name=$1
  shift
  case $1 in
    "--$name="*)
      OPTVAL=${1#*=}
      OPTSHIFT=1
      ;;
    "--$name")
      [[ $# -ge 2 && $2 != --* ]] || usage_error "--$name needs a value"
      OPTVAL=$2
      OPTSHIFT=2
      ;;
    *) return 1 ;;
  esac
}

# parse_common "$@": the options every script takes (--name, --zone, --project, --dry-run,
# --help, and the slice name as a bare word). Sets OPTSHIFT; returns 1 for anything else.
parse_common() {
  OPTSHIFT=1
  if take_option name "$@"; then
    TPU_NAME=$OPTVAL
  elif take_option zone "$@"; then
    ZONE=$OPTVAL
  elif take_option project "$@"; then
    PROJECT=$OPTVAL
  else
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      -h | --help)
        usage
        exit 0
        ;;
      -*) return 1 ;;
      *)
        [[ -z $TPU_NAME || $TPU_NAME == "$1" ]] || usage_error "unexpected argument: $1"
        TPU_NAME=$1
        ;;
    esac
  fi
}

# require_slice: the name and zone must be known (arguments or TPU_NAME / TPU_ZONE).
require_slice() {
  [[ -n $TPU_NAME ]] || usage_error "the slice name is required (NAME, --name=NAME or TPU_NAME)"
  [[ -n $ZONE ]] || usage_error "--zone is required (or TPU_ZONE)"
  local valid='^[a-z]([-a-z0-9]*[a-z0-9])?$'
  [[ $TPU_NAME =~ $valid ]] ||
    usage_error "slice name '$TPU_NAME': lowercase letters, digits and '-', starting with a letter"
}

# quote_word WORD: WORD as it must be written in a POSIX shell to be read back as itself:
# unchanged when it is made only of safe characters, else in single quotes (only the value of
# a --flag=value: --command='...').
quote_word() {
  local safe='^[-A-Za-z0-9_./:=,@%+]+$' flag='^(--[A-Za-z0-9][-A-Za-z0-9_.]*=)(.*)$'
  local q="'\\''" prefix="" rest=$1
  if [[ $1 =~ $safe ]]; then
    printf '%s' "$1"
    return
  fi
  if [[ $1 =~ $flag ]]; then
    prefix=${BASH_REMATCH[1]}
    rest=${BASH_REMATCH[2]}
  fi
  printf "%s'%s'" "$prefix" "${rest//\'/$q}"
}

# quote_words WORD...: the words quoted and joined by spaces (a command line for a remote shell).
quote_words() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(quote_word "$w")"
  done
  printf '%s' "$out"
}

# run CMD ARG...: print `+ CMD ARG...`; run it unless this is a dry run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '+ %s\n' "$(quote_words "$@")"
  else
    printf '+ %s\n' "$(quote_words "$@")" >&2
    if ! command -v "$1" >/dev/null; then
      [[ $1 != gcloud ]] || die "gcloud not found: install the Google Cloud CLI ($GCLOUD_DOCS)"
      die "$1 not found"
    fi
    "$@"
  fi
}

# on_home PATH: PATH as seen from the remote home directory, where ssh commands start and
# relative scp targets land. Absolute paths stay; `~/x` becomes `x`; other relative paths are
# taken relative to the checkout (REMOTE_DIR), like the paths rl-jax train reads.
on_home() {
  case $1 in
    /*) printf '%s' "$1" ;;
    \~) printf '.' ;;
    \~/*) printf '%s' "${1#\~/}" ;;
    *) printf '%s/%s' "$REMOTE_DIR" "$1" ;;
  esac
}

# tpu_vm SUBCOMMAND ARG...: gcloud compute tpus tpu-vm SUBCOMMAND NAME --zone=ZONE ARG...
tpu_vm() {
  local sub=$1
  shift
  local extra=()
  [[ -z $PROJECT ]] || extra+=("--project=$PROJECT")
  run gcloud compute tpus tpu-vm "$sub" "$TPU_NAME" --zone="$ZONE" ${extra[@]+"${extra[@]}"} "$@"
}

# on_workers WORKER COMMAND: run the shell COMMAND (one string) over ssh on worker WORKER
# (a number, or `all`: every worker of the slice at once).
on_workers() {
  tpu_vm ssh --worker="$1" --command="$2"
}

# to_workers [--recurse] LOCAL REMOTE: copy LOCAL to REMOTE (relative to the remote home) on
# every worker.
to_workers() {
  local recurse=()
  if [[ $1 == --recurse ]]; then
    recurse=(--recurse)
    shift
  fi
  local extra=()
  [[ -z $PROJECT ]] || extra+=("--project=$PROJECT")
  run gcloud compute tpus tpu-vm scp ${recurse[@]+"${recurse[@]}"} "$1" "$TPU_NAME:$2" \
    --zone="$ZONE" --worker=all ${extra[@]+"${extra[@]}"}
}
