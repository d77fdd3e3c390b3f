"""Config errors point at the line (issue 20): a sample of typical mistakes, each reported as
one plain sentence at file:line:column, with a "did you mean" where a close name exists, the
value quoted briefly (never the whole document), and a file of the wrong kind named as the
kind it is. Bad bytes (not UTF-8, binary) are one clear error, exit 2 on the CLIs. The same
in a scenario file, the HIL's: tests/hil/test_scenario.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.configfile import read_yaml
from controller.controllerfile import load_controller
from controller.errors import ConfigError, Problem, brief, suggest, unknown_name
from controller.plantfile import load_parameter_set
from controller.runtime.cli import main as cli_main
from controller.runtime.site import load_site
from controller.yamlmarks import load as load_marked
from hil.cli import main as hil_main

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def _absolute(data: dict[str, Any], folder: str, *keys: str) -> None:
    """Make the paths a copied config names absolute (the copy lives in tmp_path)."""
    for key in keys:
        data[key] = str((CONFIGS / folder / data[key]).resolve())


def _write(path: Path, data: dict[str, Any]) -> str:
    text = yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return text


def _at(text: str, needle: str, after: str = "") -> tuple[int, int]:
    """1-based line and column of ``needle`` in ``text`` (the first after ``after``)."""
    start = text.index(after) if after else 0
    offset = text.index(needle, start)
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _only(exc: pytest.ExceptionInfo[ConfigError], location: str | None = None) -> Problem:
    problems = [p for p in exc.value.problems if location is None or p.location == location]
    assert len(problems) == 1, exc.value.problems
    return problems[0]


def _controller(tmp_path: Path, name: str = "lyophilizer") -> dict[str, Any]:
    data = yaml.safe_load((CONFIGS / "controllers" / f"{name}.yaml").read_text())
    _absolute(data, "controllers", "plant")
    return data


# ------------------------------------------------------------------ 2. a wrong type
def test_a_wrong_type_names_the_key_line_and_value(tmp_path: Path) -> None:
    data = _controller(tmp_path)
    data["horizon"] = "twenty"
    path = tmp_path / "ctl.yaml"
    text = _write(path, data)
    with pytest.raises(ConfigError) as exc:
        load_controller(path)
    line, col = _at(text, "horizon:")
    assert str(_only(exc)) == (
        f"{path}:{line}:{col}: horizon: should be a valid integer, unable to parse string as an "
        "integer (got 'twenty')"
    )


# ------------------------------------------------------------------ 3. a value out of range
def test_a_value_out_of_range_points_at_the_nested_key(tmp_path: Path) -> None:
    data = _controller(tmp_path)
    data["collocation"]["degree"] = 9
    path = tmp_path / "ctl.yaml"
    text = _write(path, data)
    with pytest.raises(ConfigError) as exc:
        load_controller(path)
    line, col = _at(text, "degree:", after="collocation:")
    assert str(_only(exc)) == (
        f"{path}:{line}:{col}: collocation.degree: should be less than or equal to 5 (got 9)"
    )


# ------------------------------------------------------------------ 4. an unknown tag in a site
def _lyo_site(tmp_path: Path) -> dict[str, Any]:
    data = yaml.safe_load((CONFIGS / "sites" / "lyophilizer-modbus.yaml").read_text())
    _absolute(data, "sites", "plant", "controller", "tags")
    data["hil"]["scenario"] = str((CONFIGS / "sites" / data["hil"]["scenario"]).resolve())
    data["forecast"]["local_recipe"] = str(
        (CONFIGS / "sites" / data["forecast"]["local_recipe"]).resolve()
    )
    return data


def test_an_unknown_tag_in_a_site_gets_did_you_mean(tmp_path: Path) -> None:
    data = _lyo_site(tmp_path)
    data["runtime"] = {"advisory_tags": {"Tsh": "shelf_tmp_sp"}}
    path = tmp_path / "site.yaml"
    text = _write(path, data)
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    line, col = _at(text, "Tsh:", after="advisory_tags:")
    problem = _only(exc)
    assert str(problem) == (
        f"{path}:{line}:{col}: runtime.advisory_tags.Tsh: unknown tag 'shelf_tmp_sp' in the tag "
        f"map {data['tags']}; did you mean 'shelf_temp_sp'? (one of 16 allowed)"
    )


def test_an_unknown_binding_in_a_tag_map_points_into_the_tag_map(tmp_path: Path) -> None:
    tags = yaml.safe_load((CONFIGS / "tags" / "lyophilizer.yaml").read_text())
    tags["tags"]["shelf_temp_sp"]["binds"] = "Tshh"
    tag_path = tmp_path / "tags.yaml"
    tag_text = _write(tag_path, tags)
    data = _lyo_site(tmp_path)
    data["tags"] = str(tag_path)
    path = tmp_path / "site.yaml"
    _write(path, data)
    with pytest.raises(ConfigError) as exc:
        load_site(path)
    problem = _only(exc, "tags.shelf_temp_sp.binds")
    line, col = _at(tag_text, "binds:", after="shelf_temp_sp:")
    assert (problem.file, problem.line, problem.column) == (str(tag_path), line, col)
    assert "unknown model variable 'Tshh'; did you mean 'Tsh'?" in problem.message


# ------------------------------------------------------------------ 5. an unknown variable
def test_an_unknown_variable_in_a_controller_gets_did_you_mean(tmp_path: Path) -> None:
    data = _controller(tmp_path)
    data["constraints"][0]["expression"] = "Tbto"
    path = tmp_path / "ctl.yaml"
    text = _write(path, data)
    with pytest.raises(ConfigError) as exc:
        load_controller(path)
    problem = _only(exc)
    line, col = _at(text, "expression:", after="constraints:")
    assert problem.location == "constraints.0.expression"
    assert (problem.line, problem.column) == (line, col)
    assert problem.message.startswith("unknown expression 'Tbto'; did you mean 'Tbot'?")


def test_a_misspelt_choice_is_corrected(tmp_path: Path) -> None:
    data = _controller(tmp_path)
    data["collocation"]["type"] = "legende"
    path = tmp_path / "ctl.yaml"
    text = _write(path, data)
    with pytest.raises(ConfigError) as exc:
        load_controller(path)
    line, col = _at(text, "type:", after="collocation:")
    assert str(_only(exc)) == (
        f"{path}:{line}:{col}: collocation.type: should be 'radau' or 'legendre'; did you mean "
        "'legendre'? (got 'legende')"
    )


def test_a_misspelt_plant_parameter(tmp_path: Path) -> None:
    text = (CONFIGS / "plants" / "bioreactor.yaml").read_text().replace("  mu_m:", "  mu_mx:")
    path = tmp_path / "plant.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_parameter_set(path)
    unknown = _only(exc, "parameters.mu_mx")
    assert (unknown.line, unknown.column) == _at(text, "mu_mx:")
    assert unknown.message.startswith("unknown parameter 'mu_mx'; did you mean 'mu_m'?")
    missing = _only(exc, "parameters.mu_m")  # no such key: the line of 'parameters'
    assert (missing.line, missing.column) == _at(text, "parameters:")


# ------------------------------------------------------------------ 6. a missing required key
def test_a_missing_required_key_points_at_the_mapping_it_belongs_in(tmp_path: Path) -> None:
    data = _controller(tmp_path)
    first = next(iter(data["inputs"]))
    del data["inputs"][first]["max_move"]
    path = tmp_path / "ctl.yaml"
    text = _write(path, data)
    with pytest.raises(ConfigError) as exc:
        load_controller(path)
    line, col = _at(text, f"{first}:", after="inputs:")
    assert str(_only(exc)) == (
        f"{path}:{line}:{col}: inputs.{first}.max_move: missing required key 'max_move'"
    )


# ------------------------------------------------------------------ 8, 9. bad bytes
def test_a_non_utf8_file_names_the_byte_and_its_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: x\ndescription: caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ConfigError) as exc:
        read_yaml(path)
    assert str(_only(exc)) == (
        f"{path}:2:17: not UTF-8 text: byte 0xe9 at byte offset 24 is not valid UTF-8; save the "
        "file as UTF-8"
    )


def test_a_binary_file_is_named_binary(tmp_path: Path) -> None:
    path = tmp_path / "image.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(ConfigError) as exc:
        read_yaml(path)
    assert str(_only(exc)) == (
        f"{path}:3:1: this is a binary file, not YAML text (a NUL byte at byte offset 8); give "
        "a UTF-8 YAML config file"
    )


def test_utf16_text_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "utf16.yaml"
    path.write_text("name: x\n", encoding="utf-16")
    with pytest.raises(ConfigError, match=r"utf16.yaml:1:1: this is UTF-16 text"):
        read_yaml(path)


@pytest.mark.parametrize(
    "content", [b"\x89PNG\r\n\x1a\n\x00\x00", b"name: caf\xe9\n"], ids=["binary", "latin-1"]
)
def test_bad_bytes_on_the_command_line_exit_2_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    path = tmp_path / "site.yaml"
    path.write_bytes(content)
    code = cli_main(["run", str(path), "--mode", "shadow", "--audit", str(tmp_path / "a.db")])
    out = capsys.readouterr().out
    assert code == 2
    assert out.startswith(f"error: 1 configuration problem:\n  - {path}:")
    assert "byte offset" in out and "Traceback" not in out
    assert cli_main(["check-config", str(path)]) == 1  # check-config: a file with a problem
    out = capsys.readouterr().out
    assert out.startswith(f"FAIL {path}\n  - {path}:") and "byte offset" in out
    assert hil_main(["serve", str(path)]) == 2
    out = capsys.readouterr().out
    assert "byte offset" in out and "Traceback" not in out


# ------------------------------------------------------------------ 10. duplicates, bad syntax
def test_a_duplicate_key_is_refused_at_its_second_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nhorizon: 20\nsample_time: 1.0\nhorizon: 10\n")
    with pytest.raises(ConfigError) as exc:
        read_yaml(path)
    assert str(_only(exc)) == (
        f"{path}:4:1: horizon: duplicate key 'horizon' (first given at line 2); YAML would "
        "silently keep only the last"
    )


def test_bad_yaml_syntax_is_one_sentence_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "syntax.yaml"
    path.write_text("name: a\ninputs:\n  F: {lower: 0, upper: 1\nhorizon: 3\n")
    with pytest.raises(ConfigError) as exc:
        read_yaml(path)
    problem = _only(exc)
    assert problem.line == 4 and problem.message.startswith("invalid YAML: while parsing a flow")
    assert "\n" not in str(problem)


def test_a_yaml_merge_key_is_no_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "merge.yaml"
    path.write_text("base: &b {lower: 0, upper: 1}\nF: {<<: *b, upper: 2}\n")
    assert read_yaml(path)["F"] == {"lower": 0, "upper": 2}


# ------------------------------------------------------------------ quoting and wording
def test_brief_cuts_long_values() -> None:
    assert brief("x" * 500) == f"{'x' * 52!r}... (500 characters)"
    assert brief([1.0] * 100) == "a list of 100 items"
    assert brief({"a": 1}) == "{'a': 1}"


def test_unknown_name_counts_a_long_list_after_a_suggestion() -> None:
    tags = [f"tag_{i}" for i in range(25)] + ["shelf_temp_sp"]
    assert unknown_name("tag", "shelf_tmp_sp", tags) == (
        "unknown tag 'shelf_tmp_sp'; did you mean 'shelf_temp_sp'? (one of 26 allowed)"
    )
    assert unknown_name("tag", "zzz", ["a", "b"]) == "unknown tag 'zzz'; allowed: ['a', 'b']"
    assert suggest("HORIZON", ["horizon"]) == "horizon"


def test_marks_map_key_paths_onto_lines() -> None:
    loaded = load_marked("a:\n  b.c: 1\n  d:\n    - x\n    - {e: 2}\n")
    marks = loaded.marks
    assert marks.find("a.b.c") == (2, 3)  # a key with a dot in it
    assert marks.find("a.d.1.e") == (5, 8)
    assert marks.find("a.d.1.missing") == (5, 7)  # the deepest key the file has: the item
    assert marks.find("nowhere") == (1, 1)  # a missing top-level key: the root mapping
    assert marks.find("--historian") is None  # free text is no key path


def test_a_list_too_short_only_because_its_items_were_refused_is_their_problems() -> None:
    from typing import Annotated

    from pydantic import Field

    from controller.configfile import Strict, parse

    class Item(Strict):
        scale: Annotated[str, Field(pattern="^(linear|log)$")]

    class Spec(Strict):
        items: Annotated[tuple[Item, ...], Field(min_length=1)]

    with pytest.raises(ConfigError) as info:
        parse(Spec, {"items": [{"scale": "logarithmic"}, {"scale": "lin"}]}, "t.yaml")
    assert [p.location for p in info.value.problems] == ["items.0.scale", "items.1.scale"]
    with pytest.raises(ConfigError) as empty:  # a list that is short on its own still says so
        parse(Spec, {"items": []}, "t.yaml")
    (problem,) = empty.value.problems
    assert problem.location == "items" and "at least 1 item" in problem.message


def test_a_tag_map_of_nothing_or_a_tag_without_address_fails_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # both were "ok (tag map)": a map of no tag checks nothing, and a tag with neither a
    # Modbus nor an OPC UA address was only refused once a site used the map
    empty = tmp_path / "empty.yaml"
    empty.write_text("name: x\ntags: {}\n")
    bare = tmp_path / "bare.yaml"
    bare.write_text("name: x\ntags:\n  temp: {unit: degC, direction: read}\n")
    assert cli_main(["check-config", str(empty), str(bare)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"FAIL {empty}" in out and "tags: should have at least 1 item; it has 0" in out
    assert f"FAIL {bare}" in out and "tags.temp: the tag has no address: give 'modbus'" in out
    assert "ok" not in out.replace("2 files: 2 failed", "")
