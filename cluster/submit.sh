#!/usr/bin/env bash
# Submit a job from the repo root to a running Ray cluster:
#   cluster/submit.sh pretrain --config jobs/configs/smoke.yaml \
#       --data.manifest=/tmp/gen-train --run.storage_path="$PWD/runs"   # or JOB=pretrain ...
# Paths the job writes must be absolute (on storage the head sees) or s3://: the job runs in a
# temporary copy of this folder, and the jobs refuse relative output paths there.
# RAY_ADDRESS defaults to the local dashboard (cluster/local_up.sh, or an SSH port-forward to a
# cloud head: `ray dashboard cluster/cluster.yaml`). Extra ray-job flags go in RAY_JOB_ARGS,
# e.g. RAY_JOB_ARGS='--entrypoint-num-gpus 1'. FOLLOW=1 streams the logs until the job ends and
# exits with the job's outcome: 0 if it succeeded, 1 if it failed or was stopped.
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
  ray job logs -f "$SUBMISSION_ID" || true
  status="$(ray job status "$SUBMISSION_ID" 2>&1 | tail -n 20)"
  if grep -qF "Job '${SUBMISSION_ID}' succeeded" <<<"$status"; then
    echo "job ${SUBMISSION_ID} succeeded"
    exit 0
  fi
  echo "error: job ${SUBMISSION_ID} did not succeed: $(grep -m1 -E "failed|was stopped|Status for job|Status message" <<<"$status" || tail -n 1 <<<"$status")" >&2
  exit 1
fi
