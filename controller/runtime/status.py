"""The live status table of ``pharmatwin run`` in the terminal (``--quiet`` turns it off).

A :class:`~controller.runtime.wiring.Sink`: the supervisor hands it each cycle's view after the
historian; the sink only keeps a reference to it (no formatting on the control path). rich's
``Live`` redraws the table from its own thread a few times a second, and log lines print
above it. It shows the state and why, the cycle and process time, the latest value and quality
of every measurement and working setpoint, the setpoints written (closed loop) or recommended
(shadow), the cycle's problems, and the counters an operator watches.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from controller.runtime.supervisor import CycleView, Supervisor

#: the supervisor's counters the table shows (an operator's first questions)
WATCHED = ("writes", "fallbacks", "failed_solves", "stale_data", "bad_data", "read_failures")
_STATE_STYLE = {
    "RUNNING": "green",
    "SHADOW": "cyan",
    "HOLD": "yellow",
    "DEGRADED": "yellow",
    "FALLBACK": "red",
    "RELEASED": "yellow",
    "STOPPED": "red",
}


def _number(x: float) -> str:
    return f"{x:.5g}" if math.isfinite(x) else str(x)


class StatusSink:
    """A rich ``Live`` table of the run, redrawn ``refresh_per_second`` times from its thread."""

    def __init__(self, console: Console, refresh_per_second: float = 4.0) -> None:
        self.console = console
        self.refresh_per_second = refresh_per_second
        self.sup: Supervisor | None = None
        self.view: CycleView | None = None
        self._live: Live | None = None

    def start(self, sup: Supervisor, stop: asyncio.Event) -> None:
        self.sup = sup
        self._live = Live(
            console=self.console,
            get_renderable=self.render,
            refresh_per_second=self.refresh_per_second,
            transient=True,  # the summary table replaces it at the end
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def cycle(self, sup: Supervisor, view: CycleView) -> None:
        self.view = view  # the refresh thread formats it

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------ rendering
    def render(self) -> RenderableType:
        """The table for the newest cycle (also a plain call for tests)."""
        sup, view = self.sup, self.view
        if sup is None:
            return Text("starting")
        state = sup.state.value
        style = _STATE_STYLE.get(state, "white")
        head = Text.assemble(
            (f"{sup.site.name} ", "bold"),
            (f"{sup.mode.value} ", ""),
            (state, f"bold {style}"),
        )
        if view is None:
            head.append(f"  waiting for the first cycle ({sup.dt_s:g} s sample)")
            return head
        head.append(f"  cycle {view.cycle}  t = {view.t:.1f} s")
        counters = vars(sup.counters)
        head.append("  " + "  ".join(f"{k} {counters.get(k, 0)}" for k in WATCHED))
        parts: list[RenderableType] = [head, self._values(sup, view)]
        for problem in view.problems[-3:]:
            parts.append(Text(f"problem: {problem}", style="yellow"))
        return Group(*parts)

    def _values(self, sup: Supervisor, view: CycleView) -> Table:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for col in ("variable", "tag", "value", "quality", "setpoint"):
            table.add_column(col, justify="right" if col in ("value", "setpoint") else "left")
        snap = view.snapshot
        written = view.written
        outcome = view.outcome  # a held cycle recommends (plans) nothing
        recommended = outcome.setpoints if outcome is not None and not outcome.held else {}
        sp_tags: Mapping[str, str] = getattr(sup, "sp_tags", {})
        rows: dict[str, str] = {
            **getattr(sup, "y_tags", {}),
            **getattr(sup, "pv_tags", {}),
        }
        for name in sp_tags:
            rows.setdefault(name, sp_tags[name])
        for name, tag in rows.items():
            tv = snap.values.get(tag) if snap is not None else None
            value = _number(tv.value) if tv is not None else "-"
            quality = tv.quality.name if tv is not None else "unread"
            table.add_row(
                escape(name),
                escape(tag),
                value,
                quality,
                self._setpoint(name, sp_tags, written, recommended, sup),
            )
        return table

    @staticmethod
    def _setpoint(
        name: str,
        sp_tags: Mapping[str, str],
        written: Mapping[str, float],
        recommended: Mapping[str, float],
        sup: Supervisor,
    ) -> str:
        tag = sp_tags.get(name)
        if tag is not None and tag in written:
            return f"wrote {_number(written[tag])}"
        if name in recommended:
            verb = "recommends" if sup.mode.value == "shadow" else "plans"
            return f"{verb} {_number(recommended[name])}"
        return ""
