#!/usr/bin/env bash
# Stop the Ray processes started by cluster/local_up.sh (`ray stop --force` if some hang, G3).
set -euo pipefail
export RAY_AUTH_MODE=token
ray stop "$@"
