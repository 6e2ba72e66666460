#!/usr/bin/env bash
# The GPU measurements behind results/gpu-*-production-*, one step per lent-machine call
# (each call is limited to 10 minutes and returns only what is under $OUT, so each step
# ends by packing what it wrote into one tarball there).
#
#   bash tools/gpu-session.sh info            # the host: GPU, git, disk
#   bash tools/gpu-session.sh probe           # what $VLLM_VERSION runs on: torch (its runtime or
#                                             #   the image's), CUDA, NCCL, cuDNN; the pause and
#                                             #   trainer APIs bench-pause finds in it
#   bash tools/gpu-session.sh asv Offline     # asv run of one class: the gpu profile for each
#   bash tools/gpu-session.sh asv Http        #   model in $MODELS, sweeps kept under results/
#   bash tools/gpu-session.sh stall           # the MoE resume stall: keep, clear_cache both
#                                             #   ways, 8 repeats, CUDA graphs and eager ($EXECUTIONS
#                                             #   picks; $ENGINE_ARGS adds engine flags to both;
#                                             #   SUFFIX=-r2 a second engine run). Two releases
#                                             #   alternated (VLLM_VERSION=A, B, A, B with -r2) and
#                                             #   moved to DIR/A/r1, DIR/A/r2, DIR/B/... make
#                                             #   `bench-pause compare DIR/A DIR/B` (0.26.0 vs 0.34.0:
#                                             #   EXECUTIONS=graphs ENGINE_ARGS="--max-model-len 2048")
#   bash tools/gpu-session.sh dp2 MODEL       # two GPUs: the dp profile at dp 2 (both backends,
#                                             #   edge cycles included) for one preset
#   bash tools/gpu-session.sh dp1             # two GPUs: the gpu profile at dp 1, qwen3-8b on GPU 0
#                                             #   and qwen3-30b-a3b on GPU 1 at the same time
#   bash tools/gpu-session.sh fleet MODEL     # two GPUs: one dev-mode server per GPU, paused together
#                                             #   (--url twice), the gpu profile over HTTP
#   bash tools/gpu-session.sh cmp [MODEL]     # one GPU: vLLM 0.25.1 against 0.26.0, interleaved, plus
#                                             #   the calibration (0.26.0 against itself and with 2, 5,
#                                             #   10 ms injected) on the offline backend, then 0.25.1 vs
#                                             #   0.26.0 and A/A over HTTP; resumable, call it again
#   bash tools/gpu-session.sh history [MODEL] # one GPU: every release whose bundle is installed
#                                             #   (~/vllm-X/env.sh), interleaved, --profile compare on
#                                             #   $BACKENDS (default offline), calibrated by the newest
#                                             #   release again and with $CALIBRATE ms (default 5 10;
#                                             #   CALIBRATE= for the A/A copy alone) injected; resumable,
#                                             #   call it again (a release installed since joins the
#                                             #   history: one run in every round). VLLM_BUNDLE_HOME=DIR
#                                             #   of links to some ~/vllm-X picks fewer releases;
#                                             #   HISTORY_OUT=results/DIR another history
#   bash tools/gpu-session.sh weight_sync [MODEL]  # one GPU: the weight_sync cycle (every mode, cache
#                                             #   both ways) on $BACKENDS (both by default), pushed by
#                                             #   --transfer $TRANSFER (ipc by default; qwen3-8b by default);
#                                             #   two GPUs with TRANSFER=nccl|nccl_packed (the trainer on
#                                             #   GPU 1, NCCL's transport lines in the run's trainer.log)
#   bash tools/gpu-session.sh sleep [MODEL]   # one GPU: the sleep cycle (levels 0, 1, 2, both wakes)
#                                             #   beside the pause cycle on the same engines, both
#                                             #   backends; the GPU memory before, asleep and after
#   bash tools/gpu-session.sh idle [MODEL]    # one GPU: tools/idle-probe-check.py (the idle probe
#                                             #   paused and while generating)
# Installing on a lent machine (README, "Releases that pin a newer torch"): one call per part,
# carrying .gpu-bundle/NAME/pN and running its receive.sh: the torch runtime's parts, then the
# release's; the last call goes on with the first step. A part and the tree must fit 64 MiB:
# `bash tools/gpu-tree.sh out` first (`out asv` before asv calls), `in` after the last call.
# Send the first call alone and the rest only once it answered: a machine that does not start
# refuses every call queued behind it, at 15 s of device time each. ~4 s held per call; a
# machine idle 30 s is given back, and one can be taken back mid-call: the install is lost
# with it. Send the rest in groups of four or five: on 2026-12-07 a machine stopped answering
# at the 4th of 19 queued calls, and the 15 behind it were refused at 15 s each (225 s of the
# session's 1800 s).
# A step that resumes (cmp, history) continues from the run directories in the working tree: unpack
# each call's tarball into the checkout before the next call, since the tree that travels
# with a call replaces the host's copy (forgetting it once made a call repeat the previous one).
# On a fresh machine only the history call carries the history's directory (the install calls
# leave all of results/ out: a 63 MB part and a history of a few MB exceed the 64 MiB a call).
# The MoE routing test (is 0.26.0's faster MoE step the stand-in weights' degenerate routing?
# findings.md): the stall step with the routing forced uniform on both releases, each run
# dir's meta.json records the variable (vllm_env):
#   VLLM_MOE_ROUTING_SIMULATION_STRATEGY=uniform_random EXECUTIONS=graphs ENGINE_ARGS="--max-model-len 2048" \
#     REPEATS=3 SUFFIX=-uniform VLLM_VERSION=0.34.0 bash tools/gpu-session.sh stall   (then VLLM_VERSION=0.26.0)
# The 30B-A3B's sleep cycle, one call per backend and level group: on 0.34.0 (H100, 2026-12-07)
# offline 187 s (levels 0-1) and 233 s (level 2), HTTP 273 s and 319 s, each run's started..finished
# in meta.json; of that the engine start (offline 96-107 s, the server 178-188 s) and, before a
# level-2 run's engine, 60-75 s staging the trainer's sets. The first level-1 sleep pins the
# weights' host copy: 17 s offline, 29 s over HTTP. The levels are not run on one engine as the
# 8B's are: level 2 needs TRANSFER=ipc_packed on an H100 (the trainer's 57 GiB in pinned host
# memory), and a level-1 sleep beside it would pin another 57 GiB (vLLM's weight backup) on a
# host of 128 GiB (not tried). For 0.26.0 (its bundle: 5 calls, the image's torch):
#   VLLM_VERSION=0.26.0 LEVELS="0 1" BACKENDS=offline MODES=keep REPEATS=3 bash tools/gpu-session.sh sleep qwen3-30b-a3b
#   ... LEVELS="0 1" BACKENDS=http SUFFIX=-http ...
#   ... LEVELS=2 TRANSFER=ipc_packed BACKENDS=offline SUFFIX=-l2 ...;  BACKENDS=http SUFFIX=-http-l2
# The 0.26.0-0.34.0 history goes on with: CALIBRATE=5 HISTORY_OUT=results/gpu-h100-history-
# offline-qwen3-8b-since-0.26 bash tools/gpu-session.sh history (every release of it installed:
# 50 install calls, ~270 s held; then 134-188 s a run for a release's first start on a machine,
# 90-118 s for its later ones; the call stops before a run that would outlast LIMIT_S - 30 by
# the slowest run so far, 188 s). On 2026-12-07 round 3 had 7 runs left: ~1000 s after the install.
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
  probe)
    python3 - <<'PY'
import torch
print("torch", torch.__version__, "from", torch.__file__, "| CUDA", torch.version.cuda, torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
try:  # torch refuses a cuDNN older than the one it was built with, at first use
    cudnn = torch.backends.cudnn.version()
except RuntimeError as exc:
    cudnn = f"refused: {exc}"
print("NCCL", torch.cuda.nccl.version(), "| cuDNN", cudnn)
import triton, vllm
from bench_pause import vllm_compat
print("triton", triton.__version__, "| vllm", vllm.__version__, "from", vllm.__file__)
print("pause API", vllm_compat.pause_api(), "| trainer API ipc", vllm_compat.trainer_api("ipc"),
      "nccl", vllm_compat.trainer_api("nccl"))
x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
print("matmul ok", float((x @ x).float().abs().mean()) > 0)
PY
    echo "probe exit $?"
    ;;
  asv)
    bench=${2:?asv Offline|Http}
    # asv looks the commit up in .git: bring it in when the checkout travelled without it.
    [ -f gpu-commits.bundle ] && git fetch -q gpu-commits.bundle "HEAD:refs/heads/gpu-run" 2>&1 | tail -2
    export BENCH_PAUSE_PROFILE=gpu BENCH_PAUSE_MODELS=$MODELS BENCH_PAUSE_RUN_ARGS="--startup-timeout 240"
    # The machine as results/asv describes it, every field: `asv machine` saves only the
    # fields that differ from its own probe, so a fresh host's results lacked arch, num_cpu
    # and ram, and asv drew them apart from the same machine's other results.
    python3 - "$MACHINE" "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) host, $(nproc) cores (lent)" <<'PY'
import json, os, pathlib, platform, sys
name, cpu = sys.argv[1:]
committed = pathlib.Path("results/asv") / name / "machine.json"
entry = json.loads(committed.read_text()) if committed.exists() else {
    "arch": platform.machine(), "cpu": cpu, "machine": name, "num_cpu": str(os.cpu_count()), "os": platform.system(),
    "ram": str(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))}
entry.pop("version", None)
path = pathlib.Path.home() / ".asv-machine.json"
machines = json.loads(path.read_text()) if path.exists() else {"version": 1}
machines[name] = entry
path.write_text(json.dumps(machines, indent=4))
print("asv machine", entry)
PY
    timeout "$LIMIT_S" python3 -m asv run --python=same --launch-method forkserver --machine "$MACHINE" \
      --set-commit-hash "$BENCH_PAUSE_COMMIT" --bench "pause.$bench\." --show-stderr 2>&1 | tail -120
    echo "asv exit ${PIPESTATUS[0]}"
    pack "asv-$bench" results/asv results/asv-sweeps
    ;;
  stall)
    for execution in ${EXECUTIONS:-graphs eager}; do
      flags=(); [ "$execution" = eager ] && flags=(--engine-args --enforce-eager)
      [ -n "${ENGINE_ARGS:-}" ] && flags+=(--engine-args "$ENGINE_ARGS")
      timeout $((LIMIT_S / $(wc -w <<< "${EXECUTIONS:-graphs eager}"))) python3 -m bench_pause run --model qwen3-30b-a3b --backend offline --mode keep \
        --clear-cache true false --repeats "${REPEATS:-8}" --concurrency 8 --max-tokens 200 --pause-point tokens:50 --hold 1 \
        --startup-timeout 300 "${flags[@]}" --out "results/$MACHINE-v$VLLM_VERSION-moe-stall-$execution${SUFFIX:-}" 2>&1 | tail -25
    done
    pack "stall${SUFFIX:-}" results/$MACHINE-v$VLLM_VERSION-moe-stall-*
    ;;
  dp2)
    model=${2:?dp2 MODEL}
    timeout "$LIMIT_S" python3 -m bench_pause run --profile dp --dp 2 --model "$model" --startup-timeout 240 \
      --out "results/$MACHINE-v$VLLM_VERSION-dp2-$model" 2>&1 | tail -70
    pack "dp2-$model" "results/$MACHINE-v$VLLM_VERSION-dp2-$model"
    ;;
  cmp)
    model=${2:-qwen3-8b}
    deadline=$((SECONDS + LIMIT_S))
    H=${VLLM_BUNDLE_HOME:-$HOME}
    envs=(--env "0.26.0=$H/vllm-0.26.0/env.sh" --env "0.26.0-again=$H/vllm-0.26.0/env.sh"
          --env "0.25.1=$H/vllm-0.25.1/env.sh")
    cal=()
    for ms in 2 5 10; do cal+=(--env "0.26.0+${ms}ms=$H/vllm-0.26.0/env.sh" --inject "0.26.0+${ms}ms=$ms"); done
    for backend in offline http; do
      left=$((deadline - SECONDS))
      [ "$left" -lt 90 ] && break
      extra=(); [ "$backend" = offline ] && extra=("${cal[@]}")
      timeout -k 40 "$left" python3 -m bench_pause interleave "${envs[@]}" "${extra[@]}" --rounds "${ROUNDS:-3}" \
        --resume --out "results/gpu-cmp-$backend-$model" -- --profile compare --backend "$backend" \
        --model "$model" --startup-timeout 300 2>&1 | tail -60
      code=${PIPESTATUS[0]}
      echo "interleave $backend exit $code"
      [ "$code" = 0 ] || break
    done
    pack cmp results/gpu-cmp-*-"$model"
    ;;
  history)
    model=${2:-qwen3-8b}
    backends=${BACKENDS:-offline}
    # HISTORY_OUT names another history (the 0.26.0-0.34.0 one went beside the 0.22.1-0.26.0 one).
    out=${HISTORY_OUT:-"results/$MACHINE-history-${backends// /-}-$model"}
    # The history goes on from the host's own copy when this machine made the last call (the
    # tree that travels may lack the newest runs: they come back only in the tarball).
    keep="$HOME/bench-pause-keep/$out"
    if [ -f "$keep/interleave.json" ]; then mkdir -p "$out" && cp -a "$keep/." "$out/"; fi
    # The releases installed; on --resume the history goes on with those it holds (one whose
    # runs are all done need not be installed) and an installed one it lacks joins it.
    resume=(); [ -f "$out/interleave.json" ] && resume=(--resume)
    releases=()
    for env in "${VLLM_BUNDLE_HOME:-$HOME}"/vllm-*/env.sh; do r=${env%/env.sh}; releases+=(--release "${r##*/vllm-}"); done
    # shellcheck disable=SC2086
    timeout -k 40 "$LIMIT_S" python3 -m bench_pause history "${releases[@]}" --rounds "${ROUNDS:-3}" "${resume[@]}" \
      --calibrate ${CALIBRATE-5 10} --stop-after $((LIMIT_S - 30)) --out "$out" -- --profile compare \
      --backend $backends --model "$model" --startup-timeout 300 2>&1 | grep -v "^INFO\|^WARNING" | tail -40
    echo "history exit ${PIPESTATUS[0]}"
    mkdir -p "$keep" && cp -a "$out/." "$keep/"
    pack history "$out"
    ;;
  weight_sync)
    model=${2:-qwen3-8b}
    transfer=${TRANSFER:-ipc}
    out="results/$MACHINE-v$VLLM_VERSION-weight-sync-$transfer-$model${SUFFIX:-}"
    # NCCL says which transport it chose (P2P over NVLink, shared memory, ...): the bandwidth depends on it.
    case $transfer in nccl*) export NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT;; esac
    # shellcheck disable=SC2086
    timeout -k 40 "$LIMIT_S" python3 -m bench_pause run --model "$model" --cycle weight_sync --transfer "$transfer" \
      --backend ${BACKENDS:-offline http} --mode keep abort wait --pause-point tokens:20 --max-tokens 128 \
      --concurrency 8 --hold 0 --clear-cache true false --repeats "${REPEATS:-4}" --startup-timeout 300 \
      --out "$out" 2>&1 | tail -40
    echo "weight_sync exit ${PIPESTATUS[0]}"
    pack "weight-sync-$transfer-$model" "$out"
    ;;
  sleep)
    model=${2:-qwen3-8b}
    out="results/$MACHINE-v$VLLM_VERSION-sleep-$model${SUFFIX:-}"
    # The colocated cycle beside the pause on the same engine (one engine per backend, started
    # with --enable-sleep-mode): sleep levels 0, 1 and 2 ($LEVELS), woken at once and split; level 2
    # pushes the next weight set between its wakes (--transfer ipc by default on a GPU; the
    # 30B-A3B's two sets do not fit beside it: TRANSFER=ipc_packed). Levels 0 and 1 check that
    # the set held before the sleep made the tokens after the wake. RESUME=1 continues a run
    # a call's limit cut short (its directory unpacked into the tree first); another run of
    # the same model and release needs SUFFIX (run refuses a directory that holds a run).
    # shellcheck disable=SC2086
    timeout -k 40 "$LIMIT_S" python3 -m bench_pause run --model "$model" --cycle pause sleep --sleep-level ${LEVELS:-0 1 2} \
      --wake all split --backend ${BACKENDS:-offline http} --mode ${MODES:-keep abort wait} --pause-point tokens:20 \
      --max-tokens 128 --concurrency 8 --hold 0.5 --clear-cache true false --repeats "${REPEATS:-4}" \
      ${TRANSFER:+--transfer "$TRANSFER"} ${RESUME:+--resume} --startup-timeout 300 --out "$out" 2>&1 | tail -60
    echo "sleep exit ${PIPESTATUS[0]}"
    pack "sleep-$model" "$out"
    ;;
  idle)
    model=${2:-qwen3-8b}
    out="results/$MACHINE-v$VLLM_VERSION-idle-probe-$model"
    mkdir -p "$out"
    timeout -k 20 "$LIMIT_S" python3 -c "import runpy, sys; sys.path.insert(0, '.'); sys.argv[1:] = ['$model']; runpy.run_path('tools/idle-probe-check.py', run_name='__main__')" 2>&1 | grep -v "^INFO\|^WARNING" \
      | tee "$out/idle-probe-check.txt" | tail -8
    pack "idle-$model" "$out"
    ;;
  dp1)
    i=0
    for model in ${DP1_MODELS:-qwen3-8b qwen3-30b-a3b}; do
      CUDA_VISIBLE_DEVICES=$i timeout "$LIMIT_S" python3 -m bench_pause run --profile gpu --dp 1 --model "$model" \
        --startup-timeout 240 --out "results/$MACHINE-v$VLLM_VERSION-dp1-$model" >"/tmp/dp1-$model.log" 2>&1 &
      i=$((i + 1))
    done
    wait
    tail -n 45 /tmp/dp1-*.log
    pack dp1 results/$MACHINE-v$VLLM_VERSION-dp1-*
    ;;
  fleet)
    model=${2:?fleet MODEL}
    # The preset's cached model (named NAME-rREVISION, as every run started by the suite
    # records it), so the fleet run's report groups with the same model's other runs.
    path=$(python3 -c "from bench_pause.model import cached_preset; print(cached_preset('$model'))")
    pids=(); urls=()
    for gpu in 0 1; do
      port=$((8100 + gpu)); urls+=("http://127.0.0.1:$port")
      CUDA_VISIBLE_DEVICES=$gpu VLLM_SERVER_DEV_MODE=1 setsid python3 -m vllm.entrypoints.openai.api_server \
        --host 127.0.0.1 --port $port --model "$path" --load-format dummy --seed 0 \
        >"/tmp/server-$gpu.log" 2>&1 &
      pids+=($!)
    done
    for url in "${urls[@]}"; do  # start-up is bounded: 300 s for both
      for _ in $(seq 300); do curl -sf "$url/health" >/dev/null && break; sleep 1; done
    done
    out="results/$MACHINE-v$VLLM_VERSION-fleet2-$model"
    timeout $((LIMIT_S - 120)) python3 -m bench_pause run --profile gpu --backend http --url "${urls[@]}" \
      --out "$out" 2>&1 | tail -40
    for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null; done
    sleep 5; for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null; done
    mkdir -p "$out"; cp /tmp/server-*.log "$out/" 2>/dev/null
    pack "fleet-$model" "$out"
    ;;
  *) echo "unknown step $1" >&2; exit 2;;
esac
