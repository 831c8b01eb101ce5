#!/usr/bin/env bash
# The head's MLflow tracking server: restore the sqlite store from the bucket when it is
# missing (a new head after `ray down` or a lost head), then serve. The systemd unit that
# scripts/head_services.sh writes runs this; tests/test_tracking_backup.py runs it the same way.
#
# Environment (scripts/node_env.sh writes most of it to ~/logicad.env):
#   LOGICAD_MLFLOW_ARTIFACTS   s3://BUCKET/mlflow-artifacts: artifacts, proxied (clients need no S3 keys)
#   LOGICAD_MLFLOW_BACKUP      s3://BUCKET/mlflow-backup: where the sqlite store is backed up
#   LOGICAD_MLFLOW_DB          the sqlite file (default ~/mlflow.db)
#   LOGICAD_MLFLOW_HOST        address to bind (the head's private IP: the cluster's nodes only)
#   LOGICAD_MLFLOW_PORT        default 5000
#   LOGICAD_MLFLOW_WORKERS     server worker processes (default 2)
#   LOGICAD_MLFLOW_BACKEND_URI a managed database instead of sqlite (postgresql://..., mysql+pymysql://...):
#                              no restore and no backup loop; the database keeps the metadata
#   LOGICAD_MLFLOW_APP         basic-auth: MLflow's login app (users and permissions)
#   PYTHON                     the interpreter with logicad and mlflow (default: python3)
set -euo pipefail

PYTHON="${PYTHON:-python3}"
DB="${LOGICAD_MLFLOW_DB:-$HOME/mlflow.db}"
: "${LOGICAD_MLFLOW_ARTIFACTS:?set LOGICAD_MLFLOW_ARTIFACTS=s3://BUCKET/mlflow-artifacts}"
: "${LOGICAD_MLFLOW_HOST:?set LOGICAD_MLFLOW_HOST to the private IP of the head}"

if [ -n "${LOGICAD_MLFLOW_BACKEND_URI:-}" ]; then
  BACKEND="$LOGICAD_MLFLOW_BACKEND_URI"
else
  : "${LOGICAD_MLFLOW_BACKUP:?set LOGICAD_MLFLOW_BACKUP=s3://BUCKET/mlflow-backup}"
  # Fails (and so does the start) when the bucket cannot be read: never serve an empty store
  # in place of a backup that could not be fetched.
  "$PYTHON" -m logicad.pipelines.registry.backup restore --db "$DB" --to "$LOGICAD_MLFLOW_BACKUP"
  BACKEND="sqlite:///$DB"
fi

APP=()
if [ -n "${LOGICAD_MLFLOW_APP:-}" ]; then
  APP=(--app-name "$LOGICAD_MLFLOW_APP")
fi

exec "$PYTHON" -m mlflow server --backend-store-uri "$BACKEND" \
  --artifacts-destination "$LOGICAD_MLFLOW_ARTIFACTS" \
  --host "$LOGICAD_MLFLOW_HOST" --port "${LOGICAD_MLFLOW_PORT:-5000}" \
  --workers "${LOGICAD_MLFLOW_WORKERS:-2}" "${APP[@]}"
