#!/usr/bin/env bash
# The working tree travels with every lent-machine call, 64 MiB with what `carry` adds: a
# 63 MB bundle part leaves room for the code alone. This moves docs/ and results/ aside for
# the install calls and back afterwards, so that a step's tarball can be unpacked between
# calls and nothing is committed as deleted meanwhile.
#
#   bash tools/gpu-tree.sh out [KEEP...]   # docs/ and results/ to $GPU_STASH, but for the
#                                          #   results/KEEP named (asv: the asv calls need
#                                          #   results/asv and its machine.json, 252 KB)
#   bash tools/gpu-tree.sh in              # everything back beside what tarballs have since
#                                          #   unpacked; a name in both places is refused
#   bash tools/gpu-tree.sh size            # what travels now (git's files, ignored ones left out)
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=${GPU_STASH:-$(cd .. && pwd)/gpu-stash-$(basename "$PWD")}

case ${1:-size} in
  out)
    shift
    [ -e "$STASH" ] && { echo "gpu-tree: $STASH exists: run 'bash tools/gpu-tree.sh in' first" >&2; exit 1; }
    [ -d docs ] || { echo "gpu-tree: no docs/ here to move" >&2; exit 1; }
    mkdir -p "$STASH/results"
    mv docs "$STASH/docs"
    for entry in results/* results/.[!.]*; do
      [ -e "$entry" ] || continue
      keep=0
      for k in "$@"; do [ "$entry" = "results/$k" ] && keep=1; done
      [ "$keep" = 1 ] || mv "$entry" "$STASH/results/"
    done
    echo "gpu-tree: docs/ and results/ (but ${*:-nothing}) in $STASH"
    ;&
  size)
    { git ls-files -co --exclude-standard -z | du -ch --files0-from=- 2>/dev/null || true; } | tail -1
    ;;
  in)
    [ -d "$STASH" ] || { echo "gpu-tree: no stash at $STASH" >&2; exit 1; }
    entries=()
    [ -e "$STASH/docs" ] && entries+=(docs)
    for entry in "$STASH"/results/* "$STASH"/results/.[!.]*; do
      [ -e "$entry" ] && entries+=("results/${entry##*/}")
    done
    for entry in "${entries[@]}"; do
      [ -e "$entry" ] && { echo "gpu-tree: $entry is in both the tree and $STASH: merge it by hand" >&2; exit 1; }
    done
    mkdir -p results
    for entry in "${entries[@]}"; do mv "$STASH/$entry" "$entry"; done
    rmdir "$STASH/results" "$STASH"
    git status --short | head -5
    echo "gpu-tree: back from $STASH"
    ;;
  *) echo "usage: bash tools/gpu-tree.sh out [KEEP...] | in | size" >&2; exit 2 ;;
esac
