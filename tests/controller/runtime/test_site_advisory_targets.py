"""``runtime.advisory_tags``: an input's advice goes to a writable numeric tag that no other
role uses. Before, ``advisory_tags: {F: operator_reset}`` passed check-config: in shadow mode
the runtime then wrote the advice to the operator's reset coil every cycle (only the bool
encoder refused values other than 0 and 1; an advice of exactly 0.0 or 1.0 would pulse the
reset for real). Refused now, as is any handshake or command tag, any bool tag (a coil, an
OPC UA Boolean), a setpoint, a publication and a tag that is already another input's advice;
each problem names the site file, ``runtime.advisory_tags.<input>``, the tag and what is
allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError, Problem
from controller.runtime.site import load_site

ROOT = Path(__file__).resolve().parents[3]
SITE = ROOT / "configs" / "sites" / "cstr-modbus.yaml"
#: tags of the twin's own for the advice of F and Q_dot (holding registers 200-203)
ADVICE = {"F": "feed_dilution_advice", "Q_dot": "jacket_duty_advice"}


def _site(tmp_path: Path, advisory: dict[str, str], extra: dict[str, Any] | None = None) -> Path:
    """The cstr Modbus site with the advice tags (and ``extra`` tags) in a copy of its tag
    map, and ``runtime.advisory_tags`` set to ``advisory``."""
    data: dict[str, Any] = yaml.safe_load(SITE.read_text(encoding="utf-8"))
    for key in ("plant", "controller", "tags"):
        data[key] = str((SITE.parent / data[key]).resolve())
    data["hil"]["scenario"] = str((SITE.parent / data["hil"]["scenario"]).resolve())
    data.pop("forecast", None)
    tags: dict[str, Any] = yaml.safe_load(Path(data["tags"]).read_text(encoding="utf-8"))
    for k, (inp, name) in enumerate(ADVICE.items()):
        tags["tags"][name] = {
            "description": f"the twin's recommended {inp} (shadow mode), for the HMI",
            "unit": "-",
            "direction": "write",
            "modbus": {"table": "holding", "address": 200 + 2 * k, "type": "float32"},
        }
    tags["tags"] |= extra or {}
    tag_file = tmp_path / "tags.yaml"
    tag_file.write_text(yaml.safe_dump(tags, sort_keys=False), encoding="utf-8")
    data["tags"] = str(tag_file)
    data["runtime"] = {"advisory_tags": advisory}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _refusal(path: Path, inp: str) -> Problem:
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    (problem,) = [p for p in exc.value.problems if p.location.startswith("runtime.")]
    assert (problem.file, problem.location) == (str(path), f"runtime.advisory_tags.{inp}")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert problem.line is not None and lines[problem.line - 1].strip().startswith(f"{inp}:")
    assert "allowed: a writable numeric tag" in problem.message
    return problem


def test_advice_tags_of_their_own_load(tmp_path: Path) -> None:
    site = load_site(_site(tmp_path, ADVICE))
    assert site.runtime.advisory_tags == ADVICE


def test_the_operator_reset_coil_is_no_advisory_tag(tmp_path: Path) -> None:
    path = _site(tmp_path, {"F": "operator_reset"})
    problem = _refusal(path, "F")
    assert problem.value == "operator_reset"
    assert "the tag 'operator_reset' is the operator's reset" in problem.message
    assert "a PLC command" in problem.message


@pytest.mark.parametrize(
    ("tag", "what"),
    [
        ("mpc_request", "a tag of the PLC contract (request"),
        ("mpc_heartbeat", "a tag of the PLC contract (heartbeat to the PLC"),
        ("feed_dilution_sp", "a setpoint tag (it binds the model variable 'F')"),
        ("jacket_duty_sp", "a setpoint tag (it binds the model variable 'Q_dot')"),
        ("conc_b_estimate", "a publication of the twin (it publishes 'C_b')"),
        ("conc_a", "read-only"),
    ],
)
def test_handshake_setpoint_publication_and_read_tags_are_refused(
    tmp_path: Path, tag: str, what: str
) -> None:
    problem = _refusal(_site(tmp_path, {"F": tag}), "F")
    assert problem.value == tag and f"the tag {tag!r} is {what}" in problem.message


@pytest.mark.parametrize(
    "spec",
    [
        {"modbus": {"table": "coil", "address": 7, "type": "bool"}},
        {
            "modbus": {"table": "holding", "address": 210, "type": "uint16"},
            "opcua": {"node_id": "ns=2;s=cstr.hmi_lamp", "data_type": "Boolean"},
        },
    ],
    ids=["coil", "opcua-boolean"],
)
def test_a_bool_tag_is_refused(tmp_path: Path, spec: dict[str, Any]) -> None:
    lamp = {"description": "an HMI lamp", "unit": "bool", "direction": "read_write", **spec}
    path = _site(tmp_path, {"F": "hmi_lamp"}, {"hmi_lamp": lamp})
    problem = _refusal(path, "F")
    assert problem.value == "hmi_lamp"
    assert "the tag 'hmi_lamp' is a bool" in problem.message


def test_one_tag_is_the_advice_of_one_input(tmp_path: Path) -> None:
    path = _site(tmp_path, {"F": "feed_dilution_advice", "Q_dot": "feed_dilution_advice"})
    problem = _refusal(path, "Q_dot")
    assert problem.value == "feed_dilution_advice"
    assert "already the advisory tag of input 'F'" in problem.message
