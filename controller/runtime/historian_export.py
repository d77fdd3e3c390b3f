"""Parquet export of the historian: one flat row per cycle, the runs' RunInfo as metadata."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from controller.errors import unknown_name
from controller.runtime.audit_chain import software_version
from controller.runtime.historian import Historian
from controller.runtime.historian_records import CycleRecord, HistorianError, RunInfo, utc_now

# (column, Arrow type, value of one cycle) and (prefix, Arrow type, name -> value per cycle).
_Getter = Callable[[CycleRecord], Any]
_FIXED: tuple[tuple[str, str, _Getter], ...] = (
    ("run_id", "string", lambda c: c.run_id),
    ("cycle", "int64", lambda c: c.cycle),
    ("t", "float64", lambda c: c.t),
    ("utc", "string", lambda c: c.utc),
    ("state", "string", lambda c: c.state),
    ("wrote", "bool", lambda c: c.wrote),
    ("solve.status", "string", lambda c: c.decision.get("status")),
    ("solve.return_status", "string", lambda c: c.decision.get("return_status")),
    ("solve.iterations", "int64", lambda c: c.decision.get("iterations")),
    ("solve.time_s", "float64", lambda c: c.decision.get("solve_time_s")),
    ("solve.objective", "float64", lambda c: c.decision.get("objective")),
    ("interventions", "string", lambda c: json.dumps(c.safety)),
)
_GROUPS: tuple[tuple[str, str, _Getter], ...] = (
    ("meas.", "float64", lambda c: {k: m[0] for k, m in c.measurements.items()}),
    ("quality.", "string", lambda c: {k: m[1] for k, m in c.measurements.items()}),
    ("source_time.", "float64", lambda c: {k: m[2] for k, m in c.measurements.items()}),
    ("est.", "float64", lambda c: c.estimates),
    ("std.", "float64", lambda c: c.estimate_std),
    ("pred.", "list<float64>", lambda c: c.predicted),
    ("mpc.", "float64", lambda c: c.decision.get("inputs", {})),
    ("u.", "float64", lambda c: c.setpoints),
    ("safety.", "string", lambda c: {i["name"]: i["reason"] for i in c.safety}),
    ("mon.", "float64", lambda c: c.monitor),
)


def _flatten(cycles: Sequence[CycleRecord]) -> list[tuple[str, str, list[Any]]]:
    """(column, type, values): the fixed columns, then each group's names in first-seen order."""
    columns = [(name, kind, [get(c) for c in cycles]) for name, kind, get in _FIXED]
    for prefix, kind, get in _GROUPS:
        per_cycle = [get(c) for c in cycles]
        names = dict.fromkeys(n for values in per_cycle for n in values)
        columns += [(prefix + n, kind, [v.get(n) for v in per_cycle]) for n in names]
    return columns


def export_parquet(historian: Historian, path: Path, run_id: str | None = None) -> Path:
    """Write one flat row per cycle (of ``run_id``, or of all runs) to a Parquet file.

    The schema metadata holds ``pharmatwin.runs`` (a JSON list of the exported runs'
    :class:`RunInfo`), ``pharmatwin.run`` (the one RunInfo, when one run is exported) and
    the exporting software version. Raises HistorianError for an unknown run.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    runs = [r for r in historian.runs() if run_id is None or r.run_id == run_id]
    if run_id is not None and not runs:
        known = [r.run_id for r in historian.runs()]
        raise HistorianError(unknown_name("run", run_id, known, context=" in the historian"))
    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
        "list<float64>": pa.list_(pa.float64()),
    }
    columns = _flatten(historian.cycles(run_id))
    meta = {
        "pharmatwin.runs": json.dumps([dataclasses.asdict(r) for r in runs]),
        "pharmatwin.exported_by": software_version(),
        "pharmatwin.exported_utc": utc_now(),
    }
    if len(runs) == 1:
        meta["pharmatwin.run"] = json.dumps(dataclasses.asdict(runs[0]))
    path = Path(path)
    try:
        table = pa.table(
            {name: pa.array(values, type=types[kind]) for name, kind, values in columns},
        ).replace_schema_metadata(meta)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    except (OSError, pa.ArrowException) as exc:
        raise HistorianError(f"cannot export the historian to {path}: {exc}") from exc
    return path


def read_run_metadata(path: Path) -> list[RunInfo]:
    """The :class:`RunInfo` records stored in a Parquet export's schema metadata."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return [RunInfo(**r) for r in json.loads(meta.get(b"pharmatwin.runs", b"[]"))]
