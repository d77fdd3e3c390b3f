"""Resuming a campaign: which finished results a re-run may keep (:func:`previous_result`),
and what they depend on beyond the case's own definition (:func:`case_configuration`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hil.campaign.cases import Case
from hil.campaign.results import record_problem

__all__ = ["case_configuration", "previous_result"]


def case_configuration(info: dict[str, Any], criteria: list[dict[str, Any]], case: Case) -> str:
    """What a case's result depends on beyond its own definition (:attr:`Case.digest`): the
    files of the site, controller, tag map, plant and scenario (their hashes in the manifest
    ``info``, the campaign file's own left out), the definitions of the criteria that judge the
    case, the software (version, commit, uncommitted source changes, Python, libraries) and
    the audit key, and for a case in hil mode the clock's rate. A rerun reuses a result only
    when this is the same: a changed controller, a tightened criterion, edited code, another
    key or rate ran again, not passed on the old results."""
    files = {k: v for k, v in info["config_hashes"].items() if k != info.get("file")}
    sw, keys = info["software"], ("version", "git_commit", "source_changes", "python", "libraries")
    body = {
        "files": files,
        "criteria": [c for c in criteria if c["id"] in case.criteria],
        "software": {k: sw.get(k) for k in keys},
        "audit_key": info.get("audit_key"),  # trails signed with another key: run again
    }
    if case.run_mode(info.get("mode", "fast")) == "hil":  # only then: fast digests unchanged
        body["hil_rate"] = info.get("rate")
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def previous_result(out: Path, case: Case, mode: str, config: str) -> dict[str, Any] | None:
    """The case's finished result if it was run with the same definition, mode and
    configuration (:func:`case_configuration`), and its record stands
    (:func:`~hil.campaign.results.record_problem`); else None: run it again."""
    folder = out / "cases" / case.id
    try:
        spec = json.loads((folder / "spec.json").read_text(encoding="utf-8"))
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if spec.get("digest") != case.digest or spec.get("mode") != mode:
        return None
    if spec.get("configuration") != config:
        return None  # another controller, site, criterion or software made that result
    if result.get("status") not in ("passed", "failed"):
        return None  # errored cases run again
    if record_problem(result, folder / "result.json", spec.get("criteria")) is not None:
        return None  # a record the report would call an error (or lacking a verdict for a
        # criterion its spec.json lists) is no finished case
    return dict(result)
