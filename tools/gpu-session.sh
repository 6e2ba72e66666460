#!/usr/bin/env bash
# The GPU measurements behind results/gpu-*-production-*, one step per lent-machine call
# (each call is limited to 10 minutes and returns only what is under $OUT, so each step
# ends by packing what it wrote into one tarball there).
#
#   bash tools/gpu-session.sh info            # the host: GPU, git, disk
#   bash tools/gpu-session.sh asv Offline     # asv run of one class: the gpu profile for each
#   bash tools/gpu-session.sh asv Http        #   model in $MODELS, sweeps kept under results/
#   bash tools/gpu-session.sh stall           # the MoE resume stall: keep, clear_cache both
#                                             #   ways, 8 repeats, CUDA graphs and eager
# Needs vLLM installed from a bundle (tools/vllm-bundle) and BENCH_PAUSE_COMMIT set to the
# commit the working tree came from when it travels without .git.
set -uo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION=${VLLM_VERSION:-0.26.0}
MODELS=${MODELS:-qwen3-30b-a3b,qwen3-8b}
OUT=${OUT:-/tmp/out}
LIMIT_S=${LIMIT_S:-540}
# shellcheck disable=SC1090
source "${VLLM_BUNDLE_HOME:-$HOME}/vllm-$VLLM_VERSION/env.sh" 2>/dev/null || echo "vLLM $VLLM_VERSION is not installed"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -oiE 'h100|h200|a100|l40s' | tr A-Z a-z)
MACHINE=gpu-${card:-unknown}
export BENCH_PAUSE_COMMIT=${BENCH_PAUSE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

pack() {  # pack(name, paths...): one tarball under $OUT
  local name=$1; shift
  mkdir -p "$OUT"
  tar -czf "$OUT/$name.tgz" --ignore-failed-read "$@" 2>/dev/null
  ls -la "$OUT"
}

case ${1:-info} in
  info)
    nvidia-smi -L; nvidia-smi --query-gpu=memory.total,driver_version --format=csv
    echo "machine $MACHINE, commit $BENCH_PAUSE_COMMIT"; git rev-parse HEAD 2>&1 | head -1
    df -h / | tail -1; python3 --version
    ;;
  asv)
    bench=${2:?asv Offline|Http}
    # asv looks the commit up in .git: bring it in when the checkout travelled without it.
    [ -f gpu-commits.bundle ] && git fetch -q gpu-commits.bundle "HEAD:refs/heads/gpu-run" 2>&1 | tail -2
    export BENCH_PAUSE_PROFILE=gpu BENCH_PAUSE_MODELS=$MODELS BENCH_PAUSE_RUN_ARGS="--startup-timeout 240"
    python3 -m asv machine --yes --machine "$MACHINE" >/dev/null
    timeout "$LIMIT_S" python3 -m asv run --python=same --launch-method forkserver --machine "$MACHINE" \
      --set-commit-hash "$BENCH_PAUSE_COMMIT" --bench "pause.$bench\." --show-stderr 2>&1 | tail -120
    echo "asv exit ${PIPESTATUS[0]}"
    pack "asv-$bench" results/asv results/asv-sweeps
    ;;
  stall)
    for execution in graphs eager; do
      flags=(); [ "$execution" = eager ] && flags=(--engine-args --enforce-eager)
      timeout $((LIMIT_S / 2)) python3 -m bench_pause run --model qwen3-30b-a3b --backend offline --mode keep \
        --clear-cache true false --repeats 8 --concurrency 8 --max-tokens 200 --pause-point tokens:50 --hold 1 \
        --startup-timeout 200 "${flags[@]}" --out "results/$MACHINE-v$VLLM_VERSION-moe-stall-$execution" 2>&1 | tail -25
    done
    pack stall results/$MACHINE-v$VLLM_VERSION-moe-stall-*
    ;;
  *) echo "unknown step $1" >&2; exit 2;;
esac
