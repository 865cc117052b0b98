#!/usr/bin/env bash
# Install an edgemon program (the agent by default) from this source tree on a systemd host
# without Debian packages (on Debian/Ubuntu prefer packaging/build-deb.sh):
#   system user and group edgemon;  venv /opt/edgemon/<program> (pip install of this tree);
#   /etc/edgemon/<program>.toml (from the example, never overwritten);
#   /var/lib/edgemon-<program> (mode 0700, owned by edgemon);
#   /etc/systemd/system/edgemon-<program>.service, enabled and (re)started;
#   /usr/local/bin/edgemon-<program>.
# Idempotent: run it again to upgrade (the service is restarted, config and data are kept).
#
# usage: sudo packaging/install.sh [agent|collector] [--uninstall|--purge] [--wheels DIR]
#   --uninstall  stop, disable and remove the unit, the venv and the command; keep the
#                configuration and the data
#   --purge      --uninstall, then delete the configuration, the data and unit drop-ins
#   --wheels DIR offline: take every distribution from the wheels in DIR (pip --no-index),
#                including setuptools>=68 and wheel (edgemon's build backend)
# environment: PYTHON (interpreter of the venv, >= 3.11; default python3), any PIP_* setting;
#   EDGEMON_ROOT: prefix of every path (tests, image builds; commands still run on this host).
set -euo pipefail

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
R="${EDGEMON_ROOT:-}"
die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

program=agent
mode=install
wheels=""
while [ $# -gt 0 ]; do
  case "$1" in
    agent|collector) program="$1" ;;
    --uninstall) mode=uninstall ;;
    --purge) mode=purge ;;
    --wheels) [ $# -ge 2 ] || die "--wheels needs a directory"; wheels="$2"; shift ;;
    --wheels=*) wheels="${1#--wheels=}" ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done

name="edgemon-$program"
venv="$R/opt/edgemon/$program"
unit="$R/etc/systemd/system/$name.service"
conf="$R/etc/edgemon/$program.toml"
state="$R/var/lib/$name"
link="$R/usr/local/bin/$name"
systemd_running() { [ -d "$R/run/systemd/system" ]; }
[ "$(id -u)" -eq 0 ] || [ -n "$R" ] || die "run as root (sudo $0 ...)"

if [ "$mode" != install ]; then
  if systemd_running; then
    systemctl disable --now "$name.service" >/dev/null 2>&1 || true
  elif command -v systemctl >/dev/null; then
    systemctl disable "$name.service" >/dev/null 2>&1 || true
  fi
  rm -f "$unit"
  if systemd_running; then systemctl daemon-reload; fi
  rm -rf "$venv"
  rmdir "$R/opt/edgemon" 2>/dev/null || true
  if [ -L "$link" ]; then rm -f "$link"; fi
  if [ "$mode" = purge ]; then
    rm -rf "$state" "$unit.d"
    rm -f "$conf"
    rmdir "$R/etc/edgemon" 2>/dev/null || true
    say "$name purged (the user edgemon is kept: userdel edgemon if nothing else uses it)"
  else
    say "$name uninstalled; kept ${conf#"$R"} and ${state#"$R"} (--purge deletes them)"
  fi
  exit 0
fi

# --- checks before any change -------------------------------------------------------------
for f in "systemd/$name.service" "$program/$program.example.toml" pyproject.toml; do
  [ -f "$SRC/$f" ] || die "missing $SRC/$f: run this script from an edgemon source tree"
done
py="${PYTHON:-python3}"
command -v "$py" >/dev/null || die "no $py: install Python >= 3.11 (or set PYTHON=)"
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$py is older than 3.11"
"$py" -c 'import venv, ensurepip' 2>/dev/null || die "$py lacks venv/ensurepip (python3-venv?)"
# The versioned interpreter, so that a newer default python3 does not break the venv.
py="$("$py" -c 'import os, sys
v = os.path.join(os.path.dirname(sys.executable), "python%d.%d" % sys.version_info[:2])
print(v if os.access(v, os.X_OK) else sys.executable)')"
[ -z "$wheels" ] || [ -d "$wheels" ] || die "--wheels $wheels: not a directory"

# --- user ----------------------------------------------------------------------------------
nologin=/bin/false
for n in /usr/sbin/nologin /sbin/nologin /usr/bin/nologin; do
  if [ -x "$n" ]; then nologin="$n"; break; fi
done
if ! getent group edgemon >/dev/null; then
  if command -v groupadd >/dev/null; then groupadd --system edgemon
  else addgroup -S edgemon; fi  # busybox
  say "created group edgemon"
fi
if ! getent passwd edgemon >/dev/null; then
  if command -v useradd >/dev/null; then
    useradd --system --gid edgemon --no-create-home --home-dir /nonexistent \
      --shell "$nologin" edgemon
  else
    adduser -S -D -H -h /nonexistent -s "$nologin" -G edgemon edgemon  # busybox
  fi
  say "created system user edgemon"
fi

# --- code: a venv at its final path, refilled on every run ------------------------------------
was_active=0
if systemd_running && systemctl is-active --quiet "$name.service"; then
  was_active=1
  systemctl stop "$name.service"  # not while its files are replaced
fi
if [ -x "$venv/bin/python" ] && [ "$(readlink -f "$venv/bin/python")" = "$(readlink -f "$py")" ]
then
  say "reusing the venv ${venv#"$R"}"
else
  rm -rf "$venv"
  "$py" -m venv "$venv"
fi
pipargs=(-q --disable-pip-version-check)
[ -z "$wheels" ] || pipargs+=(--no-index --find-links "$wheels")
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# Build from a copy: pip would write build/ and *.egg-info into the source tree.
(cd "$SRC" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - \
   pyproject.toml README.md agent collector protocol common) | tar -xf - -C "$tmp"
"$venv/bin/python" -m pip wheel "${pipargs[@]}" --no-deps -w "$tmp/wheels" "$tmp" >/dev/null
whl="$(ls "$tmp"/wheels/edgemon-*.whl)"
extra=""
[ "$program" = collector ] && extra="[collector]"
"$venv/bin/python" -m pip uninstall -q -y edgemon >/dev/null 2>&1 || true
"$venv/bin/python" -m pip install "${pipargs[@]}" "$whl$extra"
[ -x "$venv/bin/$name" ] || die "pip did not install $name into ${venv#"$R"}"
mkdir -p "$(dirname "$link")"
ln -sfn "/opt/edgemon/$program/bin/$name" "$link"

# --- configuration and state -------------------------------------------------------------------
mkdir -p "$R/etc/edgemon"
chmod 0755 "$R/etc/edgemon"
if [ -e "$conf" ]; then
  say "keeping ${conf#"$R"} (example: $SRC/$program/$program.example.toml)"
else
  install -m 0640 "$SRC/$program/$program.example.toml" "$conf"
  chown root:edgemon "$conf"
  say "wrote ${conf#"$R"} (readable by edgemon only): edit it, then systemctl restart $name"
fi
mkdir -p "$state"
chown edgemon:edgemon "$state"
chmod 0700 "$state"

# --- unit --------------------------------------------------------------------------------------
mkdir -p "$(dirname "$unit")"
install -m 0644 "$SRC/systemd/$name.service" "$unit"
if command -v systemctl >/dev/null; then
  systemctl enable "$name.service" >/dev/null 2>&1 || say "could not enable $name.service"
fi
if systemd_running; then
  systemctl daemon-reload
  systemctl restart "$name.service"
  if [ "$was_active" = 1 ]; then say "$name restarted"; else say "$name started"; fi
else
  say "systemd is not running here: $name.service is installed but not started"
fi
