#!/usr/bin/env bash
# One command to a working local system: broker + collector (SQLite) + an agent on this host.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/dev-env.sh"
cd "$ROOT"
exec python "$ROOT/packaging/dev_up.py" "$@"
