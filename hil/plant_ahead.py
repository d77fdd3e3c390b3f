"""The true plant's look-ahead: held inputs integrated over several plant steps at once.

The HIL rig steps the true plant once per PLC scan, five scans per controller sample, and
the setpoints mostly change once per sample. Each step is a CVODES/IDAS run of its own: a
restart from a tiny first step, a consistent algebraic start, CasADi's per-call overhead.
With a look-ahead of ``n`` steps, :class:`~hil.plant_runner.PlantRunner` integrates ``n``
steps at the current inputs in one run, with an output at each step's end (a
:class:`Window`), and takes the following steps from it for as long as they start where the
last one ended, with the same inputs and parameters.

The numbers are those of the exact equations, integrated to the same tolerances, but not bit
for bit those of separate steps (the integrator is not restarted at every step's end; the
difference is of the order of the integrator's tolerance). Nothing else changes: every step's
state is checked against the validity domain, and a step that would cross the batch's
natural end or leave the domain is taken on its own from its start (which locates the end,
or reports the fault, as without the look-ahead). The plant's noise, faults, disturbances
and recipe ramps are as before (ramps and disturbances are always integrated step by step).

A window opens once the inputs have been held for a step, or at once when the previous
inputs were held for at least a whole window (a steady rhythm of setpoint changes); inputs
that change at every scan (a PLC interlock chattering) are integrated step by step, with no
window wasted on them.

The look-ahead is opt-in (``PlantRunner(..., lookahead=lookahead_for(sample_time,
plant_step))``): since its numbers are not bit for bit those of separate steps, a closed loop
near a decision's edge can take the other branch (a campaign case whose batch ends minutes
apart), so whether the rig uses it is a decision of its own.
"""

from __future__ import annotations

import math

import numpy as np

from controller.core.prediction import BufferedFunction

__all__ = ["Window", "lookahead_for"]


def lookahead_for(sample_time: float, plant_step: float) -> int:
    """The look-ahead of a plant stepped ``plant_step`` per scan under a controller sampling
    every ``sample_time``: the scans per sample when that is a whole number >= 2, else 1."""
    if not (plant_step > 0 and math.isfinite(sample_time / plant_step)):
        return 1
    n = round(sample_time / plant_step)
    return n if n >= 2 and abs(n * plant_step - sample_time) <= 1e-9 * sample_time else 1


class Window:
    """The look-ahead window of one plant: ``grid`` is the model's stepper with ``steps``
    output intervals (:func:`hil.plant_compiled.grid_stepper`), None for no look-ahead."""

    def __init__(self, grid: BufferedFunction | None, steps: int) -> None:
        self.grid, self.steps = grid, steps
        self._states: list[tuple[np.ndarray, np.ndarray]] = []
        self._key: tuple[np.ndarray, np.ndarray, bytes] | None = None
        self._run = 0  # steps at the current inputs
        self._last_run = 0  # steps the previous inputs were held
        #: windows integrated, and steps taken from them (for tests and profiles)
        self.opened = 0
        self.taken = 0

    def note(self, last: np.ndarray, u: np.ndarray) -> bool:
        """Count the steps the inputs are held (``u`` after ``last``); True when held."""
        held = last.tobytes() == u.tobytes()
        if held:
            self._run += 1
        else:
            self._last_run, self._run = self._run, 1
        return held

    def follows(self, x: np.ndarray, p: np.ndarray, u: np.ndarray) -> bool:
        """The next state of the window starts at ``x`` (the very array the last one taken
        ended at), with the same parameters ``p`` (the same array) and inputs ``u``."""
        key = self._key
        return (
            bool(self._states)
            and key is not None
            and key[0] is x
            and key[1] is p
            and key[2] == u.tobytes()
        )

    def worth_opening(self, held: bool) -> bool:
        """Whether a window at these inputs is likely to be used (see the module docstring)."""
        return held or self._last_run >= self.steps

    def open(self, x: np.ndarray, z: np.ndarray, u: np.ndarray, p: np.ndarray, h: float) -> bool:
        """Integrate the next ``steps`` steps of length ``h`` from ``x`` (``z`` consistent
        with it at ``u``), inputs held at ``u``; False (an empty window) when that fails."""
        self.close()
        if self.grid is None:
            return False
        k = self.steps
        try:
            xf, zf = self.grid(x, z, u, u, p, h * k)
        except RuntimeError:
            return False
        xs, zs = xf.reshape((-1, k), order="F"), zf.reshape((-1, k), order="F")
        self._states = [(xs[:, j].copy(), zs[:, j].copy()) for j in range(k)]
        self.opened += 1
        return True

    def close(self) -> None:
        """Drop what is left of the window."""
        self._states, self._key = [], None

    def take(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The next step's end state (x, z), None when the window is empty."""
        return self._states.pop(0) if self._states else None

    def mark(self, x: np.ndarray, p: np.ndarray, u: np.ndarray) -> None:
        """The step taken ended at ``x`` (with ``p`` and ``u``): the next one follows it."""
        self._key = (x, p, u.tobytes())
        self.taken += 1
