"""An input the controller cannot set is a problem of the cycle, never a clean one.

The PLC's working chamber pressure (0.5 Torr: a trusted reading) lies outside the
controller's limits [0.05, 0.3] and more than one move (0.05) away: the safety layer finds no
safe value for Pch (``NO_SAFE_VALUE``) and writes nothing for it. Before, the supervisor
engaged and stayed RUNNING with clean cycles, feeding the PLC's watchdog with heartbeats, so
the PLC never fell back while Pch sat where nobody controlled it. Now each such cycle is a
problem: HOLD, then FALLBACK after ``max_bad_cycles``, and nothing is written for Pch.
"""

from __future__ import annotations

from test_supervisor import SETPOINTS, Env, env, site  # noqa: F401 (fixtures)

from controller.runtime.site import Site
from controller.runtime.supervisor import State


async def test_an_input_out_of_reach_holds_then_falls_back(env: Env, site: Site) -> None:  # noqa: F811
    env.plc.working = {"Tsh": -20.0, "Pch": 0.5}
    pch = site.controller.inputs["Pch"]
    assert pch.max_move == 0.05 and not 0.5 - pch.max_move <= 0.3  # out of reach
    states = await env.cycles(2 + site.runtime.max_bad_cycles)
    assert State.RUNNING not in states[1:], states  # never a clean RUNNING cycle
    assert states[-1] is State.FALLBACK, states
    held = [v for v in env.views if v.problems]
    assert held and all("cannot set Pch" in v.problems[0] for v in held)
    assert "[0.05, 0.3]" in held[0].problems[0] and "nothing written" in held[0].problems[0]
    assert not any(SETPOINTS["Pch"] in w for w in env.port.setpoint_writes())
    assert {"mpc_request": 0.0} in [w for w, _ in env.port.writes]  # control handed back
