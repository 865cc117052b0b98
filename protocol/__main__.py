"""``python -m edgemon.protocol decode [FILE]``: print the samples of a batch as JSON lines.

FILE (default stdin) holds one payload, raw bytes or hex text. A batch naming a series catalogue
(SPEC.md §9) needs the catalogue message: ``--catalogue CATALOGUE_FILE``; one that goes on from
an earlier batch (§9.1) needs that batch too: ``--base BASE_FILE``. For live traffic from a
broker use ``edgemon-collector tail``.
"""

from __future__ import annotations

import argparse
import json
import sys

from edgemon.protocol.base import base_values, last_values
from edgemon.protocol.batch import expand_samples
from edgemon.protocol.catalogue import decode_catalogue, decode_received
from edgemon.protocol.codec import decode
from edgemon.protocol.errors import ProtocolError


def _read(path: str) -> bytes:
    data = sys.stdin.buffer.read() if path == "-" else open(path, "rb").read()  # noqa: SIM115
    text = data.strip()
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgemon.protocol")
    sub = parser.add_subparsers(dest="command", required=True)
    dec = sub.add_parser("decode", help="decode one batch payload (raw or hex)")
    dec.add_argument("file", nargs="?", default="-")
    dec.add_argument("--raw", action="store_true", help="print the batch map, not its samples")
    dec.add_argument("--catalogue", help="the series catalogue the batch names (raw or hex)")
    dec.add_argument("--base", help="the batch a based batch goes on from (raw or hex)")
    args = parser.parse_args(argv)
    try:
        if args.catalogue:
            catalogue = decode_catalogue(_read(args.catalogue))
            lookup = None
            if args.base:
                base = decode_received(_read(args.base), {catalogue.id: catalogue}.get)[0]
                lasts = last_values(base.metrics)
                lookup = (lambda instance, seq, c: base_values(lasts, c)  # noqa: E731
                          if (instance, seq) == (base.instance, base.seq) else None)
            batch = decode_received(_read(args.file), {catalogue.id: catalogue}.get,
                                    lookup)[0].to_map()
        else:
            batch = decode(_read(args.file))
    except (OSError, ProtocolError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.raw:
        print(json.dumps(batch))
        return 0
    head = {k: batch[k] for k in ("host", "instance", "seq")}
    for sample in expand_samples(batch):
        print(json.dumps({**head, **sample._asdict()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
