#!/usr/bin/env bash
# Run on the GPU host once per part, in any order: bash .gpu-bundle/vVERSION/pN/receive.sh
# Keeps the part under $VLLM_BUNDLE_HOME/gpu-bundle (default $HOME); the call that
# completes the set checks the checksum, installs vLLM into $VLLM_BUNDLE_HOME/vllm-VERSION
# and writes env.sh there. Source env.sh before running the suite.
#
# Keep env.sh minimal: putting the bundle's bin/ on PATH, or the working tree on
# PYTHONPATH, was seen to hang engine start-up; run the suite as `python3 -m bench_pause`
# from the repository root and asv as `python3 -m asv`.
set -euo pipefail
D=$(cd "$(dirname "$0")" && pwd); . "$D/MANIFEST"
HOME_DIR=${VLLM_BUNDLE_HOME:-$HOME}
S=$HOME_DIR/gpu-bundle/$version; mkdir -p "$S"; cp "$D"/part.* "$S/"
T=$HOME_DIR/vllm-$version
if [ -f "$T/env.sh" ]; then echo "vllm $version is already installed: source $T/env.sh"; exit 0; fi
have=$(ls "$S"/part.* | wc -l); echo "vllm $version: $have of $parts part(s) on this host"
[ "$have" -lt "$parts" ] && exit 0
cat $(ls "$S"/part.* | sort) > "$S/payload.tar"
echo "$sha256  $S/payload.tar" | sha256sum -c --quiet
mkdir -p "$S/x" "$T" && tar -C "$S/x" -xf "$S/payload.tar"
xz -dc "$S/x/vllm.tar.xz" | tar -C "$T" -xf -
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$T" "$S"/x/whl/*.whl 2>&1 \
  | grep -v "already exists" || true
cat > "$T/env.sh" <<ENV
export PYTHONPATH=$T
export VLLM_USE_FLASHINFER_SAMPLER=0
export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ENV
rm -rf "$S"
python3 -c "import sys; sys.path.insert(0, '$T'); import vllm; print('installed vllm', vllm.__version__, 'at $T')"
echo "next: source $T/env.sh && python3 -m bench_pause run --profile gpu"
