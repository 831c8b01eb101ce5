#!/usr/bin/env bash
# On a GPU machine with torch but no package index: install .whl/ (benchmarks/offline_gpu/pack.sh)
# and this repo into /tmp, then benchmarks/gpu_speed.py with its JSON in ${OUT:-benchmarks/results}.
# Environment: METHODS (comma list, default every method), BUDGET (seconds before the benchmark is
# stopped; it writes its JSON after every method, so what finished is kept), GPU_SPEED_ARGS.
set -u
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
OUT="${OUT:-benchmarks/results}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
python3 - <<'PY' || exit 1
import os, zipfile  # unzip keeping the executable bits (raylet, gcs_server)
archive = zipfile.ZipFile(".whl/ray_trim.zip")
for info in archive.infolist():
    path = archive.extract(info, "/tmp/site")
    if info.external_attr >> 16 and not info.is_dir():
        os.chmod(path, (info.external_attr >> 16) & 0o777)
PY
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/lsite . || exit 1
export PYTHONPATH=/tmp/lsite:/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# -P: the repo's own logicad/ folder would shadow the installed package
python3 -P -c "import torch, timm, ray, logicad.models; print('torch', torch.__version__, 'timm', timm.__version__, 'ray', ray.__version__)" || exit 1
timeout "${BUDGET:-3000}" python3 benchmarks/gpu_speed.py --out "$OUT/gpu_speed.json" --no-peer \
  ${METHODS:+--methods "$METHODS"} ${GPU_SPEED_ARGS:-} 2>&1 | tee "$OUT/gpu_speed.log"
