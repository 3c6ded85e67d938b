#!/usr/bin/env bash
# Submit a job from the repo root to a running Ray cluster:
#   cluster/submit.sh pretrain --config jobs/configs/smoke.yaml       # or JOB=pretrain cluster/submit.sh ...
# RAY_ADDRESS defaults to the local dashboard (cluster/local_up.sh, or an SSH port-forward to a
# cloud head: `ray dashboard cluster/cluster.yaml`). Extra ray-job flags go in RAY_JOB_ARGS,
# e.g. RAY_JOB_ARGS='--entrypoint-num-gpus 1'. FOLLOW=1 streams the logs after submitting.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${JOB:-}" ]; then
  if [ $# -lt 1 ]; then
    echo "usage: cluster/submit.sh JOB [args...]   (JOB = pretrain | sweep | finetune | evaluate | report)" >&2
    exit 2
  fi
  JOB="$1"
  shift
fi

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"   # same mode as the cluster (see local_up.sh)
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
SUBMISSION_ID="${SUBMISSION_ID:-${JOB}-$(date -u +%Y%m%d-%H%M%S)-$$}"

# shellcheck disable=SC2086  # RAY_JOB_ARGS is split on purpose
ray job submit --no-wait --submission-id "$SUBMISSION_ID" \
  --working-dir . --runtime-env cluster/runtime_env.yaml ${RAY_JOB_ARGS:-} \
  -- python -m "jobs.${JOB}" "$@"

cat <<MSG
job id: ${SUBMISSION_ID}
follow: ray job logs -f ${SUBMISSION_ID}
status: ray job status ${SUBMISSION_ID}      stop: ray job stop ${SUBMISSION_ID}
dashboard: ${RAY_ADDRESS} (Jobs tab)
MSG

if [ "${FOLLOW:-0}" = "1" ]; then
  exec ray job logs -f "$SUBMISSION_ID"
fi
