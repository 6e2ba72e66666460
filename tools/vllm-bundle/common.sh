# Sourced by make-bundle and make-runtime: what both need to fetch wheels for the GPU host
# (CPython 3.12, x86-64 Linux) and to cut a payload into parts that travel one at a time.

PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp)
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_18_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_27_x86_64 manylinux_2_28_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 \
         manylinux_2_5_x86_64 manylinux1_x86_64; do
  PLAT+=(--platform "$p")
done

quiet() { grep -v "^WARNING: Location" || true; }

# pin WHEEL NAME: the version WHEEL's metadata pins NAME to ("==X" or "~=X"), empty if none.
pin() {
  python3 - "$1" "$2" <<'PY'
import re, sys, zipfile
whl, name = sys.argv[1], sys.argv[2].lower().replace('_', '-')
z = zipfile.ZipFile(whl)
meta = z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode()
for line in meta.splitlines():
    if not line.startswith('Requires-Dist:') or 'extra ==' in line:
        continue
    d = line.split(':', 1)[1].split(';')[0].strip()
    m = re.match(r'([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*\(?\s*((?:==|~=)\s*[0-9][^,)\s]*)', d)
    if m and m.group(1).lower().replace('_', '-') == name:
        print(m.group(2).replace(' ', ''))
        break
PY
}

# split_parts PAYLOAD_TAR OUT PART_MB HERE KEY=VALUE...: cut PAYLOAD_TAR into parts OUT/p0,
# OUT/p1, ..., each with its part, a MANIFEST (the KEY=VALUE lines, the part count, the
# payload's SHA-256) and receive.sh (from HERE).
split_parts() {
  local tar=$1 out=$2 mb=$3 here=$4; shift 4
  local sha n i=0 f d
  sha=$(sha256sum "$tar" | cut -d' ' -f1)
  rm -rf "$out"; mkdir -p "$out"
  split -b "${mb}000000" -d -a 2 "$tar" "$tar.part."
  n=$(ls "$tar".part.* | wc -l)
  for f in $(ls "$tar".part.* | sort); do
    d="$out/p$i"; mkdir -p "$d"; mv "$f" "$d/part.$(printf %02d $i)"
    { printf '%s\n' "$@"; printf 'parts=%s\nsha256=%s\n' "$n" "$sha"; } > "$d/MANIFEST"
    cp "$here/receive.sh" "$d/receive.sh"; i=$((i + 1))
  done
  du -sh "$out"/p*
}

# strip_debug DIR: drop the debug sections of every shared library under DIR. Code, symbols
# and CUDA fatbins stay; triton's libtriton.so loses ~270 MB of DWARF (~45 MB xz-compressed,
# nearly a part: one call fewer on every lent machine).
strip_debug() {
  find "$1" -type f -name '*.so*' -print0 | xargs -0 -r -n 50 strip --strip-debug 2>/dev/null || true
}
