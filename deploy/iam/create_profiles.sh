#!/usr/bin/env bash
# Create (or update) the two IAM roles and instance profiles that cluster.yaml names:
#   logicad-head    Ray's autoscaler on the head (EC2 for this cluster's nodes, iam:PassRole of
#                   logicad-worker only, the image's SSM parameter) + S3: data read; ray_results,
#                   mlflow-artifacts, mlflow-backup read/write   (head-autoscaler-policy.json, head-s3-policy.json)
#   logicad-worker  S3 only: data read; ray_results read/write   (worker-s3-policy.json)
# The policies are templates: ${BUCKET} and ${ACCOUNT_ID} are filled in here.
# Usage: deploy/iam/create_profiles.sh BUCKET      (AWS CLI v2 with IAM rights; run once per account)
# Whoever runs `ray up` also needs iam:PassRole on logicad-head (and EC2 rights to start it).
set -euo pipefail
BUCKET="${1:?usage: create_profiles.sh BUCKET}"
HERE="$(cd "$(dirname "$0")" && pwd)"
ACCOUNT_ID="$(aws sts get-caller-identity --query Account --output text)"

render() {  # the policy file with its placeholders filled in
  sed -e "s/\${BUCKET}/$BUCKET/g" -e "s/\${ACCOUNT_ID}/$ACCOUNT_ID/g" "$HERE/$1"
}

role() {  # role NAME POLICY_FILE...
  local name="$1"; shift
  aws iam get-role --role-name "$name" > /dev/null 2>&1 ||
    aws iam create-role --role-name "$name" --assume-role-policy-document "file://$HERE/ec2-trust-policy.json" > /dev/null
  for policy in "$@"; do
    aws iam put-role-policy --role-name "$name" --policy-name "${policy%.json}" \
      --policy-document "$(render "$policy")"
  done
  aws iam get-instance-profile --instance-profile-name "$name" > /dev/null 2>&1 || {
    aws iam create-instance-profile --instance-profile-name "$name" > /dev/null
    aws iam add-role-to-instance-profile --instance-profile-name "$name" --role-name "$name"
  }
  echo "instance profile $name: role $name with $*"
}

role logicad-worker worker-s3-policy.json
role logicad-head head-autoscaler-policy.json head-s3-policy.json
echo "done: cluster.yaml names these profiles (IamInstanceProfile: {Name: logicad-head | logicad-worker})"
