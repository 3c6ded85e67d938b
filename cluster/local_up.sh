#!/usr/bin/env bash
# Start a single-node Ray head on this machine for `cluster/submit.sh`, next to any other Ray:
#   NUM_CPUS=8 NUM_GPUS=1 cluster/local_up.sh
# Every port and the temp dir come from the environment (defaults = Ray's, except the temp dir),
# so a second head only needs other values, e.g.
#   RAY_TEMP_DIR=/tmp/rayb GCS_PORT=6380 DASHBOARD_PORT=8266 CLIENT_PORT=10101 \
#     DASHBOARD_AGENT_PORT=52366 MIN_WORKER_PORT=20000 MAX_WORKER_PORT=29999 cluster/local_up.sh
# The head runs as `ray start --block` in its own session (process group); its pid is recorded in
# $RAY_TEMP_DIR/local_up.pid and cluster/local_down.sh stops exactly that group (never `ray stop`,
# which kills every Ray on the machine). Its own --temp-dir also keeps it out of
# /tmp/ray/ray_current_cluster, so a plain `ray.init()` elsewhere does not attach to it.
# Auth (stack-feasibility G2): Ray 2.60 enables token auth; this project uses it everywhere.
# `ray start` runs with RAY_AUTH_MODE=token (the token lives in ~/.ray/auth_token) and every
# client (ray job submit/status/logs, ray status) must export RAY_AUTH_MODE=token too.
set -euo pipefail

NUM_CPUS="${NUM_CPUS:-$(nproc)}"
# Train workers + Ray Data read tasks deadlock on <4 logical CPUs (G1): oversubscribe a little.
if [ "$NUM_CPUS" -lt 4 ]; then NUM_CPUS=4; fi
RAY_TEMP_DIR="${RAY_TEMP_DIR:-/tmp/ray-local-$(id -u)}"  # short: Ray's unix sockets live under it
GCS_PORT="${GCS_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
CLIENT_PORT="${CLIENT_PORT:-10001}"
DASHBOARD_AGENT_PORT="${DASHBOARD_AGENT_PORT:-52365}"
MIN_WORKER_PORT="${MIN_WORKER_PORT:-10002}"
MAX_WORKER_PORT="${MAX_WORKER_PORT:-19999}"
# Ray picks free ports for these unless set: NODE_MANAGER_PORT OBJECT_MANAGER_PORT
# METRICS_EXPORT_PORT RUNTIME_ENV_AGENT_PORT DASHBOARD_AGENT_GRPC_PORT
START_TIMEOUT_S="${START_TIMEOUT_S:-120}"

export RAY_AUTH_MODE=token
export RAY_USAGE_STATS_ENABLED=0

mkdir -p "$RAY_TEMP_DIR"
PID_FILE="$RAY_TEMP_DIR/local_up.pid"
if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
  echo "error: a head started by local_up.sh is already running (pid $(cat "$PID_FILE"), $RAY_TEMP_DIR); stop it with cluster/local_down.sh" >&2
  exit 2
fi
rm -f "$RAY_TEMP_DIR/ray_current_cluster"

args=(--head --block --temp-dir "$RAY_TEMP_DIR" --num-cpus "$NUM_CPUS"
      --port "$GCS_PORT" --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT"
      --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$DASHBOARD_AGENT_PORT"
      --min-worker-port "$MIN_WORKER_PORT" --max-worker-port "$MAX_WORKER_PORT" --disable-usage-stats)
for var_flag in NODE_MANAGER_PORT:--node-manager-port OBJECT_MANAGER_PORT:--object-manager-port \
    METRICS_EXPORT_PORT:--metrics-export-port RUNTIME_ENV_AGENT_PORT:--runtime-env-agent-port \
    DASHBOARD_AGENT_GRPC_PORT:--dashboard-agent-grpc-port; do
  name="${var_flag%%:*}"
  value="${!name:-}"
  if [ -n "$value" ]; then args+=("${var_flag#*:}" "$value"); fi
done
if [ -n "${NUM_GPUS:-}" ]; then args+=(--num-gpus "$NUM_GPUS"); fi

# setsid: the head gets its own process group, which local_down.sh signals as a whole.
setsid ray start "${args[@]}" > "$RAY_TEMP_DIR/local_up.log" 2>&1 < /dev/null &
echo $! > "$PID_FILE"

# Ready when `ray start` has written the head's address into its temp dir.
for _ in $(seq "$START_TIMEOUT_S"); do
  if [ -s "$RAY_TEMP_DIR/ray_current_cluster" ]; then break; fi
  if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    echo "error: ray start exited; its log ($RAY_TEMP_DIR/local_up.log) ends with:" >&2
    tail -5 "$RAY_TEMP_DIR/local_up.log" >&2
    rm -f "$PID_FILE"
    exit 1
  fi
  sleep 1
done
if [ ! -s "$RAY_TEMP_DIR/ray_current_cluster" ]; then
  echo "error: the head did not come up in ${START_TIMEOUT_S}s (log: $RAY_TEMP_DIR/local_up.log); stop it with cluster/local_down.sh" >&2
  exit 1
fi

cat <<MSG

Ray is up (pid $(cat "$PID_FILE"), temp dir $RAY_TEMP_DIR, GCS 127.0.0.1:${GCS_PORT},
dashboard on 127.0.0.1:${DASHBOARD_PORT} only). In every shell that talks to it:

  export RAY_AUTH_MODE=token
  export RAY_ADDRESS=http://127.0.0.1:${DASHBOARD_PORT}

then (storage paths must be absolute or s3:// under ray job submit):
  python -m jobs.prepare_data generated /tmp/gen-raw /tmp/gen-train --train-per-class 40 --val-per-class 10
  cluster/submit.sh pretrain --config jobs/configs/smoke.yaml --data.manifest=/tmp/gen-train --run.storage_path="\$PWD/runs"
stop: RAY_TEMP_DIR=$RAY_TEMP_DIR cluster/local_down.sh
MSG
