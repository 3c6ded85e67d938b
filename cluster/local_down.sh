#!/usr/bin/env bash
# Stop the head started by cluster/local_up.sh, and only that one: its process group (recorded
# in $RAY_TEMP_DIR/local_up.pid), then any process still naming its temp dir. Never `ray stop`,
# which kills every Ray on the machine (a user's own cluster, other heads).
#   cluster/local_down.sh                          # the default RAY_TEMP_DIR of local_up.sh
#   RAY_TEMP_DIR=/tmp/rayb cluster/local_down.sh   # a second head
set -euo pipefail

RAY_TEMP_DIR="${RAY_TEMP_DIR:-/tmp/ray-local-$(id -u)}"
STOP_TIMEOUT_S="${STOP_TIMEOUT_S:-30}"
PID_FILE="$RAY_TEMP_DIR/local_up.pid"

# pids of live processes whose command line names the temp dir (the head's Ray processes)
procs_of_head() {
  local d
  for d in /proc/[0-9]*; do
    [ "${d#/proc/}" = "$$" ] && continue
    if tr '\0' ' ' < "$d/cmdline" 2>/dev/null | grep -qF -- "$RAY_TEMP_DIR/"; then echo "${d#/proc/}"; fi
  done
}

# true while a live (not zombie) process is in the head's process group
group_alive() {
  local d s
  for d in /proc/[0-9]*; do
    s="$(sed 's/.*) //' "$d/stat" 2>/dev/null)" || continue
    # shellcheck disable=SC2086  # fields: state ppid pgrp ...
    set -- $s
    [ "${1:-Z}" != Z ] && [ "${3:-}" = "$PGID" ] && return 0
  done
  return 1
}

if [ ! -f "$PID_FILE" ]; then
  echo "error: $PID_FILE not found: no head started by cluster/local_up.sh with RAY_TEMP_DIR=$RAY_TEMP_DIR" >&2
  exit 2
fi
PGID="$(cat "$PID_FILE")"
if kill -0 "$PGID" 2>/dev/null && tr '\0' ' ' < "/proc/$PGID/cmdline" | grep -qF -- "$RAY_TEMP_DIR"; then
  kill -TERM -- "-$PGID" 2>/dev/null || true
fi
for _ in $(seq "$STOP_TIMEOUT_S"); do
  if ! group_alive && [ -z "$(procs_of_head)" ]; then break; fi
  sleep 1
done
kill -KILL -- "-$PGID" 2>/dev/null || true
left="$(procs_of_head)"
if [ -n "$left" ]; then
  # shellcheck disable=SC2086  # one pid per word
  kill -KILL $left 2>/dev/null || true
fi
rm -f "$PID_FILE" "$RAY_TEMP_DIR/ray_current_cluster"
echo "stopped the head in $RAY_TEMP_DIR (process group $PGID)"
