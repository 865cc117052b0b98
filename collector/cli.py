"""``edgemon-collector``: run the collector, check its configuration, tail live batches."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from edgemon.collector.broker.auth import add_commands as add_broker_auth_commands
from edgemon.collector.broker.auth import read_password_file
from edgemon.collector.config import CollectorConfig, ConfigError, load_config
from edgemon.collector.http.token_cli import add_commands as add_token_commands
from edgemon.collector.storage_commands import add_storage_commands
from edgemon.common.private_files import InsecureFileMode, check_not_world_accessible

__all__ = ["main"]

EXIT_CONFIG = 2


def _version() -> str:
    try:
        return metadata.version("edgemon")
    except metadata.PackageNotFoundError:
        return "unknown"


def _load(path: Path | None) -> CollectorConfig:
    if path is not None:
        try:
            check_not_world_accessible(path, "configuration file", owner="the collector")
        except InsecureFileMode as exc:
            print(f"edgemon-collector: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"edgemon-collector: config error: {problem}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_run(args: argparse.Namespace) -> int:
    os.umask(0o077)  # the database, tokens and outbox hold the fleet's data: the service's only
    config = _load(args.config)
    from edgemon.collector.app import run
    from edgemon.common.logs import setup_logging
    from edgemon.common.single_instance import run_exclusively

    setup_logging(config.log.level)
    return run_exclusively(config.storage.path, "edgemon-collector", lambda: run(config))


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    doc = config.model_dump(mode="json")
    if doc["mqtt"].get("password"):
        doc["mqtt"]["password"] = "********"
    if doc["cluster"].get("shared_group"):  # a secret of the collectors (SCALING.md)
        doc["cluster"]["shared_group"] = "********"
    for endpoint in [*doc["alerting"]["alertmanagers"], *doc["forward"]]:
        for secret in ("password", "bearer_token"):
            if endpoint.get(secret):
                endpoint[secret] = "********"
    if not doc["alerting"]["external_url"]:
        doc["alerting"]["external_url"] = config.external_url()
        doc["alerting"]["external_url_derived"] = True  # from [http]: set it behind a proxy
    print(f"{args.config or '<defaults>'}: ok")
    print(json.dumps(doc, indent=2))
    return 0


def cmd_check_rules(args: argparse.Namespace) -> int:
    from edgemon.collector.alerting import check_rules

    path = args.rules
    if path is None and args.config is not None:
        path = _load(args.config).alerting.rules_path
    return 0 if check_rules(path) == 0 else 2


def _broker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, 1883
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port") from None


def cmd_tail(args: argparse.Namespace) -> int:
    """Print every sample published by agents as one JSON line: a reader built only on the
    public protocol module (msgpack + zstd), like any third-party consumer."""
    import paho.mqtt.client as mqtt

    from edgemon.common import mqtt_client
    from edgemon.protocol import (
        ProtocolError,
        backfill_topic,
        decode_status,
        expand_samples,
        metrics_topic,
        parse_topic,
        status_topic,
        subscriptions,
    )
    from edgemon.protocol.base import base_values, last_values
    from edgemon.protocol.catalogue import Catalogue, decode_catalogue, decode_received
    from edgemon.protocol.topics import catalogue_topic

    catalogues: dict[tuple[str, str], Catalogue] = {}  # (host, id): the ones seen, bounded
    # (host, instance): (seq, last values) of the newest batch seen, for based ones (§9.1)
    bases: dict[tuple[str, str], tuple[int, dict[Any, int]]] = {}

    def base_of(source: str, instance: str, seq: int, catalogue: Catalogue) -> list[int] | None:
        held = bases.get((source, instance))
        return base_values(held[1], catalogue) if held and held[0] == seq else None

    config = _load(args.config) if args.config else CollectorConfig()
    host, port = args.broker or (config.mqtt.host, config.mqtt.port)
    if args.host:
        try:
            topics = [metrics_topic(args.host), backfill_topic(args.host), status_topic(args.host),
                      catalogue_topic(args.host)]
        except ProtocolError as exc:
            print(f"edgemon-collector tail: --host: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    else:
        topics = subscriptions()
    seen = 0

    def err(doc: dict[str, Any]) -> None:
        print(json.dumps(doc), file=sys.stderr, flush=True)

    def on_connect(client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:  # e.g. not authorised: retrying cannot help
            err({"event": "connect_failed", "reason": str(rc)})
            refused.append(str(rc))
            client.disconnect()
            return
        client.subscribe([(t, 1) for t in topics])

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, _rcs: Any, _p: Any) -> None:
        err({"event": "subscribed", "broker": f"{host}:{port}", "topics": topics})

    def on_message(client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal seen
        try:
            source, kind = parse_topic(message.topic)
            if kind == "status":
                print(json.dumps({"host": source, "status": decode_status(message.payload)}),
                      flush=True)
                return
            if kind == "catalogue":  # kept to read the batches that refer to it (SPEC.md §9)
                catalogue = decode_catalogue(message.payload)
                if catalogue.host == source:
                    if len(catalogues) >= 1000:
                        del catalogues[next(iter(catalogues))]
                    catalogues[(source, catalogue.id)] = catalogue
                return
            valid = decode_received(message.payload, lambda ident: catalogues.get((source, ident)),
                                    lambda i, seq, c: base_of(source, i, seq, c))[0]
            if len(bases) >= 1000 and (source, valid.instance) not in bases:
                del bases[next(iter(bases))]
            bases[(source, valid.instance)] = (valid.seq, last_values(valid.metrics))
            batch = valid.to_map()
            head = {"host": batch.get("host"), "instance": batch.get("instance"),
                    "seq": batch.get("seq"), "topic": kind}
            lines = [json.dumps({**head, **s._asdict()}) for s in expand_samples(batch)]
            print("\n".join(lines), flush=True)
        except Exception as exc:  # a bad payload is reported, never fatal
            err({"event": "undecodable", "topic": str(message.topic)[:200],
                 "reason": getattr(exc, "reason", type(exc).__name__), "error": str(exc)[:300]})
        seen += 1
        if args.count and seen >= args.count:
            client.disconnect()

    # (a broker with use_username_as_clientid uses the reader's user name as the client id)
    client = mqtt_client.make_client(f"edgemon-tail-{uuid.uuid4().hex[:12]}", clean_session=True)
    refused: list[str] = []
    username = args.username or config.mqtt.username
    password = config.mqtt.password.get_secret_value() if config.mqtt.password else None
    try:
        if args.password_file is not None:
            password = read_password_file(args.password_file)
            if username is None:
                raise ValueError("--password-file needs --username (or a username in -c)")
        if username is not None:
            client.username_pw_set(username, password)
        if args.tls or args.ca_file or config.mqtt.tls:
            mqtt_client.use_tls(client, ca_file=args.ca_file or config.mqtt.ca_file,
                                cert_file=config.mqtt.cert_file, key_file=config.mqtt.key_file)
    except (ValueError, OSError) as exc:
        print(f"edgemon-collector tail: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        print(f"edgemon-collector tail: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    try:
        client.loop_forever(retry_first_connection=False)
    except KeyboardInterrupt:
        client.disconnect()
    return 1 if refused else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgemon-collector",
        description="edgemon collector: stores fleet metrics from MQTT, serves the HTTP API.")
    parser.add_argument("--version", action="version", version=f"edgemon-collector {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the collector until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", type=Path, help="TOML file (default: built-in defaults)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a configuration; exit 2 if invalid")
    check.add_argument("-c", "--config", type=Path, help="TOML file (default: built-in defaults)")
    check.set_defaults(func=cmd_check_config)

    rules = sub.add_parser("check-rules", help="validate an alert rules file; exit 2 if invalid")
    rules.add_argument("rules", nargs="?", type=Path,
                       help="rules TOML (default: the one named by -c, else the shipped defaults)")
    rules.add_argument("-c", "--config", type=Path, help="take [alerting] rules_path from here")
    rules.set_defaults(func=cmd_check_rules)

    tail = sub.add_parser("tail", help="print live samples from the broker as JSON lines")
    tail.add_argument("--host", help="only this agent host id")
    tail.add_argument("--broker", type=_broker, help="host:port (default: from -c, else "
                                                     "127.0.0.1:1883)")
    tail.add_argument("-c", "--config", type=Path, help="take broker and credentials from here")
    tail.add_argument("--count", type=int, default=0, help="exit after this many messages")
    tail.add_argument("--username", help="MQTT user (a broker-auth reader; default: from -c)")
    tail.add_argument("--password-file", type=Path, metavar="FILE",
                      help="first line: the password (the file must be private: chmod 600)")
    tail.add_argument("--tls", action="store_true", help="TLS (default: [mqtt] tls from -c)")
    tail.add_argument("--ca-file", type=Path, metavar="FILE",
                      help="TLS with this CA (default: [mqtt] ca_file from -c, else system CAs)")
    tail.set_defaults(func=cmd_tail)

    add_broker_auth_commands(sub)
    add_token_commands(sub, _load)
    add_storage_commands(sub, _load)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
