"""API bearer tokens: a JSON file of SHA-256 hashes, managed by ``edgemon-collector token``.

A token reads ``edm_<id>_<secret>``: ``id`` is 12 hex digits (how the file finds it), ``secret``
is 256 random bits (base64url). Only SHA-256 of the secret is stored: for a random 256-bit
secret that is as strong as a slow password hash and costs one microsecond to check. The file is
rewritten atomically with mode 0600; the running collector re-reads it when it changes, so a new
or revoked token counts from the next request on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from edgemon.common.private_files import check_not_world_accessible, write_private

__all__ = [
    "ROLES",
    "Role",
    "Token",
    "TokenFileError",
    "TokenStore",
    "create_token",
    "default_tokens_path",
    "parse_token",
    "read_tokens",
    "revoke_token",
]

log = logging.getLogger("edgemon.collector.http.tokens")

Role = Literal["read", "admin"]
ROLES: tuple[str, ...] = get_args(Role)
PREFIX = "edm_"
FILE_VERSION = 1
_ID_RE = re.compile(r"[0-9a-f]{12}")
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, base64url without padding
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
CREATE_HINT = "edgemon-collector token create --name NAME --role read|admin -c <collector.toml>"


class TokenFileError(ValueError):
    """The token file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Token:
    """One token as stored: never the secret, only its SHA-256."""

    id: str
    name: str
    role: Role
    created: str  # RFC 3339, UTC
    sha256: str
    revoked: bool = False
    revoked_at: str | None = None

    def allows(self, role: Role) -> bool:
        """Whether this token may do what ``role`` may (admin implies read)."""
        return self.role == "admin" or role == "read"


def default_tokens_path(tokens_path: Path | None, storage_path: Path) -> Path:
    """``tokens_path`` when configured, else ``tokens.json`` beside the storage database."""
    return tokens_path if tokens_path is not None else Path(storage_path).parent / "tokens.json"


def parse_token(text: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token text, else None."""
    if not text.startswith(PREFIX):
        return None
    token_id, sep, secret = text[len(PREFIX):].partition("_")
    if not sep or not _ID_RE.fullmatch(token_id) or not _SECRET_RE.fullmatch(secret):
        return None
    return token_id, secret


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _token_from(doc: Any, where: str) -> Token:
    if not isinstance(doc, dict):
        raise TokenFileError(f"{where}: not an object")
    fields = {"id", "name", "role", "created", "sha256", "revoked", "revoked_at"}
    missing = fields - {"revoked", "revoked_at"} - set(doc)
    if missing or set(doc) - fields:
        raise TokenFileError(f"{where}: expected the keys {sorted(fields)}, got {sorted(doc)}")
    if not isinstance(doc["id"], str) or not _ID_RE.fullmatch(doc["id"]):
        raise TokenFileError(f"{where}: id must be 12 hex digits")
    if doc["role"] not in ROLES:
        raise TokenFileError(f"{where}: role must be one of {', '.join(ROLES)}")
    if not isinstance(doc["sha256"], str) or not _HEX64_RE.fullmatch(doc["sha256"]):
        raise TokenFileError(f"{where}: sha256 must be 64 lowercase hex digits")
    if not isinstance(doc["name"], str) or not isinstance(doc["created"], str):
        raise TokenFileError(f"{where}: name and created must be strings")
    if not isinstance(doc.get("revoked", False), bool):
        raise TokenFileError(f"{where}: revoked must be true or false")
    return Token(**doc)


def read_tokens(path: Path) -> dict[str, Token]:
    """Every token in ``path`` by id ({} when the file does not exist).

    Raises ``InsecureFileMode`` when others may read the file, ``TokenFileError`` when it is not
    a token file."""
    check_not_world_accessible(path, "API token file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{path}: cannot read: {exc}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenFileError(f"{path}: not valid JSON ({exc}); restore it or delete it and "
                             f"create new tokens with: {CREATE_HINT}") from None
    if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION \
            or not isinstance(doc.get("tokens"), list):
        raise TokenFileError(f"{path}: not an edgemon token file (expected "
                             f'{{"version": {FILE_VERSION}, "tokens": [...]}})')
    tokens: dict[str, Token] = {}
    for number, entry in enumerate(doc["tokens"]):
        token = _token_from(entry, f"{path}: tokens[{number}]")
        if token.id in tokens:
            raise TokenFileError(f"{path}: tokens[{number}]: id {token.id} appears twice")
        tokens[token.id] = token
    return tokens


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of ``path`` between CLI invocations."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, tokens: dict[str, Token]) -> None:
    """Replace ``path`` atomically with a 0600 file (owned like its directory when run as root,
    so the service user can read a file that ``sudo edgemon-collector token`` wrote)."""
    doc = {"version": FILE_VERSION, "tokens": [asdict(t) for t in tokens.values()]}
    directory = os.stat(path.parent)
    owner = (directory.st_uid, directory.st_gid) \
        if os.geteuid() == 0 and directory.st_uid != 0 else (-1, -1)
    write_private(path, json.dumps(doc, indent=2) + "\n", uid=owner[0], gid=owner[1])


def create_token(path: Path, name: str, role: str) -> tuple[Token, str]:
    """Add a token; returns it and its text (the only time the secret exists anywhere)."""
    name = name.strip()
    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise ValueError("--name: 1 to 64 printable characters, e.g. --name grafana")
    if role not in ROLES:
        raise ValueError(f"--role: one of {', '.join(ROLES)}, got {role!r}")
    with _locked(path):
        tokens = read_tokens(path)
        token_id = secrets.token_hex(6)
        while token_id in tokens:
            token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        token = Token(id=token_id, name=name, role=role, created=_now(),  # type: ignore[arg-type]
                      sha256=_digest(secret))
        tokens[token_id] = token
        _write(path, tokens)
    return token, f"{PREFIX}{token_id}_{secret}"


def revoke_token(path: Path, token_id: str) -> tuple[Token, bool]:
    """Mark ``token_id`` revoked; returns it and whether it was active until now.

    Raises ``KeyError`` (message: what to do) for an unknown id."""
    with _locked(path):
        tokens = read_tokens(path)
        token = tokens.get(token_id)
        if token is None:
            raise KeyError(f"no token with id {token_id!r} in {path} "
                           "(see: edgemon-collector token list)")
        if token.revoked:
            return token, False
        tokens[token_id] = replace(token, revoked=True, revoked_at=_now())
        _write(path, tokens)
        return tokens[token_id], True


class TokenStore:
    """The running collector's view of the token file, re-read whenever the file changes.

    ``verify`` stats the file (a few microseconds) and reloads it when its inode, size, mtime or
    mode changed. A file that became unusable (unreadable, invalid, readable by others) rejects
    every token until it is fixed: failing closed keeps a revocation from being lost.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, ...] | None = None
        self._tokens: dict[str, Token] = {}
        self.error: str | None = None

    def load(self) -> None:
        """Read the file now; raise on a problem (used at start-up, where it must be fatal)."""
        key = self._stat_key()  # before reading: a change while we read is seen next time
        self._tokens = read_tokens(self.path)
        self._key = key
        self.error = None
        log.info("api tokens loaded", extra={
            "path": str(self.path), "active": sum(not t.revoked for t in self._tokens.values())})

    def active_tokens(self) -> list[Token]:
        """The tokens not revoked, as the file holds them now."""
        self.refresh()
        return [t for t in self._tokens.values() if not t.revoked]

    def _stat_key(self) -> tuple[int, ...]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return ()
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode))

    def refresh(self) -> None:
        """Reload when the file changed since the last look."""
        try:
            key = self._stat_key()
        except OSError as exc:
            key = (-1,)
            if self.error is None:
                self._fail(f"{self.path}: cannot stat: {exc}")
            return
        if key == self._key:
            return
        self._key = key
        try:
            self._tokens = read_tokens(self.path)
        except (OSError, TokenFileError) as exc:  # InsecureFileMode is an OSError
            self._fail(str(exc))
            return
        self.error = None
        log.info("api tokens loaded", extra={
            "path": str(self.path), "active": sum(not t.revoked for t in self._tokens.values()),
            "revoked": sum(t.revoked for t in self._tokens.values())})

    def _fail(self, message: str) -> None:
        self._tokens = {}
        self.error = message
        log.error("api token file unusable, refusing every token until it is fixed: %s",
                  message)

    def verify(self, text: str) -> tuple[Token | None, str]:
        """``(token, "")`` for a valid, unrevoked token; else ``(None, why)``.

        ``why`` never contains the presented text: it may be any secret pasted by mistake."""
        self.refresh()
        parsed = parse_token(text)
        if parsed is None:
            return None, "not an edgemon token (expected edm_<id>_<secret>)"
        token_id, secret = parsed
        token = self._tokens.get(token_id)
        expected = token.sha256 if token is not None else "0" * 64
        matches = hmac.compare_digest(expected, _digest(secret))
        if token is None or not matches:
            if self.error is not None:
                return None, "the collector's token file is unusable (see its log)"
            return None, "unknown token"
        if token.revoked:
            return None, f"token {token.id} was revoked at {token.revoked_at}"
        return token, ""
