#!/usr/bin/env bash
# Install rl_jax on every worker of a TPU VM slice and bring the data and the model there.
# See tpu/README.md.

usage() {
  cat <<'EOF'
usage: tpu/setup.sh NAME --zone=ZONE [--git=URL] [--ref=REF] [--python=3.11] [--extras=hf,gcs]
                    [--pip=PACKAGE]... [--copy=SRC:DEST]... [--mount=gs://BUCKET[/DIR]:DEST]...
                    [--no-check] [--project=PROJECT] [--dry-run]

On every worker of the slice NAME (all at once, `--worker=all`):
1. the code, into ~/rl_jax (TPU_REMOTE_DIR to change it): by default `git archive REF` of this
   checkout (REF default HEAD: commit your changes first), copied with
   `gcloud compute tpus tpu-vm scp`; with --git=URL a `git clone` of URL at REF
   (default origin/HEAD) on each worker instead;
2. Python PYTHON (default 3.11; the image's own python3 is 3.10) in ~/rl_jax/.venv, made with
   uv, and `pip install -e '.[EXTRAS]' 'jax[tpu]'` plus each --pip PACKAGE;
3. each --copy=SRC:DEST: SRC (a local file or folder, or a gs:// object or prefix) copied into
   the folder DEST on every worker (a gs:// source is downloaded by each worker itself, which is
   much faster than copying through this machine; existing files are kept, so a rerun resumes);
4. each --mount=gs://BUCKET[/DIR]:DEST: the bucket (or its folder DIR) mounted at DEST with
   gcsfuse (installed if missing);
5. a check that every worker joins jax.distributed and sees all the slice's chips (--no-check
   skips it).
A relative DEST is taken relative to ~/rl_jax, like the relative paths rl-jax train reads
(launch.sh runs it there); /abs and ~/x are left as they are. Reruns are safe: the venv is
reused, files are updated in place.

  --project=PROJECT    a project other than gcloud's configured one (or TPU_PROJECT)
  --dry-run            print the commands instead of running them (also DRY_RUN=1)
EOF
}

# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

GIT_URL=""
REF=""
PYTHON=3.11
EXTRAS=hf,gcs
PIP=()
COPIES=()
MOUNTS=()
CHECK=1

while [[ $# -gt 0 ]]; do
  if take_option git "$@"; then
    GIT_URL=$OPTVAL
  elif take_option ref "$@"; then
    REF=$OPTVAL
  elif take_option python "$@"; then
    PYTHON=$OPTVAL
  elif take_option extras "$@"; then
    EXTRAS=$OPTVAL
  elif take_option pip "$@"; then
    PIP+=("$OPTVAL")
  elif take_option copy "$@"; then
    COPIES+=("$OPTVAL")
  elif take_option mount "$@"; then
    MOUNTS+=("$OPTVAL")
  elif [[ $1 == --no-check ]]; then
    CHECK=0
    OPTSHIFT=1
  elif ! parse_common "$@"; then
    usage_error "unknown option: $1"
  fi
  shift "$OPTSHIFT"
done

require_slice
[[ $PYTHON =~ ^3\.[0-9]+$ ]] || usage_error "--python=$PYTHON: give a version like 3.11 or 3.12"

# split_spec OPTION SPEC: SRC and DEST of SRC:DEST (split at the last ':', as gs:// has one).
split_spec() {
  [[ $2 == *:* && ($2 != gs://* || $2 == gs://*:*) ]] ||
    usage_error "--$1=$2: expected SRC:DEST (DEST: a folder on the workers)"
  SRC=${2%:*}
  DEST=${2##*:}
  [[ -n $SRC && -n $DEST ]] || usage_error "--$1=$2: expected SRC:DEST"
}

SRC=""
DEST=""
for spec in ${COPIES[@]+"${COPIES[@]}"}; do
  split_spec copy "$spec"
  [[ $SRC == gs://* || -e $SRC ]] || usage_error "--copy=$spec: $SRC does not exist here"
done
for spec in ${MOUNTS[@]+"${MOUNTS[@]}"}; do
  split_spec mount "$spec"
  [[ $SRC == gs://* ]] || usage_error "--mount=$spec: the source must be gs://BUCKET[/DIR]"
done

q_checkout=$(quote_word "$REMOTE_DIR")

# 1. the code
if [[ -n $GIT_URL ]]; then
  q_ref=$(quote_word "${REF:-origin/HEAD}")
  on_workers all "if [ -d $q_checkout/.git ]; then git -C $q_checkout fetch --quiet origin; \
else git clone --quiet $(quote_word "$GIT_URL") $q_checkout; fi && \
git -C $q_checkout checkout --quiet --detach $q_ref"
else
  git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1 ||
    die "$ROOT is not a git checkout: pass --git=URL to clone the code on the workers"
  if [[ -z $REF && -n $(git -C "$ROOT" status --porcelain --untracked-files=no) ]]; then
    warn "uncommitted changes in $ROOT are not copied (git archive HEAD): commit them first"
  fi
  tarball="${TMPDIR:-/tmp}/rl_jax-$TPU_NAME.tar.gz"
  run git -C "$ROOT" archive --format=tar.gz --output="$tarball" "${REF:-HEAD}"
  to_workers "$tarball" rl_jax-code.tar.gz
  on_workers all "mkdir -p $q_checkout && tar -xzf rl_jax-code.tar.gz -C $q_checkout && \
rm -f rl_jax-code.tar.gz"
fi

# 2. Python and the package (uv fetches a standalone Python: Ubuntu 22.04 images have 3.10)
install=$(quote_words -e ".[$EXTRAS]" "jax[tpu]" ${PIP[@]+"${PIP[@]}"})
on_workers all "cd $q_checkout && \
{ python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --user --quiet --upgrade uv; } && \
{ [ -x .venv/bin/python ] || python3 -m uv venv --python $PYTHON .venv; } && \
python3 -m uv pip install --python .venv/bin/python $install"

# 3. data and model folders
for spec in ${COPIES[@]+"${COPIES[@]}"}; do
  split_spec copy "$spec"
  q_dest=$(quote_word "$(on_home "$DEST")")
  SRC=${SRC%/}
  if [[ $SRC == gs://* ]]; then
    on_workers all "mkdir -p $q_dest && \
gcloud storage cp --recursive --no-clobber $(quote_word "$SRC") $q_dest/"
  else
    on_workers all "mkdir -p $q_dest"
    to_workers --recurse "$SRC" "$(on_home "$DEST")/"
  fi
done

# 4. gcsfuse mounts
# shellcheck disable=SC2016  # $(lsb_release -cs) is for the worker's shell
install_gcsfuse='command -v gcsfuse >/dev/null || { echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; }'
for spec in ${MOUNTS[@]+"${MOUNTS[@]}"}; do
  split_spec mount "$spec"
  q_dest=$(quote_word "$(on_home "$DEST")")
  bucket=${SRC#gs://}
  bucket=${bucket%/}
  only_dir=""
  if [[ $bucket == */* ]]; then
    only_dir="--only-dir $(quote_word "${bucket#*/}") "
    bucket=${bucket%%/*}
  fi
  on_workers all "$install_gcsfuse && mkdir -p $q_dest && \
{ mountpoint -q $q_dest || gcsfuse --implicit-dirs $only_dir$(quote_word "$bucket") $q_dest; }"
done

# 5. every worker joins and sees the whole slice
if [[ $CHECK == 1 ]]; then
  probe='import jax; jax.distributed.initialize(); print("process", jax.process_index(), "of", jax.process_count(), ":", jax.local_device_count(), "local devices of", jax.device_count())'
  on_workers all "cd $q_checkout && timeout 600 .venv/bin/python -c $(quote_word "$probe")"
fi

if [[ $DRY_RUN != 1 ]]; then
  printf '\nnext: tpu/launch.sh %s --zone=%s -- --config=... --workdir=runs/RUN (a --mount)\n' \
    "$TPU_NAME" "$ZONE" >&2
fi
