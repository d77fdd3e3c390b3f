"""JSON output files: JSON-safe data (JSON has no NaN) and atomic writes.

One writer for every JSON result the project leaves behind: campaign manifests and case
results, tuning and design-space tables, KPI files and what-if forecasts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["json_safe", "write_json"]


def json_safe(value: Any) -> Any:
    """A JSON-safe copy: NaN and infinities become null (JSON has no NaN), numpy arrays lists
    and numpy scalars plain numbers, tuples lists, keys strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Any) -> Path:
    """Write ``json_safe(data)`` atomically (a temporary file, then a rename): a reader never
    sees half a file, and a file that exists is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(json_safe(data), indent=2, allow_nan=False, default=str)
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
