#!/usr/bin/env bash
# One command to run the whole test suite (installs what is missing first).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/dev-env.sh"
cd "$ROOT"
ruff check .
# The suite starts hundreds of Python processes (collectors, agents, their CLIs): let them load
# compiled modules instead of compiling edgemon anew each time, even where the environment says
# otherwise (__pycache__ is ignored by git and left out of every package).
unset PYTHONDONTWRITEBYTECODE
# Two worker processes (pytest-xdist), each test file whole on one worker so that its module
# fixtures (built packages, browsers, servers) are made once: most tests wait on real brokers,
# databases and browsers, so two run side by side on two cores. EDGEMON_TEST_WORKERS=0: one
# process, as before.
exec python -m pytest -q -n "${EDGEMON_TEST_WORKERS:-2}" --dist loadfile "$@"
