#!/usr/bin/env bash
# Run on the GPU host once per part, in any order: bash .gpu-bundle/NAME/pN/receive.sh
# Keeps the part under $VLLM_BUNDLE_HOME/gpu-bundle (default $HOME); the call that
# completes the set checks the checksum and installs it:
# - a vLLM release (make-bundle) into $VLLM_BUNDLE_HOME/vllm-VERSION, with env.sh there.
#   Source env.sh before running the suite. A release that pins a torch other than the
#   host's own needs that torch's runtime too; env.sh names it either way.
# - a torch runtime (make-runtime) into $VLLM_BUNDLE_HOME/torch-VERSION, for the releases
#   that pin that torch (their env.sh puts it on PYTHONPATH after the release).
#
# Keep env.sh minimal: putting the bundle's bin/ on PATH, or the working tree on
# PYTHONPATH, was seen to hang engine start-up; run the suite as `python3 -m bench_pause`
# from the repository root and asv as `python3 -m asv`.
set -euo pipefail
D=$(cd "$(dirname "$0")" && pwd)
kind=vllm; torch=; . "$D/MANIFEST"
HOME_DIR=${VLLM_BUNDLE_HOME:-$HOME}
PY=${BUNDLE_PYTHON:-python3}
S=$HOME_DIR/gpu-bundle/$kind-$version; mkdir -p "$S"; cp "$D"/part.* "$S/"
T=$HOME_DIR/$kind-$version
done_mark=$T/env.sh; [ "$kind" = torch ] && done_mark=$T/READY
if [ -f "$done_mark" ]; then echo "$kind $version is already installed at $T"; exit 0; fi
have=$(ls "$S"/part.* | wc -l); echo "$kind $version: $have of $parts part(s) on this host"
[ "$have" -lt "$parts" ] && exit 0
cat $(ls "$S"/part.* | sort) > "$S/payload.tar"
echo "$sha256  $S/payload.tar" | sha256sum -c --quiet
mkdir -p "$S/x" "$T" && tar -C "$S/x" -xf "$S/payload.tar"

if [ "$kind" = torch ]; then
  xz -T0 -dc "$S/x/runtime.tar.xz" | tar -C "$T" -xf -
  rm -rf "$S"
  touch "$T/READY"
  echo "installed the torch $version runtime at $T (CUDA libraries added: ${libs:-none})"
  exit 0
fi

xz -T0 -dc "$S/x/vllm.tar.xz" | tar -C "$T" -xf -
if ls "$S"/x/whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$T" "$S"/x/whl/*.whl 2>&1 \
    | grep -v "already exists" || true
fi
# The host's own torch, from its metadata (no import): a release pinning another needs its runtime.
host_torch=$("$PY" -c "import importlib.metadata as m; print(m.version('torch').split('+')[0])" 2>/dev/null || echo none)
path=$T
# A package whose .pth file puts its own folder on sys.path (the CuTe DSL: its dsl_packages)
# needs it on PYTHONPATH here: Python reads .pth files in site-packages alone.
for d in "$T"/*/dsl_packages; do [ -d "$d" ] && path=$path:$d; done
if [ -n "$torch" ] && [ "$torch" != "$host_torch" ]; then
  path=$path:$HOME_DIR/torch-$torch
  [ -f "$HOME_DIR/torch-$torch/READY" ] || echo "vllm $version pins torch $torch (this host has $host_torch):" \
    "it runs once the torch $torch runtime is received too (tools/vllm-bundle/make-runtime $torch)"
fi
cat > "$T/env.sh" <<ENV
export PYTHONPATH=$path
export VLLM_USE_FLASHINFER_SAMPLER=0
export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ENV
rm -rf "$S"
echo "installed vllm $version at $T (torch: ${torch:-unpinned}, PYTHONPATH=$path)"
echo "next: source $T/env.sh && python3 -m bench_pause run --profile gpu"
