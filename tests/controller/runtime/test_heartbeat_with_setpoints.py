"""The heartbeat rides in the setpoints' write (one Write and one read-back per cycle fewer over
OPC UA), and never depends on the setpoints' fate: a write the PLC refuses for a setpoint
sends nothing, so the heartbeat then goes alone. On the supervisor of test_supervisor.py
(the memory port, a stand-in PLC, a stepped clock).
"""

from __future__ import annotations

import pytest
from test_supervisor import SETPOINTS, Env, env, site  # noqa: F401 - fixtures

from controller.runtime.supervisor import State

pytestmark = pytest.mark.timeout(60)


async def test_the_heartbeat_goes_in_the_setpoints_write(env: Env) -> None:  # noqa: F811
    assert await env.cycles(4) == [State.REQUESTING] + [State.RUNNING] * 3
    running = [v for v, _ in env.port.writes][2:]  # REQUESTING: heartbeat, then mpc_request
    assert [set(v) for v in running] == [{"mpc_heartbeat", *SETPOINTS.values()}] * 3
    assert [v["mpc_heartbeat"] for v in running] == [2.0, 3.0, 4.0]  # counting on
    assert env.port.table.current("mpc_heartbeat") == 4.0
    assert env.sup.counters.writes == 1 + 3  # mpc_request, then the setpoints of 3 cycles


async def test_a_refused_setpoint_does_not_stop_the_heartbeat(env: Env) -> None:  # noqa: F811
    """The PLC refuses the shelf setpoint (its own check: nothing of that write changes); the
    heartbeat still reaches it, every cycle, while the refusals hold the controller."""
    assert await env.cycles(2) == [State.REQUESTING, State.RUNNING]

    def plc_check(tag: str, value: float) -> str | None:
        return "over the PLC's rate limit" if tag == "shelf_temp_sp" else None

    env.port.table.write_check = plc_check
    for count in (3.0, 4.0):
        view = await env.cycle()
        assert view.state is State.HOLD
        assert any("over the PLC's rate limit" in p for p in view.problems)
        assert env.port.table.current("mpc_heartbeat") == count
    assert env.sup.counters.failed_writes == 2  # one refused setpoint write per cycle
    assert env.sup.counters.writes == 2  # mpc_request, then the first cycle's setpoints
