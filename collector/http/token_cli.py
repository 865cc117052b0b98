"""``edgemon-collector token create|list|revoke``: manage the HTTP API's bearer tokens.

The running collector notices every change at its next request: no restart, no reload.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgemon.collector.config import CollectorConfig
from edgemon.collector.http.tokens import (
    ROLES,
    TokenFileError,
    create_token,
    default_tokens_path,
    read_tokens,
    revoke_token,
)

__all__ = ["add_commands"]

Loader = Callable[[Path | None], CollectorConfig]


def _path(args: argparse.Namespace, load: Loader) -> Path:
    config = load(args.config)
    return default_tokens_path(config.http.tokens_path, config.storage.path)


def _fail(message: str) -> int:
    print(f"edgemon-collector token: {message}", file=sys.stderr)
    return 1


def cmd_create(args: argparse.Namespace, load: Loader) -> int:
    path = _path(args, load)
    try:
        token, text = create_token(path, args.name, args.role)
    except ValueError as exc:  # a bad --name, or TokenFileError
        return _fail(str(exc))
    except OSError as exc:  # InsecureFileMode, or no permission to write the file
        return _fail(str(exc))
    print(text)
    print(f"created token {token.id} ({token.name!r}, role {token.role}) in {path}.\n"
          "This is the only time it is shown: store it now. Send it as "
          "'Authorization: Bearer <token>'.", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace, load: Loader) -> int:
    path = _path(args, load)
    try:
        tokens = sorted(read_tokens(path).values(), key=lambda t: t.created)
    except (OSError, TokenFileError) as exc:
        return _fail(str(exc))
    rows = [{"id": t.id, "name": t.name, "role": t.role, "created": t.created,
             "revoked": t.revoked, "revoked_at": t.revoked_at} for t in tokens]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no tokens in {path}; create one with: edgemon-collector token create "
              "--name NAME --role read|admin", file=sys.stderr)
        return 0
    table = [("ID", "NAME", "ROLE", "CREATED", "STATUS")] + [
        (r["id"], r["name"], r["role"], r["created"],
         f"revoked {r['revoked_at']}" if r["revoked"] else "active") for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[4])
    return 0


def cmd_revoke(args: argparse.Namespace, load: Loader) -> int:
    path = _path(args, load)
    try:
        token, changed = revoke_token(path, args.id)
    except KeyError as exc:
        return _fail(str(exc.args[0]))
    except (OSError, TokenFileError) as exc:
        return _fail(str(exc))
    if changed:
        print(f"revoked token {token.id} ({token.name!r}); the running collector refuses it "
              "from its next request on")
    else:
        print(f"token {token.id} ({token.name!r}) was already revoked at {token.revoked_at}")
    return 0


def add_commands(sub: Any, load: Loader) -> None:
    """Add ``token`` and its subcommands; ``load`` reads ``-c`` (exits 2 on a bad config)."""
    parser = sub.add_parser(
        "token", help="manage HTTP API bearer tokens",
        description="Tokens live hashed in http.tokens_path (default: tokens.json beside the "
                    "storage database). read: GET/HEAD; admin: everything.")
    commands = parser.add_subparsers(dest="token_command", required=True)

    def command(name: str, text: str, func: Callable[[argparse.Namespace, Loader], int]) -> Any:
        cmd = commands.add_parser(name, help=text, description=text)
        cmd.add_argument("-c", "--config", type=Path,
                         help="the collector's TOML (default: built-in defaults)")
        cmd.set_defaults(func=lambda args: func(args, load))
        return cmd

    create = command("create", "create a token and print it (shown only this once)", cmd_create)
    create.add_argument("--name", required=True, help="who or what uses it, e.g. grafana")
    create.add_argument("--role", required=True, choices=ROLES,
                        help="read: GET/HEAD; admin: also reload rules and manage silences")
    listing = command("list", "list tokens (never their secrets)", cmd_list)
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    revoke = command("revoke", "revoke a token at once (the id from 'token list')", cmd_revoke)
    revoke.add_argument("id", help="the token's id (12 hex digits)")
