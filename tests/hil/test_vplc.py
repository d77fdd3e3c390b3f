"""The virtual PLC's contract logic: handshake, heartbeat watchdog, limits, interlocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.tags import load_tag_map
from hil.site import Interlock, PlcBehaviour
from hil.vplc import Mode, VirtualPlc

ROOT = Path(__file__).resolve().parents[2]
TAGS = load_tag_map(ROOT / "configs" / "tags" / "lyophilizer.yaml")
INPUTS = ("Tsh", "Pch")
WORKING = {"Tsh": -35.0, "Pch": 0.15}
COLLAPSE = Interlock(name="collapse", expression="Tbot", above=-5.0, force={"Tsh": -40.0})


def plc(**behaviour: object) -> VirtualPlc:
    b = PlcBehaviour.model_validate(
        {"heartbeat_timeout": 30.0, "interlocks": [COLLAPSE]} | behaviour
    )
    recipe = lambda t: {"Tsh": -35.0 + 10 * t, "Pch": 0.15}  # noqa: E731 - a tiny recipe
    return VirtualPlc(TAGS, b, INPUTS, WORKING, local_recipe=recipe)


COLD = {"Tbot": -30.0}


def engage(p: VirtualPlc, now: float = 0.0) -> None:
    p.scan(now, 0.0, COLD)
    assert p.on_write("mpc_request", 1) is None
    assert p.on_write("mpc_heartbeat", 1) is None
    p.scan(now, 0.0, COLD)
    assert p.mode is Mode.ACTIVE


def test_local_recipe_drives_until_the_mpc_engages_and_setpoints_track() -> None:
    p = plc()
    applied = p.scan(0.0, 0.5, COLD)
    assert applied == {"Tsh": -30.0, "Pch": 0.15}
    image = p.image({"Tbot": -31.0}, set(), applied)
    assert image["shelf_temp_sp"] == -30.0 and image["shelf_temp_pv"] == -30.0  # tracking
    assert image["mpc_permissive"] == 1.0 and image["mpc_active"] == 0.0
    assert image["product_temp_bottom"] == -31.0


def test_remote_setpoints_are_refused_until_active_then_accepted_within_limits_and_rate() -> None:
    p = plc()
    assert "only while the MPC is active" in (p.on_write("shelf_temp_sp", -34.0) or "")
    engage(p, now=0.0)
    for k in range(1, 19):  # a heartbeat every 20 s up to t = 360 s
        p.on_write("mpc_heartbeat", k + 1)
        p.scan(20.0 * k, 0.1, COLD)
    assert "outside the PLC range" in (p.on_write("shelf_temp_sp", 130.0) or "")
    # max_rate 0.0167 degC/s x 360 s x 1.25 = 7.5 degC allowed
    assert "rate limit" in (p.on_write("shelf_temp_sp", -35.0 + 9.0) or "")
    assert p.on_write("shelf_temp_sp", -35.0 + 5.0) is None
    assert p.scan(361.0, 0.1, COLD)["Tsh"] == -30.0


def test_heartbeat_loss_falls_back_within_the_timeout_and_holds_the_last_setpoint() -> None:
    p = plc()
    engage(p, now=0.0)
    p.scan(10.0, 0.0, COLD)
    assert p.on_write("shelf_temp_sp", -34.9) is None  # 0.1 degC in 10 s: within the rate
    for now in (20.0, 29.0):
        p.scan(now, 0.0, COLD)
        assert p.mode is Mode.ACTIVE
    applied = p.scan(30.5, 0.0, COLD)  # heartbeat unchanged since t=0, timeout 30 s
    assert p.mode is Mode.FALLBACK and p.alarm
    assert applied["Tsh"] == -34.9  # the last good setpoint, not the recipe
    image = p.image(COLD, set(), applied)
    assert image["mpc_active"] == 0.0 and image["mpc_fallback_alarm"] == 1.0
    assert image["mpc_permissive"] == 0.0
    assert any(e.what == "fallback" and "heartbeat" in e.detail for e in p.events)


def test_changing_heartbeat_keeps_control() -> None:
    p = plc()
    engage(p, now=0.0)
    for k in range(1, 20):
        p.on_write("mpc_heartbeat", k + 1)
        p.scan(20.0 * k, 0.0, COLD)
    assert p.mode is Mode.ACTIVE


@pytest.mark.parametrize("reset_required", [True, False])
def test_reengaging_after_fallback_needs_request_cycled_and_maybe_an_operator_reset(
    reset_required: bool,
) -> None:
    p = plc(operator_reset_required=reset_required)
    engage(p, now=0.0)
    p.scan(31.0, 0.0, COLD)
    assert p.mode is Mode.FALLBACK
    p.scan(32.0, 0.0, COLD)  # request still high: not re-engaged
    assert p.mode is not Mode.ACTIVE and not p.permissive
    p.on_write("mpc_request", 0)
    p.scan(33.0, 0.0, COLD)
    p.on_write("mpc_request", 1)
    p.on_write("mpc_heartbeat", 5)
    p.scan(34.0, 0.0, COLD)
    if reset_required:
        assert p.mode is not Mode.ACTIVE and p.alarm
        p.on_write("operator_reset", 1)
        p.scan(35.0, 0.0, COLD)
    assert p.mode is Mode.ACTIVE and not p.alarm


def test_handshake_order_is_enforced_request_without_permissive_does_nothing() -> None:
    p = plc()
    hot = {"Tbot": -4.0}
    p.on_write("mpc_request", 1)
    applied = p.scan(0.0, 0.0, hot)
    assert p.mode is Mode.LOCAL and not p.permissive
    assert applied["Tsh"] == -40.0  # the interlock forces the shelf to cool
    assert p.image(hot, set(), applied)["interlock_active"] == 1.0


def test_interlock_drops_an_active_mpc() -> None:
    p = plc()
    engage(p)
    applied = p.scan(1.0, 0.0, {"Tbot": -4.0})
    assert p.mode is Mode.FALLBACK and applied["Tsh"] == -40.0
    assert any("interlock" in e.detail for e in p.events)


def _trips(p: VirtualPlc, tbot: list[float]) -> list[bool]:
    """Whether the interlock holds after each scan at the given Tbot values."""
    out = []
    for k, value in enumerate(tbot):
        applied = p.scan(float(k), 0.0, {"Tbot": value})
        out.append(p.image({"Tbot": value}, set(), applied)["interlock_active"] == 1.0)
    return out


#: Tbot as the freeze dryer answers the forced shelf: within a scan, then back up.
CHATTER = [-4.0, -5.5, -4.5, -5.5, -6.0, -8.5, -4.0]


def test_an_interlock_without_hysteresis_chatters_at_every_scan() -> None:
    # the failure hysteresis protects against: the lock clears as soon as Tbot is back
    # within its limit, the local recipe heats again, it trips again (c003, c010 in MC)
    assert _trips(plc(), CHATTER) == [True, False, True, False, False, False, True]


def test_a_tripped_interlock_holds_until_the_quantity_reaches_its_release() -> None:
    lock = COLLAPSE.model_copy(update={"release": -8.0})
    p = plc(interlocks=[lock])
    assert _trips(p, CHATTER) == [True, True, True, True, True, False, True]
    events = [e.detail for e in p.events if "interlock" in e.detail or "collapse" in e.detail]
    assert len(events) == 3  # tripped, cleared at -8.5, tripped again: no chatter


def test_a_below_interlock_releases_above_its_release_and_nan_never_clears() -> None:
    lock = Interlock(name="low", expression="Tbot", below=-50.0, release=-45.0, force={"Tsh": 0.0})
    p = plc(interlocks=[lock])
    assert _trips(p, [-51.0, -47.0, float("nan"), -44.0, -49.0]) == [True, True, True, False, False]


@pytest.mark.parametrize(
    ("side", "release", "message"),
    [("above", -4.0, "at or below 'above'"), ("below", -6.0, "at or above 'below'")],
)
def test_a_release_on_the_unsafe_side_is_refused(side: str, release: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Interlock.model_validate(
            {"name": "x", "expression": "Tbot", side: -5.0, "release": release, "force": {}}
        )


def test_release_hands_back_bumplessly() -> None:
    p = plc()
    engage(p)
    p.on_write("mpc_heartbeat", 2)
    p.scan(20.0, 0.0, COLD)
    assert p.on_write("shelf_temp_sp", -34.8) is None
    p.on_write("mpc_request", 0)
    applied = p.scan(21.0, 5.0, COLD)  # the recipe would say +15 degC at t=5
    assert p.mode is Mode.LOCAL and applied["Tsh"] == -34.8 and not p.alarm


def test_counters_and_validity_bits() -> None:
    p = plc()
    applied = p.scan(0.0, 0.0, COLD)
    p.scan(0.1, 0.0, COLD)
    image = p.image(COLD, {"Tbot"}, applied)
    assert image["plc_heartbeat"] == 2 and image["plc_scan_counter"] == 2
    assert image["measurement_validity"] == 0  # Tbot is the only measurement: bad
    assert p.image(COLD, set(), applied)["measurement_validity"] == 1


def test_check_write_has_no_side_effects() -> None:
    p = plc()
    engage(p)
    p.on_write("mpc_heartbeat", 2)
    p.scan(20.0, 0.0, COLD)
    assert p.check_write("shelf_temp_sp", -34.9) is None
    assert p.scan(21.0, 0.0, COLD)["Tsh"] == -35.0  # checked, not applied
    assert "outside the PLC range" in (p.check_write("chamber_pressure_sp", 0.9) or "")
