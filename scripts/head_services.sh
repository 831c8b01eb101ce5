#!/usr/bin/env bash
# On the head: install and start the MLflow tracking server and its backup loop as systemd
# services (run by head_start_ray_commands; needs passwordless sudo, as the AWS images have).
#
#   logicad-mlflow         scripts/mlflow_head.sh: restore ~/mlflow.db from the bucket when it is
#                          missing, then `mlflow server` on the head's private IP (the cluster's
#                          nodes only). `systemctl start` fails when the restore fails, and so does
#                          `ray up`: an empty store never replaces a backup that could not be read.
#   logicad-mlflow-backup  a consistent copy of ~/mlflow.db to s3://BUCKET/mlflow-backup every
#                          LOGICAD_MLFLOW_BACKUP_INTERVAL_S seconds and once more when it stops
#                          (`systemctl stop`, machine shutdown: it is ordered after the network, so
#                          it stops, and backs up, before the network goes down).
# With LOGICAD_MLFLOW_BACKEND_URI (a managed database) there is no backup service.
# Usage: source ~/logicad.env && head_services.sh HEAD_PRIVATE_IP [PORT]
# LOGICAD_UNIT_DIR=DIR writes the unit files there and starts nothing (a dry run, for tests).
set -euo pipefail
HOST="${1:?usage: head_services.sh HEAD_PRIVATE_IP [PORT]}"
PORT="${2:-5000}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
USER_NAME="$(id -un)"
ENV_FILE="$HOME/mlflow-server.env"   # systemd's format: KEY=VALUE, no `export`, no expansion

{
  echo "HOME=$HOME"
  echo "PYTHON=$HOME/venv/bin/python"
  echo "AWS_DEFAULT_REGION=${AWS_DEFAULT_REGION:?source ~/logicad.env first}"
  echo "LOGICAD_MLFLOW_ARTIFACTS=${LOGICAD_MLFLOW_ARTIFACTS:?}"
  echo "LOGICAD_MLFLOW_BACKUP=${LOGICAD_MLFLOW_BACKUP:-}"
  echo "LOGICAD_MLFLOW_DB=$HOME/mlflow.db"
  echo "LOGICAD_MLFLOW_HOST=$HOST"
  echo "LOGICAD_MLFLOW_PORT=$PORT"
  echo "LOGICAD_MLFLOW_BACKEND_URI=${LOGICAD_MLFLOW_BACKEND_URI:-}"
  echo "LOGICAD_MLFLOW_APP=${LOGICAD_MLFLOW_APP:-}"
  # MLflow's login app (LOGICAD_MLFLOW_APP=basic-auth): the first admin's password, own config
  [ -n "${MLFLOW_AUTH_ADMIN_PASSWORD:-}" ] && echo "MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_AUTH_ADMIN_PASSWORD"
  [ -n "${MLFLOW_AUTH_CONFIG_PATH:-}" ] && echo "MLFLOW_AUTH_CONFIG_PATH=$MLFLOW_AUTH_CONFIG_PATH"
  true
} > "$ENV_FILE"
chmod 600 "$ENV_FILE"

UNIT_DIR="${LOGICAD_UNIT_DIR:-/etc/systemd/system}"
SUDO=sudo
[ -n "${LOGICAD_UNIT_DIR:-}" ] && SUDO=""

unit() {  # unit NAME DESCRIPTION EXEC AFTER [EXEC_START_PRE]
  $SUDO tee "$UNIT_DIR/$1.service" > /dev/null <<UNIT
[Unit]
Description=$2
Wants=network-online.target
After=network-online.target $4

[Service]
User=$USER_NAME
EnvironmentFile=$ENV_FILE
WorkingDirectory=$HOME
${5:+ExecStartPre=$5}
ExecStart=$3
Restart=on-failure
RestartSec=10
TimeoutStopSec=120
StandardOutput=append:$HOME/$1.log
StandardError=append:$HOME/$1.log

[Install]
WantedBy=multi-user.target
UNIT
}

RESTORE=""
if [ -z "${LOGICAD_MLFLOW_BACKEND_URI:-}" ]; then
  # Also done by mlflow_head.sh; here it makes `systemctl start` wait for it and fail with it.
  RESTORE="$HOME/venv/bin/python -m logicad.pipelines.registry.backup restore --db $HOME/mlflow.db --to ${LOGICAD_MLFLOW_BACKUP:?}"
fi
# Ordering: the server runs After= the backup loop, so at shutdown the server stops first and
# the loop's last backup holds everything the server wrote.
unit logicad-mlflow "logicad MLflow tracking server" "/bin/bash $REPO/scripts/mlflow_head.sh" \
  "${RESTORE:+logicad-mlflow-backup.service}" "$RESTORE"
services=(logicad-mlflow)
if [ -n "$RESTORE" ]; then
  unit logicad-mlflow-backup "logicad MLflow store backup to S3" \
    "$HOME/venv/bin/python -m logicad.pipelines.registry.backup loop --db $HOME/mlflow.db --to ${LOGICAD_MLFLOW_BACKUP:?} --interval ${LOGICAD_MLFLOW_BACKUP_INTERVAL_S:-300}" ""
  services+=(logicad-mlflow-backup)
fi
[ -n "${LOGICAD_UNIT_DIR:-}" ] && { echo "wrote ${services[*]} to $UNIT_DIR"; exit 0; }
sudo systemctl daemon-reload
# The server first: its start runs the restore (and fails with it); then the backup loop
# (which skips its rounds while there is no store yet).
for service in "${services[@]}"; do
  sudo systemctl enable --now "$service"
done
for _ in $(seq 60); do
  curl -sf "http://$HOST:$PORT/health" > /dev/null && { echo "MLflow is up on http://$HOST:$PORT"; exit 0; }
  systemctl is-failed --quiet logicad-mlflow && break
  sleep 2
done
echo "MLflow did not come up; see ~/logicad-mlflow.log and: systemctl status logicad-mlflow" >&2
exit 1
