"""``pharmatwin-hil fault SITE inject|status|clear``: checked against the site before anything
is held, refused with plain sentences and exit code 2, by the CLI and by the serving process
itself (whatever client sends the request); answers as tables, or JSON with ``--json``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controller.runtime.site import load_site
from controller.tags import load_tag_map
from hil.cli import main
from hil.serve import ServeOptions, admin_request, serve

ROOT = Path(__file__).resolve().parents[2]
LYO = ROOT / "configs" / "sites" / "lyophilizer-modbus.yaml"
#: every tag of the site's tag map (what a wildcard expands to)
N_TAGS = len(load_tag_map(ROOT / "configs" / "tags" / "lyophilizer.yaml").tags)
#: every name a fault may target on the site (what a clear may name): Tbot, Tsh, Pch, every
#: parameter, every tag and "*"
N_NAMES = 3 + len(load_site(LYO).model.parameter_names) + N_TAGS + 1
pytestmark = pytest.mark.timeout(60)
PYDANTIC_DUMP = ("validation error", "input_value", "errors.pydantic.dev", "Traceback")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["fault", str(LYO), *argv])
    return code, capsys.readouterr().out


async def cli_async(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The CLI (which runs its own event loop) in a thread, beside the serving rig."""
    code = await asyncio.to_thread(main, ["fault", str(LYO), *argv])
    return code, capsys.readouterr().out


@pytest.fixture
async def served(tmp_path: Path, port_number: int) -> AsyncIterator[Path]:
    """``pharmatwin-hil serve`` for the lyophilizer site, in this process; yields its state dir."""
    opts = ServeOptions(rate=600.0, modbus_port=port_number, state_dir=tmp_path)
    task = asyncio.create_task(serve(LYO, opts, announce=lambda _: None))
    state = tmp_path / "lyophilizer-modbus.json"
    for _ in range(400):
        if state.exists() or task.done():
            break
        await asyncio.sleep(0.02)
    if task.done():
        task.result()
    yield tmp_path
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def admin(state_dir: Path, request: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = await admin_request(LYO, request, state_dir)
    return answer


# ---------------------------------------------------------------------- refused by the CLI
def test_a_typo_in_the_target_is_refused_with_the_allowed_targets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = cli(capsys, "--state-dir", str(tmp_path), "inject", "sensor_bias", "Tbto",
                    "--magnitude", "2")  # fmt: skip
    assert code == 2
    assert out.strip() == (
        "error: unknown measured output 'Tbto' for a sensor_bias fault; did you mean 'Tbot'? "
        "allowed: ['Tbot']"
    )


def test_a_long_list_of_allowed_targets_is_listed_on_its_own_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = cli(capsys, "--state-dir", str(tmp_path), "clear", "--target",
                    "product_temp_botom")  # fmt: skip
    assert code == 2
    error, allowed = out.strip().splitlines()
    assert error == (
        "error: unknown fault target 'product_temp_botom'; did you mean "
        f"'product_temp_bottom'? (one of {N_NAMES} allowed)"
    )
    assert allowed.startswith("allowed: Tbot, Tsh, Pch, ")
    assert len(allowed.split(", ")) == N_NAMES


def test_a_bad_status_typo_lists_the_tags_the_controller_reads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = cli(capsys, "--state-dir", str(tmp_path), "inject", "comm_bad_status",
                    "product_temp_botom")  # fmt: skip
    assert code == 2
    assert out.strip() == (
        "error: unknown tag 'product_temp_botom' for a comm_bad_status fault; did you mean "
        "'product_temp_bottom'? allowed: ['shelf_temp_sp', 'chamber_pressure_sp', "
        "'shelf_temp_pv', 'chamber_pressure_pv', 'product_temp_bottom', 'plc_scan_counter', "
        "'mpc_permissive', 'mpc_active', 'measurement_validity']"
    )


@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (
            ["inject", "sensr_bias", "Tbot", "--magnitude", "2"],
            "unknown fault kind 'sensr_bias'; did you mean 'sensor_bias'? (one of 13 allowed)",
        ),
        (
            ["inject", "sensor_bias", "Tbot", "--magnitude", "2", "--unit", "K"],
            "the magnitude of a sensor_bias fault on Tbot is in 'degC', not 'K'",
        ),
        (["inject", "sensor_bias", "Tbot"], "a sensor_bias fault needs a non-zero 'magnitude'"),
        (
            ["inject", "sensor_dropout", "Tbot", "--magnitude", "3"],
            "a sensor_dropout fault takes no 'magnitude' (got 3)",
        ),
        (
            ["inject", "comm_latency", "Tbot", "--magnitude", "0.1"],
            "a comm_latency fault acts on the whole server: its target must be '*'",
        ),
        (
            ["inject", "comm_bad_status", "product_temp_botom"],
            "unknown tag 'product_temp_botom' for a comm_bad_status fault; did you mean",
        ),
        (
            ["inject", "actuator_saturation", "Tsh", "--magnitude", "150"],
            "a saturation at 150 degC can never cap Tsh: the PLC never applies more than 120 degC",
        ),
        (
            ["inject", "parameter_drift", "kc", "--rate", "0.1"],
            "unknown parameter 'kc' for a parameter_drift fault",
        ),
        (["clear", "--kind", "sensor_bais"], "unknown fault kind 'sensor_bais'"),
        (["clear", "--target", "Tbto"], "unknown fault target 'Tbto'"),
    ],
)
def test_every_bad_request_is_one_plain_sentence_and_exit_code_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], sentence: str
) -> None:
    code, out = cli(capsys, "--state-dir", str(tmp_path), *argv)
    assert code == 2
    assert out.startswith("error: ") and sentence in out, out
    assert not any(s in out for s in PYDANTIC_DUMP), out
    assert "no running" not in out  # refused before any server was asked


def test_a_refusal_as_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out = cli(capsys, "--state-dir", str(tmp_path), "inject", "sensor_bias", "Tbto",
                    "--magnitude", "2", "--json")  # fmt: skip
    assert code == 2
    answer = json.loads(out)
    assert answer["ok"] is False
    assert answer["allowed"] == ["Tbot"] and answer["did_you_mean"] == "Tbot"
    assert answer["problems"] == [
        "unknown measured output 'Tbto' for a sensor_bias fault; did you mean 'Tbot'? "
        "allowed: ['Tbot']"
    ]


# ---------------------------------------------------------------------- refused by the server
async def test_the_serving_rig_refuses_a_typo_itself_and_holds_nothing(served: Path) -> None:
    typo = {"kind": "sensor_bias", "target": "Tbto", "start": 0.0, "magnitude": 2.0}
    answer = await admin(served, {"cmd": "inject", "fault": typo})
    assert answer["ok"] is False
    assert answer["allowed"] == ["Tbot"] and answer["did_you_mean"] == "Tbot"
    assert "unknown measured output 'Tbto'" in answer["error"]
    status = (await admin(served, {"cmd": "status"}))["status"]
    assert status["active_faults"] == [] and status["fault_events"] == 0


@pytest.mark.parametrize(
    ("fault", "sentence"),
    [
        ({"kind": "nope", "target": "Tbot", "start": 0}, "unknown fault kind 'nope'"),
        (
            {"kind": "sensor_bias", "target": "Tbot", "start": 0, "magnitude": "abc"},
            "magnitude = 'abc' is not allowed: input should be a valid number",
        ),
        (
            {"kind": "sensor_bias", "target": "Tbot", "start": 0, "magnitud": 2},
            "unknown fault field 'magnitud'; did you mean 'magnitude'?",
        ),
        ({"kind": "sensor_bias", "target": "Tbot", "magnitude": 2}, "the fault needs a 'start'"),
        ("sensor_bias Tbot", "a fault is a mapping of ['kind', 'target', 'start', "),
        # what only the serving rig knows: its plant step (0.02 h) and its true plant
        (
            {"kind": "actuator_lag", "target": "Tsh", "start": 0, "magnitude": 0.001},
            "a lag time constant of 0.001 h leaves less than 1 % of a change",
        ),
        (
            {"kind": "sensor_bias", "target": "Tbot", "start": 0, "magnitude": 2, "duration": 0.01},
            "a duration of 0.01 h is shorter than one plant step (0.02 h)",
        ),
    ],
)
async def test_the_serving_rig_answers_plain_sentences(
    served: Path, fault: object, sentence: str
) -> None:
    answer = await admin(served, {"cmd": "inject", "fault": fault})
    assert answer["ok"] is False
    assert sentence in answer["error"], answer["error"]
    assert not any(s in answer["error"] for s in PYDANTIC_DUMP), answer["error"]
    assert (await admin(served, {"cmd": "status"}))["status"]["active_faults"] == []


async def test_a_refusal_only_the_server_can_make_exits_2_at_the_cli(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await cli_async(capsys, "--state-dir", str(served), "inject", "actuator_lag",
                                "Tsh", "--magnitude", "0.001")  # fmt: skip
    assert code == 2
    assert out.startswith("error: a lag time constant of 0.001 h"), out


# ---------------------------------------------------------------------- accepted: tables and JSON
async def test_inject_status_and_clear_as_tables(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = ("--state-dir", str(served))
    code, out = await cli_async(capsys, *state, "inject", "sensor_bias", "Tbot", "--magnitude",
                                "2", "--unit", "degC", "--duration", "5")  # fmt: skip
    assert code == 0, out
    assert "fault injected" in out and "│ magnitude   │ 2 degC" in out
    assert "│ duration    │ 5 h" in out
    code, out = await cli_async(capsys, *state, "status")
    assert code == 0, out
    assert "1 active fault(s)" in out and "sensor_bias" in out and "│ Tbot " in out
    code, out = await cli_async(capsys, *state, "clear", "--kind", "sensor_bias")
    assert code == 0 and "1 fault(s) cleared" in out, out
    code, out = await cli_async(capsys, *state, "status")
    assert "no active fault" in out


async def test_inject_as_json_lists_the_tags_a_wildcard_expanded_to(
    served: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await cli_async(capsys, "--state-dir", str(served), "inject", "comm_bad_status",
                                "*", "--json")  # fmt: skip
    assert code == 0, out
    answer = json.loads(out)
    assert answer["ok"] is True and answer["injected"]["target"] == "*"
    assert len(answer["tags"]) == N_TAGS and "product_temp_bottom" in answer["tags"]
    code, out = await cli_async(capsys, "--state-dir", str(served), "status", "--json")
    active = json.loads(out)["status"]["active_faults"]
    assert [(f["kind"], f["target"]) for f in active] == [("comm_bad_status", "*")]
