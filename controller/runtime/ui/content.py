"""What the operator page is served besides its rows: its static files, the site description
(``/api/meta``) and the what-if forecast table (``/api/forecast``). Plain data, no web server.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import TYPE_CHECKING, Any

from controller.timebase import TimeBase

if TYPE_CHECKING:
    from controller.runtime.supervisor import Supervisor
    from controller.twin.forecast import Forecast

#: The handshake tags the page shows (those the site's tag map has).
#: the handshake as read, with why the PLC would not (or no longer) give the MPC control
HANDSHAKE = (
    "mpc_request",
    "mpc_permissive",
    "mpc_active",
    "mpc_fallback_alarm",
    "interlock_active",
    "mpc_heartbeat",
    "plc_heartbeat",
)


def num(v: Any) -> float | None:
    """JSON-safe number: NaN and infinities become null."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def asset(name: str) -> str:
    """A file of the page (``static/index.html``, ``static/app.js``) as text."""
    return (resources.files("controller.runtime.ui") / "static" / name).read_text(encoding="utf-8")


_PLOTLY: list[str] = []


def plotly_js() -> str:
    """Plotly's own bundle, from the installed ``plotly`` package (nothing fetched)."""
    if not _PLOTLY:
        from plotly.offline import get_plotlyjs

        _PLOTLY.append(get_plotlyjs())
    return _PLOTLY[0]


def forecast_table(fc: Forecast) -> dict[str, Any]:
    """The page's what-if table: the start time, the CQAs (name, expression, at) and one row
    per plan (its CQAs, end time, whether the batch finished, status). Non-finite numbers
    are null."""
    data = fc.to_dict()
    cqas = [{k: c[k] for k in ("name", "expression", "at")} for c in data["cqas"]]
    return {
        "site": data["site"],
        "time_unit": data["time_unit"],
        "start_t": data["start"]["t"],
        "cqas": cqas,
        "rows": data["table"],
    }


def describe(sup: Supervisor) -> dict[str, Any]:
    """What the page needs once: trends (tag, unit, limits), the estimated parameters."""
    tags = sup.site.tags.tags
    trends = []
    for kind, mapping in (("CV", sup.y_tags), ("MV", sup.sp_tags)):
        for var, tag in mapping.items():
            spec = tags[tag]
            trends.append(
                {
                    "kind": kind,
                    "var": var,
                    "tag": tag,
                    "pv": sup.pv_tags.get(var) if kind == "MV" else None,
                    "unit": spec.unit,
                    "limits": list(spec.limits) if spec.limits else None,
                }
            )
    trend_tags = sorted({str(t["tag"]) for t in trends} | {str(t["pv"]) for t in trends if t["pv"]})
    return {
        "site": sup.site.name,
        "mode": sup.mode.value,
        "run_id": sup.run_id,
        "time_unit": sup.model.time_unit,
        "seconds_per_unit": TimeBase.of(sup.model).seconds_per_unit,
        "sample_time": sup.site.controller.sample_time,
        "trends": trends,
        "trend_tags": trend_tags,
        "handshake": [t for t in HANDSHAKE if t in tags],
    }
