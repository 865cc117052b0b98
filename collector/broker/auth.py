"""Per-user MQTT identities for Mosquitto 2.0: a password file and an ACL, generated together.

A broker auth directory holds:

* ``users.json``: the source of truth: every user's name, role and password hash (0600);
* ``passwd``: Mosquitto's ``password_file`` (``name:$7$<iterations>$<salt>$<PBKDF2-SHA512>``,
  the format ``mosquitto_passwd`` writes);
* ``acl``: Mosquitto's ``acl_file``, regenerated from the users on every change.

Roles: a ``host`` (user name == host id) may write only its own ``metrics``, ``backfill`` and
``status`` topics and read only its own ``ack`` topic (pattern ACLs with ``%u``); the
``collector`` reads every host's batches and status and writes acks and ``_alerts/#``, its
presence and its delivery probes (``_collectors/#``); a ``reader`` reads ``edgemon/v1/#`` and
writes nothing. Everyone may read the collectors' presence (``_collectors/+/state``). Mosquitto
applies pattern ACLs to every user, so each collector and reader user is also denied
``edgemon/v1/<its name>/#`` (otherwise a reader could publish batches as a pseudo-host of its own
name), and no host may take such a name.

Client ids belong to their user: the generated ``mosquitto.conf`` sets
``use_username_as_clientid true``, so the broker replaces whatever client id a client sends with
its user name. Another user cannot take over (and so disconnect) a host's or the collector's
session; a user can only replace its own connection. ``mosquitto_conf`` also sets persistence,
autosave and queue bounds (see its docstring and packaging/SECURITY.md for what each costs).

The files are written atomically. New files get mode 0600, or 0640 with the directory's group
when the directory is group-readable (``init --group mosquitto``: Mosquitto 2.0 reads them as
its own user, also on reload); a rewrite keeps the owner, group and mode of the file it
replaces. Mosquitto must be reloaded (SIGHUP) to see a change.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import grp
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from edgemon.common import private_files
from edgemon.common.private_files import check_private_file
from edgemon.protocol.errors import ProtocolError
from edgemon.protocol.limits import MAX_COMPRESSED_BYTES
from edgemon.protocol.presence import COLLECTOR_STATE_FILTER, COLLECTORS_LEVEL
from edgemon.protocol.topics import PREFIX, validate_host_id

__all__ = [
    "DEFAULT_COLLECTOR",
    "MAX_PACKET_SIZE",
    "ROLES",
    "AuthDir",
    "BrokerAuthError",
    "User",
    "acl_text",
    "add_commands",
    "client_snippet",
    "hash_password",
    "mosquitto_conf",
    "new_password",
    "read_password_file",
    "verify_password",
    "write_private",
]

ROLES: Final = ("host", "collector", "reader")
DEFAULT_COLLECTOR: Final = "edgemon-collector"
# What mosquitto_passwd 2.0 writes: PBKDF2-SHA512, 101 iterations, 12-byte salt. Generated
# passwords carry 192 random bits, so the iteration count is not what protects them.
HASH_ID: Final = 7
ITERATIONS: Final = 101
SALT_BYTES: Final = 12
# The largest valid batch plus room for the MQTT header and topic; bigger packets are refused.
MAX_PACKET_SIZE: Final = MAX_COMPRESSED_BYTES + 4096
FORMAT: Final = "edgemon-broker-auth 1"
# Broker persistence and queues (mosquitto_conf; costs in packaging/SECURITY.md).
AUTOSAVE_SECONDS: Final = 60
CLIENT_EXPIRATION: Final = "14d"
MAX_QUEUED_MESSAGES: Final = 1000
MAX_QUEUED_BYTES: Final = 64 << 20

USERS_FILE, PASSWD_FILE, ACL_FILE, LOCK_FILE = "users.json", "passwd", "acl", ".lock"
_HASH_RE: Final = re.compile(r"\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


class BrokerAuthError(Exception):
    """A refused change or an unusable auth directory; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    password_hash: str


# --- passwords ----------------------------------------------------------------------------------

def new_password() -> str:
    """A fresh random password: 32 URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, salt: bytes | None = None,
                  iterations: int = ITERATIONS) -> str:
    """Mosquitto 2.0's ``$7$`` hash of ``password`` (PBKDF2-HMAC-SHA512, base64 with padding)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return (f"${HASH_ID}${iterations}${base64.b64encode(salt).decode()}"
            f"${base64.b64encode(digest).decode()}")


def verify_password(password: str, password_hash: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash (constant-time comparison)."""
    match = _HASH_RE.fullmatch(password_hash)
    if not match:
        return False
    salt, digest = base64.b64decode(match.group(2)), base64.b64decode(match.group(3))
    return hmac.compare_digest(
        hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(match.group(1))), digest)


def validate_user_name(name: str) -> str:
    """User names follow the host id rule: safe in topics, the ACL, the password file and TOML."""
    try:
        return validate_host_id(name)
    except ProtocolError as exc:
        raise BrokerAuthError(f"user name: {exc}") from None


# --- files --------------------------------------------------------------------------------------

def _file_mode_and_owner(path: Path, directory: Path) -> tuple[int, int, int]:
    """(mode, uid, gid) for a new version of ``path``: the old file's, else from ``directory``."""
    try:
        old = path.stat()
    except FileNotFoundError:
        folder = directory.stat()
        if folder.st_mode & stat.S_IRGRP:
            return 0o640, -1, folder.st_gid
        return 0o600, -1, -1
    mode = stat.S_IMODE(old.st_mode) & 0o640 or 0o600
    return mode, old.st_uid, old.st_gid


def write_private(path: Path, text: str, *, mode: int | None = None) -> None:
    """Write ``text`` atomically (``common.private_files.write_private``) readable by its owner
    (and group). Without ``mode`` an existing file keeps its owner, group and mode (never more
    than 0640)."""
    path = Path(path)
    new_mode, uid, gid = _file_mode_and_owner(path, path.parent)
    if mode is not None:
        new_mode, uid, gid = mode, -1, -1
    try:
        private_files.write_private(path, text, mode=new_mode, uid=uid, gid=gid)
    except private_files.OwnerNotSet as exc:
        raise BrokerAuthError(str(exc)) from None


# --- the auth directory -------------------------------------------------------------------------

def acl_text(users: list[User]) -> str:
    """Mosquitto's ``acl_file`` for ``users`` (hosts need no line of their own: %u patterns)."""
    lines = [
        "# Generated by `edgemon-collector broker-auth` from users.json: do not edit, changes",
        "# are overwritten. Reload mosquitto after a change (SIGHUP: systemctl reload mosquitto).",
        "",
        "# Every host (user name == host id): its own batches and status, its own acks.",
        "# Also applies to client-certificate identities (use_identity_as_username).",
        f"pattern write {PREFIX}/%u/metrics",
        f"pattern write {PREFIX}/%u/backfill",
        f"pattern write {PREFIX}/%u/status",
        f"pattern write {PREFIX}/%u/catalogue",
        f"pattern read {PREFIX}/%u/ack",
        "# Everyone: whether a collector is online (retained presence, SPEC.md).",
        f"pattern read {COLLECTOR_STATE_FILTER}",
    ]
    for user in sorted(users, key=lambda u: (u.role, u.name)):
        if user.role == "host":
            continue
        # the patterns above apply to every user: take this name's own topics away again
        lines += ["", f"# {user.role}", f"user {user.name}",
                  f"topic deny {PREFIX}/{user.name}/#"]
        if user.role == "collector":
            lines += [f"topic read {PREFIX}/+/metrics", f"topic read {PREFIX}/+/backfill",
                      f"topic read {PREFIX}/+/status", f"topic read {PREFIX}/+/catalogue",
                      f"topic write {PREFIX}/+/ack",
                      f"topic write {PREFIX}/_alerts/#",
                      # presence (state) and delivery probes (probe, read back by itself)
                      f"topic readwrite {PREFIX}/{COLLECTORS_LEVEL}/#"]
        else:
            lines.append(f"topic read {PREFIX}/#")
    return "\n".join(lines) + "\n"


def _passwd_text(users: list[User]) -> str:
    return "".join(f"{u.name}:{u.password_hash}\n" for u in sorted(users, key=lambda u: u.name))


class AuthDir:
    """A broker auth directory (see the module docstring). Changes hold an exclusive lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.users_file = self.path / USERS_FILE
        self.passwd_file = self.path / PASSWD_FILE
        self.acl_file = self.path / ACL_FILE

    @classmethod
    def init(cls, path: str | Path, *, collector: str = DEFAULT_COLLECTOR,
             group: str | None = None) -> tuple[AuthDir, str]:
        """Create the directory (0700, or 0750 owned by ``group``) with one collector user.

        Returns the directory and the collector's password (shown once, never stored).
        """
        auth = cls(path)
        validate_user_name(collector)
        gid = -1
        if group is not None:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                raise BrokerAuthError(f"--group: no group {group!r} on this system (the broker's "
                                      "group, usually 'mosquitto')") from None
        auth.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if auth.users_file.exists():
            raise BrokerAuthError(f"{auth.path}: already initialised ({USERS_FILE} exists); add "
                                  "users with add-host/add-reader, or rotate a password")
        if group is not None:
            try:
                os.chown(auth.path, -1, gid)
            except PermissionError:
                raise BrokerAuthError(f"{auth.path}: cannot give it group {group!r}; run as root "
                                      "or as a member of that group") from None
            auth.path.chmod(0o750)
        with auth._locked():
            password = new_password()
            auth._save([User(collector, "collector", hash_password(password))])
        return auth, password

    # --- reading ---

    def users(self) -> list[User]:
        """Every user, sorted by name."""
        try:
            doc = json.loads(self.users_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BrokerAuthError(f"{self.path}: not a broker auth directory (no {USERS_FILE}); "
                                  "create it with: edgemon-collector broker-auth init "
                                  f"{self.path}") from None
        except (OSError, ValueError) as exc:
            raise BrokerAuthError(f"{self.users_file}: unreadable: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BrokerAuthError(f"{self.users_file}: not an edgemon broker auth file "
                                  f"(expected format {FORMAT!r})")
        try:
            users = [User(u["name"], u["role"], u["hash"]) for u in doc["users"]]
        except (KeyError, TypeError):
            raise BrokerAuthError(f"{self.users_file}: malformed user entry") from None
        for user in users:
            if user.role not in ROLES or not _HASH_RE.fullmatch(user.password_hash):
                raise BrokerAuthError(f"{self.users_file}: bad entry for user {user.name!r}")
        return sorted(users, key=lambda u: u.name)

    def get(self, name: str) -> User | None:
        return next((u for u in self.users() if u.name == name), None)

    def check(self, name: str, password: str) -> bool:
        """True if ``name`` exists and ``password`` is its password."""
        user = self.get(name)
        return user is not None and verify_password(password, user.password_hash)

    # --- changing ---

    def add(self, name: str, role: str) -> str:
        """Add a user; returns its generated password (shown once, never stored)."""
        if role not in ROLES:
            raise BrokerAuthError(f"role {role!r}: must be one of {', '.join(ROLES)}")
        if role == "host":
            try:
                validate_host_id(name)
            except ProtocolError as exc:
                raise BrokerAuthError(f"host: {exc}") from None
        else:
            validate_user_name(name)
        with self._locked():
            users = self.users()
            clash = next((u for u in users if u.name == name), None)
            if clash is not None:
                if clash.role != role and "host" in (role, clash.role):
                    raise BrokerAuthError(
                        f"{name!r} is the {clash.role} user's name; a host id must differ from "
                        "every collector and reader name (their topics are denied to them)")
                raise BrokerAuthError(f"user {name!r} ({clash.role}) exists; give a new "
                                      f"password with: broker-auth rotate {self.path} {name}")
            password = new_password()
            self._save([*users, User(name, role, hash_password(password))])
        return password

    def rotate(self, name: str) -> tuple[User, str]:
        """Give ``name`` a new password; the old one stops working at the broker's reload."""
        with self._locked():
            users = self.users()
            user = next((u for u in users if u.name == name), None)
            if user is None:
                raise BrokerAuthError(f"no user {name!r} in {self.path}; see: broker-auth list")
            password = new_password()
            new = User(name, user.role, hash_password(password))
            self._save([new if u.name == name else u for u in users])
        return new, password

    def remove(self, name: str) -> User:
        """Delete a user (not the last collector); it is refused from the broker's reload on."""
        with self._locked():
            users = self.users()
            user = next((u for u in users if u.name == name), None)
            if user is None:
                raise BrokerAuthError(f"no user {name!r} in {self.path}; see: broker-auth list")
            if user.role == "collector" and sum(u.role == "collector" for u in users) == 1:
                raise BrokerAuthError(f"{name!r} is the only collector user; give it a new "
                                      f"password with: broker-auth rotate {self.path} {name}")
            self._save([u for u in users if u.name != name])
        return user

    def regenerate(self) -> None:
        """Rewrite ``passwd`` and ``acl`` from ``users.json`` (after an interrupted change)."""
        with self._locked():
            self._save(self.users())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.path.is_dir():
            raise BrokerAuthError(f"{self.path}: no such directory; create it with: "
                                  f"edgemon-collector broker-auth init {self.path}")
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _save(self, users: list[User]) -> None:
        # users.json first: it is the truth; passwd and acl are derived and rewritten every time
        doc: dict[str, Any] = {"format": FORMAT, "users": [
            {"name": u.name, "role": u.role, "hash": u.password_hash}
            for u in sorted(users, key=lambda u: u.name)]}
        write_private(self.users_file, json.dumps(doc, indent=1) + "\n", mode=0o600)
        write_private(self.passwd_file, _passwd_text(users))
        write_private(self.acl_file, acl_text(users))


# --- what to hand out ---------------------------------------------------------------------------

def client_snippet(user: User, password: str) -> str:
    """TOML with the credentials: [broker] for a host's agent, [mqtt] for a collector/reader."""
    name, secret = json.dumps(user.name), json.dumps(password)
    if user.role == "host":
        return (f"# edgemon agent credentials for host {user.name}: put these keys in the\n"
                f"# [broker] section of agent.toml; host_id there must be {name} (or left to\n"
                "# default to a host name that gives this id). Keep the file private: chmod 600.\n"
                f"[broker]\nusername = {name}\npassword = {secret}\n")
    use = ("the collector: put these keys in the [mqtt] section of collector.toml"
           if user.role == "collector" else
           f"reader {user.name}: read-only; try it with: edgemon-collector tail -c THIS_FILE")
    # the broker uses the user name as the client id; the collector's presence id follows it
    client_id = f"client_id = {name}\n" if user.role == "collector" else ""
    return (f"# edgemon MQTT credentials for {use}.\n"
            "# Keep the file private: chmod 600.\n"
            f"[mqtt]\nusername = {name}\npassword = {secret}\n{client_id}")


def mosquitto_conf(auth: AuthDir, *, port: int = 1883, bind: str | None = None,
                   cafile: Path | None = None, certfile: Path | None = None,
                   keyfile: Path | None = None, require_certificate: bool = False,
                   persistence_location: Path | None = None) -> str:
    """The mosquitto.conf lines for one listener using ``auth`` (TLS if ``certfile`` is given),
    with client ids bound to user names and the persistence and queue settings edgemon expects.

    ``persistence_location``: where the broker saves its state (Debian's mosquitto.conf already
    sets ``/var/lib/mosquitto/``, and Mosquitto refuses a second ``persistence_location``).

    What each setting costs is in packaging/SECURITY.md ("Operating the broker"). In short: a
    crash loses what the broker took in since its last autosave (at most ``AUTOSAVE_SECONDS``)
    and every batch in it is still held by its agent until the collector acknowledges it, so the
    agents send it again; a clean stop saves everything.
    """
    if (certfile is None) != (keyfile is None) or (cafile is not None and certfile is None):
        raise BrokerAuthError("TLS listener: give --certfile and --keyfile (and --cafile, the "
                              "fleet CA), or none of them for a plain listener")
    if require_certificate and cafile is None:
        raise BrokerAuthError("--require-certificate needs --cafile (the CA that signs the "
                              "client certificates)")
    abspath = auth.path.resolve()
    lines = [
        "# edgemon: generated by `edgemon-collector broker-auth mosquitto-conf`.",
        "# Reload mosquitto after every broker-auth change: systemctl reload mosquitto (SIGHUP).",
        "per_listener_settings false",
        f"listener {port}{f' {bind}' if bind else ''}",
    ]
    if certfile is not None:
        lines += [f"certfile {certfile}", f"keyfile {keyfile}"]
        if cafile is not None:
            lines.append(f"cafile {cafile}")
        lines.append("tls_version tlsv1.2")
        if require_certificate:
            lines += ["# clients must show a certificate from cafile; its CN is their user name",
                      "require_certificate true", "use_identity_as_username true"]
    lines += [
        "allow_anonymous false",
        f"password_file {abspath / PASSWD_FILE}",
        f"acl_file {abspath / ACL_FILE}",
        f"# the largest valid batch ({MAX_COMPRESSED_BYTES} bytes) plus the MQTT header",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "# A client id belongs to its user: the broker uses the user name as the client id, so",
        "# no user can take over (and so disconnect) another user's session. One connection",
        "# per user: give every collector and every concurrent reader a user of its own.",
        "use_username_as_clientid true",
        "# Small packets (PUBACKs, acks) go out at once, not after the peer's delayed ACK: the",
        "# clients set TCP_NODELAY too (benchmarks/nodelay.py: about 4x the QoS 1 messages/s).",
        "set_tcp_nodelay true",
        "# Persistence: sessions, queued messages and retained messages (status, collector",
        "# presence) are saved at a clean stop and every autosave_interval seconds; a crash",
        "# loses what came in since the last save, which the agents still hold and send again.",
        "persistence true",
        f"autosave_interval {AUTOSAVE_SECONDS}",
    ]
    if persistence_location is not None:
        lines.append(f"persistence_location {persistence_location.resolve()}/")
    lines += [
        "# Sessions of clients gone longer than this are dropped with what was queued for them.",
        f"persistent_client_expiration {CLIENT_EXPIRATION}",
        "# Per client, beyond the in-flight window (e.g. batches for a collector that is down):",
        "# more is dropped (and sent again by its agent). Bounds the broker's memory.",
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",
        f"max_queued_bytes {MAX_QUEUED_BYTES}",
    ]
    return "\n".join(lines) + "\n"


# --- `edgemon-collector broker-auth ...` ---------------------------------------------------------

RELOAD_HINT = ("reload mosquitto to apply: systemctl reload mosquitto (or kill -HUP the broker's "
               "pid)")


def add_commands(sub: Any) -> None:
    """Add the ``broker-auth`` command and its subcommands to the CLI's subparsers."""
    parser = sub.add_parser(
        "broker-auth", help="manage per-host MQTT users and the broker's ACL",
        description="Manage a Mosquitto password file and ACL: one user per host (user name == "
                    "host id), a collector, read-only readers. " + RELOAD_HINT + ".")
    commands = parser.add_subparsers(dest="auth_command", required=True)

    def command(name: str, text: str) -> Any:
        cmd = commands.add_parser(name, help=text, description=text)
        cmd.add_argument("dir", type=Path, help="the broker auth directory")
        cmd.set_defaults(func=_run)
        return cmd

    def out_option(cmd: Any, what: str) -> None:
        cmd.add_argument("--out", type=Path, metavar="FILE",
                         help=f"write the {what} to FILE (mode 0600) instead of printing it")

    init = command("init", "create the directory with a collector user; print its credentials")
    init.add_argument("--collector", default=DEFAULT_COLLECTOR, metavar="NAME",
                      help=f"the collector's user name (default {DEFAULT_COLLECTOR})")
    init.add_argument("--group", help="the broker's group (usually mosquitto): directory 0750 "
                                      "and files 0640 in it, so Mosquitto 2.0 can read them")
    out_option(init, "collector's [mqtt] credentials")
    add_host = command("add-host", "add a host; print an agent [broker] snippet")
    add_host.add_argument("name", metavar="HOST", help="the agent's host_id")
    out_option(add_host, "agent's [broker] credentials")
    add_collector = command("add-collector", "add another collector (several collectors in one "
                                             "shared group: SCALING.md); print its credentials")
    add_collector.add_argument("name", metavar="NAME")
    out_option(add_collector, "collector's [mqtt] credentials")
    add_reader = command("add-reader", "add a read-only user (edgemon/v1/#)")
    add_reader.add_argument("name", metavar="NAME")
    out_option(add_reader, "reader's [mqtt] credentials")
    rotate = command("rotate", "give a user a new password; print its credentials")
    rotate.add_argument("name", metavar="NAME")
    out_option(rotate, "new credentials")
    remove = command("remove", "delete a user")
    remove.add_argument("name", metavar="NAME")
    command("list", "list the users and their roles")
    command("regenerate", "write passwd and acl again from users.json (after an upgrade that "
                          "changed the ACL, or an interrupted change)")
    conf = command("mosquitto-conf", "print the mosquitto.conf lines that use this directory")
    conf.add_argument("--port", type=int, default=None,
                      help="listener port (default 1883, or 8883 with --certfile)")
    conf.add_argument("--bind", metavar="ADDRESS", help="listen on this address only")
    conf.add_argument("--cafile", type=Path, help="TLS: the fleet CA certificate")
    conf.add_argument("--certfile", type=Path, help="TLS: the broker's certificate")
    conf.add_argument("--keyfile", type=Path, help="TLS: the broker's private key")
    conf.add_argument("--require-certificate", action="store_true",
                      help="TLS: clients must show a certificate; its CN is their user name")
    conf.add_argument("--persistence-location", type=Path, metavar="DIR",
                      help="where the broker saves its state (leave out when mosquitto.conf "
                           "sets it already, as Debian's does: /var/lib/mosquitto/)")


def _hand_out(user: User, password: str, out: Path | None) -> None:
    snippet = client_snippet(user, password)
    if out is None:
        print(snippet, end="")
        return
    write_private(out, snippet, mode=0o600)
    print(f"wrote the credentials of {user.role} {user.name!r} to {out} (mode 0600)",
          file=sys.stderr)


def _run(args: Any) -> int:
    try:
        auth = AuthDir(args.dir)
        action = args.auth_command
        if action == "init":
            auth, password = AuthDir.init(args.dir, collector=args.collector, group=args.group)
            _hand_out(auth.users()[0], password, args.out)
            print(f"created {auth.path}; add hosts with: edgemon-collector broker-auth add-host "
                  f"{auth.path} HOST; mosquitto.conf lines: edgemon-collector broker-auth "
                  f"mosquitto-conf {auth.path}", file=sys.stderr)
            return 0
        if action in ("add-host", "add-reader", "add-collector"):
            role = action.removeprefix("add-")
            password = auth.add(args.name, role)
            user = auth.get(args.name)
            assert user is not None
            _hand_out(user, password, args.out)
        elif action == "rotate":
            user, password = auth.rotate(args.name)
            _hand_out(user, password, args.out)
        elif action == "regenerate":
            auth.regenerate()
            print(f"wrote {auth.passwd_file} and {auth.acl_file} again", file=sys.stderr)
        elif action == "remove":
            user = auth.remove(args.name)
            print(f"removed {user.role} {user.name!r}", file=sys.stderr)
        elif action == "list":
            users = auth.users()
            width = max(len(u.name) for u in users)
            for user in users:
                print(f"{user.name:<{width}}  {user.role}")
            return 0
        elif action == "mosquitto-conf":
            auth.users()  # refuse a directory that is not one
            port = args.port or (8883 if args.certfile else 1883)
            print(mosquitto_conf(auth, port=port, bind=args.bind, cafile=args.cafile,
                                 certfile=args.certfile, keyfile=args.keyfile,
                                 require_certificate=args.require_certificate,
                                 persistence_location=args.persistence_location), end="")
            return 0
    except (BrokerAuthError, OSError) as exc:
        print(f"edgemon-collector broker-auth: {exc}", file=sys.stderr)
        return 2
    print(RELOAD_HINT, file=sys.stderr)
    return 0


# --- client side (tail) ---------------------------------------------------------------------------

def read_password_file(path: Path) -> str:
    """The first line of a private file holding a password; ValueError if unusable."""
    check_private_file(path, "password file", owner="your user")
    password = path.read_text(encoding="utf-8").partition("\n")[0].strip()
    if not password:
        raise ValueError(f"password file {str(path)!r}: its first line is empty")
    return password
