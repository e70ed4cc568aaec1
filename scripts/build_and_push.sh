#!/usr/bin/env bash
# Build the training/serving image and push it to Amazon ECR.
#
#   scripts/build_and_push.sh [--region R] [--repo NAME] [--tag T] [--cpu]
#
#   --region  AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION, then `aws configure`)
#   --repo    ECR repository name, created if missing (default: casting-maskrcnn)
#   --tag     image tag (default: latest)
#   --cpu     build on the CPU TensorFlow base (smoke tests), not the GPU one
#
# Needs the AWS CLI and docker. The account comes from STS. Stops at the first error.
# The last line printed is the pushed image URI.
set -euo pipefail

die() { echo "build_and_push: error: $*" >&2; exit 1; }

region="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"
repo="casting-maskrcnn"
tag="latest"
cpu=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --region) [[ $# -ge 2 ]] || die "--region needs a value"; region="$2"; shift 2 ;;
    --repo)   [[ $# -ge 2 ]] || die "--repo needs a value"; repo="$2"; shift 2 ;;
    --tag)    [[ $# -ge 2 ]] || die "--tag needs a value"; tag="$2"; shift 2 ;;
    --cpu)    cpu=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
  esac
done

command -v aws >/dev/null || die "the AWS CLI (aws) is not on PATH"
command -v docker >/dev/null || die "docker is not on PATH"
if [[ -z "$region" ]]; then
  region="$(aws configure get region || true)"
fi
[[ -n "$region" ]] || die "no region: pass --region or set AWS_REGION"
[[ "$repo" =~ ^[a-z0-9]+([._/-][a-z0-9]+)*$ ]] || die "invalid repository name: $repo"
[[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "invalid tag: $tag"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

account="$(aws sts get-caller-identity --region "$region" --query Account --output text)"
[[ "$account" =~ ^[0-9]{12}$ ]] || die "STS returned no account id: '$account'"
echo "account $account, region $region, repository $repo, tag $tag" >&2

# Create the repository if it is missing; any other error stops here.
if ! err="$(aws ecr describe-repositories --region "$region" --repository-names "$repo" 2>&1 >/dev/null)"; then
  if [[ "$err" == *RepositoryNotFoundException* ]]; then
    echo "creating ECR repository $repo" >&2
    aws ecr create-repository --region "$region" --repository-name "$repo" \
      --image-scanning-configuration scanOnPush=true >/dev/null
  else
    die "describe-repositories failed: $err"
  fi
fi
uri="$(aws ecr describe-repositories --region "$region" --repository-names "$repo" \
  --query 'repositories[0].repositoryUri' --output text)"
[[ -n "$uri" && "$uri" != None ]] || die "no URI for repository $repo"
registry="${uri%%/*}"

# Log in (the password goes through a pipe, never the command line).
aws ecr get-login-password --region "$region" \
  | docker login --username AWS --password-stdin "$registry"

build_args=()
if [[ "$cpu" == 1 ]]; then
  build_args+=(--build-arg "BASE_IMAGE=tensorflow/tensorflow:2.21.0")
fi
docker build --platform linux/amd64 ${build_args[@]+"${build_args[@]}"} -t "$repo:$tag" -f "$root/Dockerfile" "$root"
docker tag "$repo:$tag" "$uri:$tag"
docker push "$uri:$tag"

echo "$uri:$tag"
