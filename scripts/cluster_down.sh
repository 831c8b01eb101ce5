#!/usr/bin/env bash
# Take the cluster down without losing tracking metadata: stop the head's MLflow server and its
# backup loop first (the loop's last backup then holds everything the server wrote), then
# `ray down`. Usage: scripts/cluster_down.sh [cluster.yaml]
set -euo pipefail
CONFIG="${1:-cluster.yaml}"
ray exec "$CONFIG" "sudo systemctl stop logicad-mlflow logicad-mlflow-backup; tail -n 3 ~/logicad-mlflow-backup.log"
ray down -y "$CONFIG"
