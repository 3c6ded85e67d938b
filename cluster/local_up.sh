#!/usr/bin/env bash
# Start a single-node Ray cluster on this machine for `cluster/submit.sh`.
#   NUM_CPUS=8 NUM_GPUS=1 cluster/local_up.sh
# Auth (stack-feasibility G2): Ray 2.60 enables token auth; this project uses it everywhere.
# `ray start` runs with RAY_AUTH_MODE=token (the token lives in ~/.ray/auth_token) and every
# client (ray job submit/status/logs, ray status) must export RAY_AUTH_MODE=token too.
set -euo pipefail

NUM_CPUS="${NUM_CPUS:-$(nproc)}"
# Train workers + Ray Data read tasks deadlock on <4 logical CPUs (G1): oversubscribe a little.
if [ "$NUM_CPUS" -lt 4 ]; then NUM_CPUS=4; fi
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"

export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0

args=(--head --num-cpus "$NUM_CPUS" --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT"
      --disable-usage-stats)
if [ -n "${NUM_GPUS:-}" ]; then args+=(--num-gpus "$NUM_GPUS"); fi

ray start "${args[@]}"

cat <<MSG

Ray is up (dashboard on 127.0.0.1:${DASHBOARD_PORT} only). In every shell that talks to it:

  export RAY_AUTH_MODE=token
  export RAY_ADDRESS=http://127.0.0.1:${DASHBOARD_PORT}

then: cluster/submit.sh pretrain --config jobs/configs/smoke.yaml
stop: cluster/local_down.sh
MSG
