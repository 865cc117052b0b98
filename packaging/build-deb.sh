#!/usr/bin/env bash
# Build the Debian packages with plain dpkg-deb (no debhelper):
#   dist/edgemon-agent_<version>_<arch>.deb      /opt/edgemon/agent: venv with `pip install .`
#   dist/edgemon-collector_<version>_<arch>.deb  /opt/edgemon/collector: `pip install .[collector]`
# Each bundles its own virtualenv (C extensions included, hence <arch>, not "all"), so the
# target host needs no network and no PyPI: only Debian's python3.X and adduser.
#
# usage: packaging/build-deb.sh [--quick] [--out DIR] [agent|collector]...   (default: both)
#   --quick    edgemon's own code only, no third-party dependency in the venv: same layout,
#              unit, conffile and maintainer scripts, built in seconds without any package
#              index (tests). NOT runnable: never ship a quick package.
#   --out DIR  where the .deb files go (default: <repo>/dist)
# environment:
#   PYTHON         interpreter of the venv, here and on the target (default /usr/bin/python3,
#                  resolved to /usr/bin/python3.X; the package depends on python3.X)
#   PIP            pip used to fill the venv (default "$PYTHON -m pip", else "python3 -m pip");
#                  pip >= 22.3 (--python). Its usual configuration applies; offline:
#                  PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels
#   DEB_COMPRESS   dpkg-deb compressor: xz (default), gzip, zstd, none
#   DEB_COMPRESS_LEVEL  default: 6 for the agent (small, shipped to every edge host), 3 for
#                  the collector (160 MB of venv: level 6 triples its build time for -10%)
#   DEB_MAINTAINER Maintainer: field, "Name <email>" (default: "$DEBFULLNAME <$DEBEMAIL>", the
#                  variables dch uses; one of the two is required: no made-up address is shipped)
#   SOURCE_DATE_EPOCH  date of the packages' changelog entry (default: the last commit's)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HERE="$ROOT/packaging"
die() { echo "build-deb.sh: $*" >&2; exit 1; }

quick=0
out="$ROOT/dist"
programs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) [ $# -ge 2 ] || die "--out needs a directory"; out="$2"; shift ;;
    --out=*) out="${1#--out=}" ;;
    agent|collector) programs+=("$1") ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
[ ${#programs[@]} -gt 0 ] || programs=(agent collector)

# --- what we need, checked before any work ---------------------------------------------------
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (Debian package: dpkg)"
PYTHON="${PYTHON:-/usr/bin/python3}"
[ -x "$PYTHON" ] || die "no Python interpreter at $PYTHON (set PYTHON=)"
pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
PYBIN="$(dirname "$(readlink -f "$PYTHON")")/python$pyver"
[ -x "$PYBIN" ] || PYBIN="$PYTHON"
"$PYBIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYBIN is Python $pyver; edgemon needs >= 3.11"
"$PYBIN" -c 'import venv' 2>/dev/null || die "$PYBIN has no venv module"
if [ -z "${PIP:-}" ]; then
  if "$PYBIN" -m pip --version >/dev/null 2>&1; then PIP="$PYBIN -m pip"; else PIP="python3 -m pip"; fi
fi
read -r -a pip <<<"$PIP"
"${pip[@]}" --version >/dev/null 2>&1 || die "pip not usable: $PIP (set PIP=)"

for name in "${programs[@]}"; do
  for f in "systemd/edgemon-$name.service" "systemd/README.md" "$name/$name.example.toml" \
           "packaging/deb/postinst.in" "packaging/deb/prerm.in" "packaging/deb/postrm.in" \
           "packaging/deb/copyright.py" "packaging/deb/lintian-overrides" \
           "packaging/man/edgemon-$name.1" "packaging/man/edgemon-$name.toml.5"; do
    [ -f "$ROOT/$f" ] || die "missing $f: needed for edgemon-$name (the $(
      case "$f" in *.toml) echo "default /etc/edgemon/$name.toml, a conffile";;
                   *.service) echo "systemd unit";; *.md) echo "unit documentation";;
                   *.1|*.5) echo "manual page";; *.py|*overrides) echo "packaging file";;
                   *) echo "maintainer script template";; esac
    )); cannot build edgemon-$name"
  done
done

version="$("$PYBIN" -c 'import sys, tomllib
print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$ROOT/pyproject.toml")"
# PEP 440 pre-releases sort before the release in Debian only with "~": 1.0rc1 -> 1.0~rc1.
debversion="$(sed -E 's/([0-9])(a|b|rc|\.dev)([0-9]*)/\1~\2\3/' <<<"$version")"
arch="$(dpkg --print-architecture)"
compress="${DEB_COMPRESS:-xz}"
maintainer="${DEB_MAINTAINER:-}"
if [ -z "$maintainer" ] && [ -n "${DEBEMAIL:-}" ]; then
  maintainer="${DEBFULLNAME:-edgemon maintainers} <$DEBEMAIL>"
fi
[[ "$maintainer" =~ ^[^\<\>]+\ \<[^@\ ]+@[^@\ ]+\.[^@\ ]+\>$ ]] \
  || die "set DEB_MAINTAINER=\"Name <email>\" (or DEBFULLNAME and DEBEMAIL): the packages' Maintainer field, got \"$maintainer\""
command -v strip >/dev/null && command -v objdump >/dev/null \
  || die "strip and objdump not found (Debian package: binutils)"
epoch="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}"

work="$(mktemp -d "${TMPDIR:-/tmp}/edgemon-deb.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# --- one wheel of edgemon, from a snapshot of the sources (the tree is not written to) --------
mkdir "$work/src"
(cd "$ROOT" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - \
   pyproject.toml README.md agent collector protocol common) | tar -xf - -C "$work/src"
"${pip[@]}" wheel -q --no-deps -w "$work/wheels" "$work/src" >/dev/null \
  || die "building the edgemon wheel failed"
wheel="$(ls "$work"/wheels/edgemon-*.whl)"

description_agent="edgemon agent: lightweight host monitoring over MQTT
 Samples this host (cpu, load, memory, disks, network, sockets, pressure,
 processes, sensors) into a local SQLite buffer and ships the batches to the
 edgemon collector over MQTT, buffering through outages. Runs as the sandboxed
 systemd service edgemon-agent.service as user edgemon; configuration in
 /etc/edgemon/agent.toml, buffer in /var/lib/edgemon-agent."
description_collector="edgemon collector: stores edge metrics from MQTT, serves an HTTP API
 Receives the edgemon agents' batches from an MQTT broker, stores them with
 rollups and retention, and serves the query API and /metrics over HTTP. Runs
 as the sandboxed systemd service edgemon-collector.service as user edgemon;
 configuration in /etc/edgemon/collector.toml, data in
 /var/lib/edgemon-collector."

build_one() {
  local name="$1" pkg="edgemon-$1"
  local stage="$work/$pkg" venv="$work/$pkg/opt/edgemon/$1"
  local started=$SECONDS

  # The venv is built in the staging tree, then its few absolute paths are rewritten.
  "$PYBIN" -m venv --without-pip "$venv"
  local spec="$wheel" deps=()
  [ "$name" = collector ] && spec="$wheel[collector]"
  [ "$quick" = 1 ] && deps=(--no-deps)
  "${pip[@]}" --python "$venv/bin/python" install -q --no-compile --no-warn-script-location \
    --disable-pip-version-check "${deps[@]}" "$spec" \
    || die "pip install of $spec into the $pkg venv failed"
  # Only this package's command; the others would lack their dependencies.
  for script in edgemon-agent edgemon-collector; do
    [ "$script" = "$pkg" ] || rm -f "$venv/bin/$script"
  done
  rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1 \
        "$venv"/lib/python*/site-packages/edgemon-*.dist-info/direct_url.json
  grep -rlIF "$stage" "$venv" | while IFS= read -r f; do sed -i "s|$stage||g" "$f"; done
  if grep -rqF "$work" "$stage"; then
    die "$pkg: build paths left in: $(grep -rlF "$work" "$stage" | head -3 | tr '\n' ' ')"
  fi
  [ -x "$venv/bin/$pkg" ] || die "$pkg: no $venv/bin/$pkg after pip install"
  # No bytecode in the package (Debian policy 6.5): postinst compiles it, prerm removes it.
  find "$venv" -type d -name __pycache__ -prune -exec rm -rf {} +
  # Shared objects stripped as dh_strip does (debug info and notes are not shipped).
  find "$venv" -type f \( -name '*.so' -o -name '*.so.*' \) -exec strip --strip-unneeded \
    --remove-section=.comment --remove-section=.note {} +
  # Permissions as dh_fixperms sets them: nothing in the library tree is run directly (shared
  # objects and modules are loaded by the interpreter), so no executable bit there.
  find "$venv/lib" -type f -perm /111 -exec chmod 0644 {} +
  # The C library version the bundled shared objects need (what dpkg-shlibdeps would find).
  local glibc
  glibc="$(find "$venv" -type f \( -name '*.so' -o -name '*.so.*' \) -exec objdump -T {} + \
    2>/dev/null | { grep -o 'GLIBC_[0-9][0-9.]*' || true; } | sed 's/GLIBC_//' | sort -uV | tail -1)"

  install -D -m 0644 "$ROOT/systemd/$pkg.service" "$stage/lib/systemd/system/$pkg.service"
  install -D -m 0644 "$ROOT/$name/$name.example.toml" "$stage/etc/edgemon/$name.toml"
  mkdir -p "$stage/usr/bin" "$stage/usr/share/doc/$pkg"
  ln -s "/opt/edgemon/$name/bin/$pkg" "$stage/usr/bin/$pkg"
  install -m 0644 "$ROOT/systemd/README.md" "$stage/usr/share/doc/$pkg/README.systemd.md"
  "$PYBIN" "$HERE/deb/copyright.py" "$stage" "/opt/edgemon/$name" \
    >"$stage/usr/share/doc/$pkg/copyright" || die "$pkg: writing the copyright file failed"
  # A native package's changelog (Debian format), compressed as dh_compress does.
  printf '%s\n' "$pkg ($debversion) unstable; urgency=medium" "" \
    "  * edgemon $version; what changed is in the project's CHANGELOG.md." "" \
    " -- $maintainer  $(LC_ALL=C date -u -R -d "@$epoch")" \
    | gzip -9n >"$stage/usr/share/doc/$pkg/changelog.gz"
  mkdir -p "$stage/usr/share/man/man1" "$stage/usr/share/man/man5"
  gzip -9n <"$HERE/man/$pkg.1" >"$stage/usr/share/man/man1/$pkg.1.gz"
  gzip -9n <"$HERE/man/$pkg.toml.5" >"$stage/usr/share/man/man5/$pkg.toml.5.gz"
  install -D -m 0644 "$HERE/deb/lintian-overrides" "$stage/usr/share/lintian/overrides/$pkg"
  if [ -f "$HERE/deb/lintian-overrides.$name" ]; then
    cat "$HERE/deb/lintian-overrides.$name" >>"$stage/usr/share/lintian/overrides/$pkg"
  fi
  sed -i "s/@PKG@/$pkg/g; s/@NAME@/$name/g" "$stage/usr/share/lintian/overrides/$pkg"

  mkdir "$stage/DEBIAN"
  for script in postinst prerm postrm; do
    sed "s/@NAME@/$name/g" "$HERE/deb/$script.in" >"$stage/DEBIAN/$script"
    chmod 0755 "$stage/DEBIAN/$script"
  done
  echo "/etc/edgemon/$name.toml" >"$stage/DEBIAN/conffiles"
  # procps: /bin/kill for ExecReload=.
  local description="description_$name" extra=", procps"
  [ -n "$glibc" ] && extra+=", libc6 (>= $glibc)"
  [ "$name" = collector ] && extra+=$'\nSuggests: mosquitto'
  # A quick build says so in its description (a custom control field would be an
  # unknown-field warning of lintian).
  [ "$quick" = 1 ] && printf -v "$description" '%s\n .\n %s' "${!description}" \
    "QUICK BUILD: edgemon's own code only, no dependency bundled; not runnable."
  cat >"$stage/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: python$pyver, adduser$extra
Section: admin
Priority: optional
Description: ${!description}
CONTROL
  (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' \
     | LC_ALL=C sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
  chmod -R u+rwX,go+rX,go-w "$stage"
  chmod 0644 "$stage"/DEBIAN/{control,conffiles,md5sums}

  local deb="$out/${pkg}_${debversion}_${arch}.deb"
  local level="${DEB_COMPRESS_LEVEL:-}"
  [ -n "$level" ] || { [ "$name" = agent ] && level=6 || level=3; }
  [ "$compress" = none ] && level=0
  dpkg-deb --root-owner-group -Z"$compress" -z"$level" --build "$stage" "$deb" >/dev/null
  echo "$deb ($(du -h "$deb" | cut -f1), installed $(du -sh --exclude=DEBIAN "$stage" | cut -f1);" \
       "$((SECONDS - started)) s)"
}

for name in "${programs[@]}"; do
  build_one "$name"
done
