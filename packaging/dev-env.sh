# Sourced by dev-up.sh and dev-test.sh: make sure mosquitto and a project virtualenv exist.
# Idempotent; safe to run again. Installs Debian/Ubuntu packages only when missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDGEMON_VENV:-$ROOT/.venv}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
# the packaging tests check the units with systemd-analyze and build .debs with dpkg-deb
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# ... strip and check them (binutils), run lintian on them, render the manual pages (groff);
# the SPEC's second-language decoder test runs Node.js with the zstd command
command -v lintian >/dev/null 2>&1 || need_apt+=(lintian)
command -v objdump >/dev/null 2>&1 || need_apt+=(binutils)
command -v groff >/dev/null 2>&1 || need_apt+=(groff-base)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v zstd >/dev/null 2>&1 || need_apt+=(zstd)
# packaging/fleet-ca.sh and the MQTT TLS tests make certificates with openssl
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# the Prometheus API tests run the real promtool and prometheus (conformance, federation)
{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || need_apt+=(prometheus)
# the dashboard's browser tests drive a headless Chromium through chromium-driver (Selenium)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# the alerting and forwarding tests run a real Alertmanager, Prometheus and VictoriaMetrics
command -v prometheus-alertmanager >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
command -v victoria-metrics >/dev/null 2>&1 || need_apt+=(victoria-metrics)
# the storage tests run against a private PostgreSQL cluster too (initdb + pg_ctl)
{ command -v initdb || ls /usr/lib/postgresql/*/bin/initdb; } >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (apt-get)" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${need_apt[@]}" >/dev/null
  # Debian starts a system broker on 1883 (and prometheus on 9090); edgemon-local and the
  # tests use their own on free ports.
fi

python3 - <<'PY' || { echo "edgemon needs Python >= 3.11" >&2; exit 1; }
import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

stamp="$VENV/.edgemon-installed"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
