#!/usr/bin/env bash
# Write ~/logicad.env, the environment every logicad process on a node sources (Ray's workers
# and the jobs' drivers inherit it). Usage: node_env.sh BUCKET
# The region is not written here: it is read from the instance's metadata (IMDSv2), so
# cluster.yaml names it once (provider.region) and every node agrees with it.
set -euo pipefail
BUCKET="${1:?usage: node_env.sh BUCKET}"

token=$(curl -sf -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 60")
region=$(curl -sf -H "X-aws-ec2-metadata-token: $token" http://169.254.169.254/latest/meta-data/placement/region)
[ -n "$region" ] || { echo "node_env.sh: no region from the EC2 instance metadata" >&2; exit 1; }

cat > "$HOME/logicad.env" <<ENV
export AWS_DEFAULT_REGION=$region
export LOGICAD_BUCKET=$BUCKET
export LOGICAD_MLFLOW_ARTIFACTS=s3://$BUCKET/mlflow-artifacts
export LOGICAD_MLFLOW_BACKUP=s3://$BUCKET/mlflow-backup
export LOGICAD_MLFLOW_BACKUP_INTERVAL_S=300
export LOGICAD_CACHE=\$HOME/.cache/logicad
export NO_ALBUMENTATIONS_UPDATE=1
export RAY_USAGE_STATS_ENABLED=0
# Settings of your own (a managed MLflow database, MLflow's login, credentials) that must not be
# in the repository: ~/logicad.local.env, e.g. mounted from your machine by cluster.yaml's
# file_mounts. Read last, so it may override anything above.
if [ -f "\$HOME/logicad.local.env" ]; then . "\$HOME/logicad.local.env"; fi
ENV
echo "wrote $HOME/logicad.env (region $region, bucket $BUCKET)"
