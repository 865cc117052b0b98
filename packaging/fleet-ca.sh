#!/usr/bin/env bash
# A small certificate authority for one edgemon fleet's MQTT TLS (openssl only).
#
#   fleet-ca.sh [-d DIR] init                  the CA: DIR/ca.key (0600) and DIR/ca.crt (10 years)
#   fleet-ca.sh [-d DIR] server NAME [SAN...]  the broker: DIR/servers/NAME.{key,crt}; NAME and
#                                              every SAN (DNS name or IP address) go into
#                                              subjectAltName: clients check it against the
#                                              host they connect to
#   fleet-ca.sh [-d DIR] client NAME           a client: DIR/clients/NAME.{key,crt} with CN=NAME,
#                                              NAME = the agent's host_id (or the collector's or
#                                              a reader's user name); a broker listener with
#                                              `use_identity_as_username true` makes CN the MQTT
#                                              user name, so the ACL's %u patterns apply to it
#
# DIR defaults to $EDGEMON_CA_DIR, else ./fleet-ca. Keys are EC P-256, written with mode 0600;
# leaf certificates last 825 days. Existing files are never overwritten: to renew, move the old
# NAME.key/NAME.crt away and run the command again. Keep ca.key offline if you can: whoever
# holds it can mint a certificate for any host. See packaging/SECURITY.md.
set -euo pipefail

die() { echo "fleet-ca.sh: $*" >&2; exit 2; }
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

DIR="${EDGEMON_CA_DIR:-./fleet-ca}"
if [ "${1:-}" = "-d" ]; then
  [ $# -ge 2 ] || usage
  DIR="$2"; shift 2
fi
[ $# -ge 1 ] || usage
command -v openssl >/dev/null 2>&1 || die "openssl not found; install it: sudo apt-get install openssl"
CA_DAYS=3650
LEAF_DAYS=825
umask 077

new_key() {  # path
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null \
    || die "cannot create the key $1"
  chmod 600 "$1"
}

check_name() {  # the host id rule: one MQTT topic level, safe in a file name
  [[ "$1" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ ]] \
    || die "invalid name '$1': 1-64 of letters, digits, '.', '-', '_', starting with a letter or digit"
}

need_ca() {
  [ -f "$DIR/ca.key" ] && [ -f "$DIR/ca.crt" ] \
    || die "no CA in $DIR (ca.key, ca.crt); create it first: $0 -d $DIR init"
}

refuse_existing() {  # path...
  local f
  for f in "$@"; do
    [ ! -e "$f" ] || die "$f exists; to renew, move it (and its .key/.crt partner) away first"
  done
}

sign() {  # kind(servers|clients) name cn extensions
  local kind="$1" name="$2" cn="$3" ext="$4"
  local key="$DIR/$kind/$name.key" crt="$DIR/$kind/$name.crt"
  mkdir -p "$DIR/$kind"
  refuse_existing "$key" "$crt"
  new_key "$key"
  local csr extfile
  csr="$(mktemp)"; extfile="$(mktemp)"
  trap 'rm -f "$csr" "$extfile"' RETURN
  printf '%s\n' "$ext" >"$extfile"
  openssl req -new -key "$key" -subj "/CN=$cn" -out "$csr" \
    || die "cannot make the certificate request for $name"
  openssl x509 -req -in "$csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial \
    -days "$LEAF_DAYS" -sha256 -extfile "$extfile" -extensions leaf -out "$crt" 2>/dev/null \
    || die "cannot sign the certificate for $name"
  chmod 644 "$crt"
  echo "$crt"
  echo "$key (private: copy it to that machine only, mode 0600)"
}

case "$1" in
  init)
    [ $# -eq 1 ] || usage
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    refuse_existing "$DIR/ca.key" "$DIR/ca.crt"
    new_key "$DIR/ca.key"
    openssl req -new -x509 -key "$DIR/ca.key" -sha256 -days "$CA_DAYS" \
      -subj "/CN=edgemon fleet CA $(date -u +%Y-%m-%d)" \
      -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -addext "subjectKeyIdentifier=hash" -out "$DIR/ca.crt" \
      || die "cannot create the CA certificate"
    chmod 644 "$DIR/ca.crt"
    echo "$DIR/ca.crt (give it to every agent and the collector: ca_file)"
    echo "$DIR/ca.key (private: keep it offline)"
    ;;
  server)
    [ $# -ge 2 ] || usage
    need_ca
    name="$2"; shift 2
    [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9.:_-]*$ ]] || die "invalid server name '$name'"
    sans=""
    for san in "$name" "$@"; do
      if [[ "$san" =~ ^[0-9.]+$ ]] || [[ "$san" == *:* ]]; then
        sans+="${sans:+,}IP:$san"
      elif [[ "$san" =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
        sans+="${sans:+,}DNS:$san"
      else
        die "invalid subjectAltName '$san': a DNS name or an IP address"
      fi
    done
    sign servers "${name//:/_}" "$name" "[leaf]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=$sans"
    ;;
  client)
    [ $# -eq 2 ] || usage
    need_ca
    check_name "$2"
    sign clients "$2" "$2" "[leaf]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid"
    ;;
  -h|--help|help) usage ;;
  *) die "unknown command '$1'; expected init, server or client (--help)" ;;
esac
