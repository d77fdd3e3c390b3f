"""The audit and historian encoders built once write the same text as ``json.dumps`` did:
existing audit chains keep verifying, historian rows stay as they were."""

from __future__ import annotations

import json
import math

from controller.runtime.audit import _DETAIL
from controller.runtime.audit_chain import FIELDS, digest
from controller.runtime.historian_records import (
    JSON_FIELDS,
    CycleRecord,
    Measurement,
    encode_cycle,
)

DETAIL = {
    "z": [1.0, 2.5e-12, math.inf, -math.nan],
    "a": {"b": 1, "é": "ü", "nested": {"y": None, "x": True}},
    "path": object(),  # default=str
    "ratio": 1 / 3,
}


def test_detail_text_is_json_dumps_sorted_with_str_default() -> None:
    plain = {k: v for k, v in DETAIL.items() if k != "path"}
    assert _DETAIL.encode(plain) == json.dumps(plain, sort_keys=True, default=str)
    with_object = {"path": DETAIL["path"]}
    assert _DETAIL.encode(with_object) == json.dumps(with_object, sort_keys=True, default=str)


def test_digest_is_sha256_of_the_compact_json_list() -> None:
    import hashlib

    values = {f: f"{f}-é" for f in FIELDS} | {"old_value": None, "new_value": "1.5"}
    body = json.dumps(["0" * 64, *[values[f] for f in FIELDS]], separators=(",", ":"))
    assert digest("0" * 64, values) == hashlib.sha256(body.encode()).hexdigest()


def test_cycle_row_blobs_are_compact_json_dumps() -> None:
    c = CycleRecord(
        run_id="r",
        cycle=3,
        t=1.5,
        utc="2026-01-01T00:00:00.000000+00:00",
        state="running",
        measurements={"T": Measurement(300.25, "good", 1.0)},
        estimates={"x": 1 / 3},
        estimate_std={"x": 1e-9},
        predicted={"x": [1.0, math.nan]},
        decision={"status": "ok", "objective": 2.0},
        setpoints={"u": 0.5},
        safety=[{"name": "u", "detail": "é"}],
        wrote=True,
        monitor={"chart.a": math.inf},
    )
    row = encode_cycle(c)
    blobs = [
        json.dumps(getattr(c, n), separators=(",", ":"))
        for n in (*JSON_FIELDS, "safety", "monitor")
    ]
    assert list(row[6:]) == blobs
