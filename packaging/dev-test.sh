#!/usr/bin/env bash
# One command to run the whole test suite (installs what is missing first).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/dev-env.sh"
cd "$ROOT"
ruff check .
exec python -m pytest -q "$@"
