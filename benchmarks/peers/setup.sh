#!/usr/bin/env bash
# Builds the two peer environments used by benchmarks/side_by_side.py, each in its own venv so
# that neither peer's dependencies touch rl_jax's:
#   benchmarks/.venvs/trl    torch 2.13.0 (CPU build) + trl 1.16.0 + peft 0.21.2 (+ transformers)
#   benchmarks/.venvs/tunix  google-tunix 0.1.7 (+ its jax / flax)
# Usage: bash benchmarks/peers/setup.sh [trl|tunix ...]   (default: both)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venvs="${RL_JAX_PEER_VENVS:-$here/.venvs}"
python="${PYTHON:-python3}"
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(trl tunix)
for peer in "${peers[@]}"; do
  dir="$venvs/$peer"
  echo "== $peer -> $dir"
  "$python" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip
  case "$peer" in
    # torch pinned so pip takes the CPU build (an unpinned torch pulls a multi-GB CUDA build).
    trl) "$dir/bin/python" -m pip install -q "torch==2.13.0" "trl==1.16.0" "peft==0.21.2" psutil ;;
    tunix) "$dir/bin/python" -m pip install -q "google-tunix==0.1.7" psutil ;;
    *) echo "unknown peer: $peer (expected trl or tunix)" >&2; exit 2 ;;
  esac
  "$dir/bin/python" -m pip freeze > "$dir/freeze.txt"
  echo "== $peer ready: $(grep -iE '^(torch|trl|peft|transformers|google-tunix|jax|jaxlib|flax)==' "$dir/freeze.txt" | tr '\n' ' ')"
done
