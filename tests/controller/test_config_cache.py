"""The parse cache of config files: one parse per content, a fresh copy for every caller.

A campaign worker reads the same plant, controller and tag files for every case, so
:func:`controller.configfile.read_yaml` keeps the parse of a text it has seen. These tests
pin down what the cache must never change: no caller sees another's changes to the data, a
changed file is read as it is now, errors are reported every time, and libyaml's parse
(:func:`controller.yamlmarks.load`) gives exactly PyYAML's data and marks.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import yaml

from controller import configfile, yamlmarks
from controller.configfile import read_yaml
from controller.controllerfile import load_controller
from controller.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_a_caller_changing_the_data_does_not_change_what_the_next_caller_reads(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path / "p.yaml", "parameters: {R0: {value: 1.4, range: [0.5, 3.0]}}\n")
    first = read_yaml(path)
    first["parameters"]["R0"]["value"] = 99.0
    first["parameters"]["R0"]["range"].append(7.0)
    first["extra"] = True
    second = read_yaml(path)
    assert second == {"parameters": {"R0": {"value": 1.4, "range": [0.5, 3.0]}}}


def test_every_kind_of_node_comes_out_fresh(tmp_path: Path) -> None:
    """Sets, anchors and dates too: what one caller changes, the next does not see."""
    text = (
        "base: &b {lower: 0.0, upper: [1.0, 2.0]}\ncopy: *b\ntags: !!set {a, b}\nwhen: 2026-12-06\n"
    )
    path = _write(tmp_path / "k.yaml", text)
    first = read_yaml(path)
    first["base"]["upper"].append(3.0)
    first["copy"]["lower"] = -1.0
    first["tags"].add("c")
    second = read_yaml(path)
    assert second["base"] == second["copy"] == {"lower": 0.0, "upper": [1.0, 2.0]}
    assert second["tags"] == {"a", "b"} and str(second["when"]) == "2026-12-06"


def test_aliased_nodes_are_copied_once_and_a_node_holding_itself_is_refused_clearly(
    tmp_path: Path,
) -> None:
    """Nested aliases ("billion laughs") stay one node each in the copy, as in the parse;
    a node that holds itself gives the usual error for an unknown key, not a RecursionError."""
    levels = "abcdefgh"
    text = "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in itertools.pairwise(levels)
    )
    data = read_yaml(_write(tmp_path / "laughs.yaml", text))
    assert data["h"][0] is data["h"][9] and data["b"][0] is data["a"]  # 10^8 leaves, 80 nodes
    data["a"].append(11)
    assert read_yaml(tmp_path / "laughs.yaml")["a"] == list(range(1, 11))
    controller = ROOT / "configs" / "controllers" / "cstr.yaml"
    looped = controller.read_text(encoding="utf-8").replace(
        "plant: ../plants/cstr.yaml", f"plant: {ROOT}/configs/plants/cstr.yaml"
    )
    path = _write(tmp_path / "looped.yaml", looped + "x: &r [*r]\n")
    copied = read_yaml(path)["x"]
    assert copied[0] is copied  # the loop, copied as a loop
    with pytest.raises(ConfigError, match="x"):
        load_controller(path)


def test_a_file_changed_in_place_is_read_as_it_is_now(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.yaml", "a: 1\n")
    stat = path.stat()
    assert read_yaml(path) == {"a": 1}
    _write(path, "a: 2\n")  # same size, and the old modification time put back
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert read_yaml(path) == {"a": 2}


def test_the_same_text_is_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = yamlmarks.load

    def counting(text: str) -> yamlmarks.Loaded:
        calls.append(text)
        return real(text)

    monkeypatch.setattr(configfile.yamlmarks, "load", counting)
    text = "unique_key_for_this_test: [1, 2, 3]\n"
    a = _write(tmp_path / "a.yaml", text)
    b = _write(tmp_path / "b.yaml", text)
    for _ in range(3):
        assert read_yaml(a) == read_yaml(b) == {"unique_key_for_this_test": [1, 2, 3]}
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: 1\na: 2\n", "duplicate key 'a'"),
        ("- 1\n- 2\n", "must hold a YAML mapping"),
        ("a: [1, 2\n", "invalid YAML"),
    ],
)
def test_a_bad_file_is_refused_every_time_it_is_read(
    tmp_path: Path, text: str, needle: str
) -> None:
    path = _write(tmp_path / "bad.yaml", text)
    for _ in range(2):
        with pytest.raises(ConfigError, match=needle):
            read_yaml(path)


def _pure(text: str) -> yamlmarks.Loaded:
    """PyYAML's own parser, with the same resolvers (1e-4 is a float: controller.nocoerce)."""
    return yamlmarks._load(text, yamlmarks._SAFE_LOADER)


@pytest.mark.parametrize(
    "path",
    sorted((ROOT / "configs").rglob("*.yaml")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_libyaml_parses_every_shipped_config_exactly_as_pyyaml(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    fast, pure = yamlmarks.load(text), _pure(text)
    assert fast.data == pure.data
    assert fast.marks == pure.marks
    assert fast.duplicates == pure.duplicates


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\nb:\n  c: [1, 2]\n  c: 3\n",  # a duplicate, its line and the first one's
        "base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n",  # merge keys and aliases
        "a: 'caf\u00e9'\n'key.with.dots': {b: 1}\n",
        "a: \x07\n",  # a character PyYAML's reader refuses (libyaml would not)
        "a: [1, 2\n",  # a syntax error: PyYAML's message and mark
    ],
)
def test_libyaml_and_pyyaml_agree_on_marks_duplicates_and_errors(text: str) -> None:
    try:
        expected = _pure(text)
    except yaml.YAMLError as exc:
        with pytest.raises(type(exc)) as got:
            yamlmarks.load(text)
        assert str(got.value) == str(exc)
        return
    loaded = yamlmarks.load(text)
    assert (loaded.data, loaded.marks, loaded.duplicates) == (
        expected.data,
        expected.marks,
        expected.duplicates,
    )
