#!/usr/bin/env bash
# Start `rl-jax train` on every worker of a TPU VM slice at once, or stop it. See tpu/README.md.

usage() {
  cat <<'EOF'
usage: tpu/launch.sh NAME --zone=ZONE [--env=VAR=VALUE]... [--project=PROJECT] [--dry-run]
                     [--] --config=FILE --workdir=DIR [--config.FIELD=VALUE]... [RL_JAX_ARGS...]
       tpu/launch.sh NAME --zone=ZONE --stop

Runs, on every worker of the slice NAME at the same time (`--worker=all`), in ~/rl_jax:
  nohup .venv/bin/rl-jax train RL_JAX_ARGS... >> rl-jax-train.log 2>&1 &
each worker writing its own log on its own disk (tpu/logs.sh shows them). The workers join one
jax.distributed run: launch.sh adds --config.distributed.initialize=on unless you pass that
field yourself (JAX reads the slice's hosts from the TPU metadata).

  RL_JAX_ARGS     the arguments of `rl-jax train`, the same on every worker: everything after
                  `--`; --config..., --workdir and --allow_config_change are also recognised
                  without it. --workdir is required and must be shared by all workers: a
                  bucket folder (gs://BUCKET/runs/NAME, needs the gcs extra: setup.sh's
                  default) or a folder mounted at the same path everywhere (NFS, gcsfuse).
                  Relative paths (--config.model.path=models/X) are read in ~/rl_jax.
  --env=VAR=VALUE an environment variable for rl-jax on every worker (e.g. XLA_FLAGS=...,
                  LIBTPU_INIT_ARGS=..., HF_HUB_OFFLINE=1)
  --stop          send SIGTERM to rl-jax train on every worker and wait until it has exited:
                  the run stops at the next step boundary with a checkpoint (exit 0); launching
                  the same command again resumes it
  --project=PROJECT  a project other than gcloud's configured one (or TPU_PROJECT)
  --dry-run       print the gcloud commands instead of running them (also DRY_RUN=1)

Launch refuses to start while a previous rl-jax train still runs on any worker.
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

ENVS=()
RL_ARGS=()
STOP=0

while [[ $# -gt 0 ]]; do
  if take_option env "$@"; then
    [[ $OPTVAL =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || usage_error "--env=$OPTVAL: expected VAR=VALUE"
    ENVS+=("$OPTVAL")
  elif [[ $1 == --stop ]]; then
    STOP=1
    OPTSHIFT=1
  elif [[ $1 == -- ]]; then
    shift
    RL_ARGS+=("$@")
    break
  elif [[ $1 == --config=* || $1 == --config.*=* || $1 == --workdir=* ||
    $1 == --allow_config_change ]]; then
    RL_ARGS+=("$1")
    OPTSHIFT=1
  elif [[ $1 == --config || $1 == --config.* || $1 == --workdir ]]; then
    [[ $# -ge 2 && $2 != --* ]] || usage_error "$1 needs a value"
    RL_ARGS+=("$1" "$2")
    OPTSHIFT=2
  elif ! parse_common "$@"; then
    usage_error "unknown option: $1 (arguments for rl-jax train go after --)"
  fi
  shift "$OPTSHIFT"
done

require_slice

# The remote shell: in the checkout, with the pid and log file names as variables.
prelude="cd $(quote_word "$REMOTE_DIR") && pid_file=$PID_FILE && log=$LOG_FILE && "
# shellcheck disable=SC2016  # $(...) and $pid_file are for the workers' shells
running='[ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null'

if [[ $STOP == 1 ]]; then
  [[ ${#RL_ARGS[@]} -eq 0 && ${#ENVS[@]} -eq 0 ]] || usage_error "--stop takes no rl-jax arguments"
  # shellcheck disable=SC2016
  on_workers all "$prelude"'if '"$running"'; then pid=$(cat "$pid_file") && kill -TERM "$pid" && echo "$(hostname): SIGTERM sent to rl-jax train (pid $pid), waiting for its checkpoint" && while kill -0 "$pid" 2>/dev/null; do sleep 1; done && echo "$(hostname): stopped" && tail -n 3 "$log"; else echo "$(hostname): rl-jax train is not running"; fi'
  exit 0
fi

workdir=""
distributed=0
for ((i = 0; i < ${#RL_ARGS[@]}; i++)); do
  case ${RL_ARGS[i]} in
    --workdir=*) workdir=${RL_ARGS[i]#--workdir=} ;;
    --workdir) workdir=${RL_ARGS[i + 1]:-} ;;
    --config.distributed.initialize | --config.distributed.initialize=*) distributed=1 ;;
  esac
done
[[ -n $workdir ]] ||
  usage_error "--workdir=DIR is required: a folder all workers share at the same path"
[[ $distributed == 1 ]] || RL_ARGS+=(--config.distributed.initialize=on)

train=()
[[ ${#ENVS[@]} -eq 0 ]] || train+=(env "${ENVS[@]}")
train+=(.venv/bin/rl-jax train "${RL_ARGS[@]}")

# 1. nothing may run yet on any worker (two runs would fight over the chips and the workdir)
# shellcheck disable=SC2016
on_workers all "$prelude"'if '"$running"'; then echo "$(hostname): rl-jax train is still running (pid $(cat "$pid_file")): tpu/launch.sh --stop stops it" >&2; exit 1; fi'

# 2. start on all workers at once; report a worker where it exits straight away (a bad flag)
# shellcheck disable=SC2016
on_workers all "$prelude"'echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname): tpu/launch.sh" >> "$log" && { nohup '"$(quote_words "${train[@]}")"' >> "$log" 2>&1 < /dev/null & echo $! > "$pid_file"; } && sleep 10 && if '"$running"'; then echo "$(hostname): rl-jax train started (pid $(cat "$pid_file")), log $PWD/$log"; else echo "$(hostname): rl-jax train exited at once:" >&2; tail -n 20 "$log" >&2; exit 1; fi'

if [[ $DRY_RUN != 1 ]]; then
  printf '\nlogs: tpu/logs.sh %s --zone=%s [--worker=N|all]; stop: tpu/launch.sh %s --zone=%s --stop\n' \
    "$TPU_NAME" "$ZONE" "$TPU_NAME" "$ZONE" >&2
fi
