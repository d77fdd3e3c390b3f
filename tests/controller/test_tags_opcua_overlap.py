"""Two tags on one OPC UA node are refused when the tag map loads, as two tags on one
Modbus register are: writing one would write the other (a setpoint written into another
setpoint, or into a measurement). Before, ``jacket_duty_sp`` given the node of
``feed_dilution_sp`` passed ``pharmatwin check-config`` with "ok".

Node ids are compared as the OPC UA port reads them (asyncua's ``ua.NodeId.from_string``):
``ns=2;i=5`` and ``ns=02; i=05`` are one node, ``ns=2;s=x`` and ``ns=2;s=x `` are not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ConfigError
from controller.ports.opcua import _in_namespace
from controller.runtime.cli import main as cli_main
from controller.tags import load_tag_map

ROOT = Path(__file__).resolve().parents[2]
CSTR = ROOT / "configs" / "tags" / "cstr.yaml"
TAGS = sorted((ROOT / "configs" / "tags").glob("*.yaml"))
#: A server's namespace array, for the OPC UA port's own reading of a node id
NAMESPACES = ["http://opcfoundation.org/UA/", "urn:server", "urn:x", "urn:y"]


def _cstr() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CSTR.read_text(encoding="utf-8"))
    return data


def same_node_key(node_id: str) -> object:
    """The tag map's node comparison (imported here: the behaviour tests above run alone)."""
    from controller.tags import same_node_key as key

    return key(node_id)


def _write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "tags.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("tag", "node", "other"),
    [
        ("jacket_duty_sp", "ns=2;s=cstr.feed_dilution_sp", "feed_dilution_sp"),
        ("conc_b", "ns=2;s=cstr.conc_a", "conc_a"),
        ("conc_b", " ns=2; s=cstr.conc_a", "conc_a"),  # asyncua strips the keys
    ],
)
def test_two_tags_on_one_node_are_refused(tmp_path: Path, tag: str, node: str, other: str) -> None:
    data = _cstr()
    data["tags"][tag]["opcua"]["node_id"] = node
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_tag_map(path)
    (problem,) = exc.value.problems
    assert (problem.file, problem.location, problem.value) == (
        str(path),
        f"tags.{tag}.opcua.node_id",
        node,
    )
    assert f"tag {other!r}" in problem.message
    assert data["tags"][other]["opcua"]["node_id"] in problem.message
    lines = path.read_text(encoding="utf-8").splitlines()
    assert problem.line is not None and lines[problem.line - 1].strip().startswith("node_id")
    text = str(exc.value)
    assert f"tags.{tag}.opcua.node_id" in text and repr(other) in text


def test_check_config_refuses_the_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _cstr()
    data["tags"]["jacket_duty_sp"]["opcua"]["node_id"] = "ns=2;s=cstr.feed_dilution_sp"
    path = _write(tmp_path, data)
    assert cli_main(["check-config", str(path)]) != 0
    out = capsys.readouterr()
    said = out.out + out.err
    assert "tags.jacket_duty_sp.opcua.node_id" in said and "'feed_dilution_sp'" in said


def test_numeric_node_ids_spelled_two_ways_are_one_node(tmp_path: Path) -> None:
    data = _cstr()
    data["tags"]["feed_dilution_sp"]["opcua"]["node_id"] = "ns=2;i=5"
    data["tags"]["jacket_duty_sp"]["opcua"]["node_id"] = "ns=02;i=05"
    with pytest.raises(ConfigError) as exc:
        load_tag_map(_write(tmp_path, data))
    (problem,) = exc.value.problems
    assert problem.location == "tags.jacket_duty_sp.opcua.node_id"
    assert "'feed_dilution_sp'" in problem.message and "'ns=2;i=5'" in problem.message


def test_two_tags_on_one_browse_path_are_refused(tmp_path: Path) -> None:
    data = _cstr()
    path_ = ["0:Objects", "2:cstr", "2:conc_a"]
    for name in ("conc_a", "conc_b"):
        data["tags"][name]["opcua"] = {"browse_path": path_, "data_type": "Double"}
    with pytest.raises(ConfigError) as exc:
        load_tag_map(_write(tmp_path, data))
    (problem,) = exc.value.problems
    assert problem.location == "tags.conc_b.opcua.browse_path"
    assert "'conc_a'" in problem.message


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("ns=2;s=x", "ns=2;s=x"),
        ("ns=2;s=x", " ns=2;s=x"),
        ("ns=2;i=5", "ns=2;i=05"),
        ("ns=2;i=5", "ns=02; i=5"),
        ("i=5", "ns=0;i=5"),
        (
            "ns=2;g=09087e75-8e5e-499b-954f-f2a9603db28a",
            "ns=2;g=09087E75-8E5E-499B-954F-F2A9603DB28A",
        ),
        ("ns=2;b=YWJj", "ns=2;b=0x616263"),
        ("nsu=urn:x;s=a", "nsu=urn:x; s=a"),
    ],
)
def test_the_same_node_as_asyncua_reads_it(a: str, b: str) -> None:
    assert _in_namespace(a, NAMESPACES) == _in_namespace(b, NAMESPACES)  # the port's reading
    assert same_node_key(a) == same_node_key(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("ns=2;s=x", "ns=2;s=x "),  # a string identifier keeps its spaces
        ("ns=2;s=x", "ns=3;s=x"),
        ("ns=2;i=5", "ns=2;s=5"),
        ("ns=2;s=a;b", "ns=2;s=a"),
        ("nsu=urn:x;s=a", "nsu=urn:y;s=a"),
    ],
)
def test_different_nodes_as_asyncua_reads_them(a: str, b: str) -> None:
    assert _in_namespace(a, NAMESPACES) != _in_namespace(b, NAMESPACES)
    assert same_node_key(a) != same_node_key(b)


def test_a_node_id_that_does_not_parse_is_compared_as_written() -> None:
    assert same_node_key("not a node") == same_node_key(" not a node ")
    assert same_node_key("not a node") != same_node_key("ns=2;s=not a node")


@pytest.mark.parametrize("path", TAGS, ids=lambda p: p.stem)
def test_every_shipped_tag_map_still_loads(path: Path) -> None:
    tm = load_tag_map(path)
    nodes = [t.opcua.node_id for t in tm.tags.values() if t.opcua and t.opcua.node_id]
    assert len({same_node_key(n) for n in nodes}) == len(nodes)
