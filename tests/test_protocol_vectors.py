"""SPEC.md §3's test vectors: the reference decoder and a decoder written in JavaScript from
SPEC.md alone (tests/spec_decoder/decode.mjs) accept every positive vector with the same samples
and refuse every negative one with the same reason."""

from __future__ import annotations

import json
import shutil
import subprocess
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest

from edgemon import protocol
from edgemon.protocol import ProtocolError
from edgemon.protocol.base import base_values, last_values
from edgemon.protocol.catalogue import decode_catalogue, decode_received

VECTORS = Path(protocol.__file__).parent / "vectors"
DICTIONARIES = Path(protocol.__file__).parent / "dictionaries"
SPEC = Path(protocol.__file__).parent / "SPEC.md"
NODE_DECODER = Path(__file__).parent / "spec_decoder" / "decode.mjs"
NEGATIVE: list[dict[str, str]] = json.loads((VECTORS / "negative.json").read_text())
POSITIVE: list[dict[str, str]] = [{"name": "v1-basic", "file": "v1-basic.hex"},
                                  *json.loads((VECTORS / "positive.json").read_text())]


def payload(entry: dict[str, str], key: str = "file") -> bytes:
    return bytes.fromhex((VECTORS / entry[key]).read_text().strip())


def decoded(entry: dict[str, str]) -> dict[str, Any]:
    """The batch of a vector, read with the catalogue and the base batch its entry names (a
    based batch, SPEC.md §9.1), else by the inline decoder."""
    if "catalogue" not in entry:
        return protocol.decode(payload(entry))
    catalogue = decode_catalogue(payload(entry, "catalogue"))
    base, _ = decode_received(payload(entry, "base"), {catalogue.id: catalogue}.get)
    lasts = last_values(base.metrics)
    return decode_received(payload(entry), {catalogue.id: catalogue}.get,
                           lambda i, seq, c: base_values(lasts, c)
                           if (i, seq) == (base.instance, base.seq) else None)[0].to_map()


def node_argument(entry: dict[str, str]) -> str:
    return ":".join(entry[k] for k in ("file", "catalogue", "base") if k in entry)


def samples(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Every sample of a decoded batch with exact integers, as the JavaScript decoder prints."""
    ts = list(accumulate(batch["t"]))
    out = []
    for name, kind, unit, scale, keys, series in batch["metrics"]:
        for labels, offset, values in series:
            for i, raw in enumerate(accumulate(values)):
                out.append({"name": name, "kind": kind, "unit": unit,
                            "labels": dict(zip(keys, labels, strict=True)),
                            "ts": str(ts[offset + i]), "raw": str(raw), "scale": scale})
    return out


def test_the_reference_decoder_accepts_the_positive_vectors() -> None:
    for entry in POSITIVE:
        batch = decoded(entry)
        assert samples(batch), entry["name"]
    documented = json.loads((VECTORS / "v1-basic.samples.json").read_text())
    basic = samples(protocol.decode(payload(POSITIVE[0])))
    assert sorted((s["name"], s["ts"], int(s["raw"]) / 10 ** s["scale"]) for s in basic) == sorted(
        (s["name"], str(s["timestamp_ms"]), s["value"]) for s in documented)


@pytest.mark.parametrize("entry", NEGATIVE, ids=[e["name"] for e in NEGATIVE])
def test_the_reference_decoder_refuses_each_negative_vector_with_its_reason(
        entry: dict[str, str]) -> None:
    with pytest.raises(ProtocolError) as info:
        decoded(entry)
    assert info.value.reason == entry["reason"], info.value


def test_spec_lists_every_negative_vector_and_reason() -> None:
    text = SPEC.read_text()
    assert "negative.json" in text and "positive.json" in text
    for reason in {e["reason"] for e in NEGATIVE}:
        assert f"`{reason}`" in text, reason


@pytest.fixture(scope="module")
def node_results() -> dict[str, dict[str, Any]]:
    node, zstd = shutil.which("node"), shutil.which("zstd")
    if node is None or zstd is None:
        pytest.skip("needs node (>= 18) and the zstd command (Debian: nodejs, zstd)")
    files = [node_argument(e) for e in POSITIVE + NEGATIVE]
    done = subprocess.run([node, str(NODE_DECODER), str(DICTIONARIES), *files], cwd=VECTORS,
                          capture_output=True, text=True, timeout=120, check=True)
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["file"] for r in results] == files
    return {r["file"]: r for r in results}


def _order(sample: dict[str, Any]) -> tuple[str, str, int]:
    return sample["name"], json.dumps(sample["labels"], sort_keys=True), int(sample["ts"])


def test_a_decoder_written_from_the_spec_agrees_on_the_positive_vectors(
        node_results: dict[str, dict[str, Any]]) -> None:
    for entry in POSITIVE:
        result = node_results[node_argument(entry)]
        assert result["ok"], (entry["name"], result)
        batch = decoded(entry)
        assert sorted(result["samples"], key=_order) == sorted(samples(batch), key=_order), entry

        assert result["batch"] == {"host": batch["host"], "instance": batch["instance"],
                                   "seq": str(batch["seq"]), "sent": str(batch["sent"])}


def test_a_decoder_written_from_the_spec_refuses_the_negative_vectors_alike(
        node_results: dict[str, dict[str, Any]]) -> None:
    results = {e["name"]: node_results[node_argument(e)] for e in NEGATIVE}
    wrong = {e["name"]: results[e["name"]].get("reason") for e in NEGATIVE
             if results[e["name"]]["ok"] or results[e["name"]]["reason"] != e["reason"]}
    assert wrong == {}
