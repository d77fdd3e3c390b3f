"""README.md's layout section against the tree and the import graph.

The ``## Layout`` section holds two ``text`` blocks:

- the folders (``folder/   what it holds``, indented lines continue it): every package of
  plant_models, controller and hil is there, every folder named exists, and the tests mirror
  the layers (``tests/controller/core/`` for ``controller/core/``, ...);
- the layers figure, one layer a line (``folder/   imports: a, b, c``): every import the code
  makes from one layer into another is one its line allows (grimp's import graph), and the
  layers are those of the ``layers`` contract in pyproject.toml.

Each checker is first shown to find a mismatch, so an "ok" comes from a check that could fail.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ROOTS = ("plant_models", "controller", "hil")
BASE = "controller/*.py"
#: Folders of the layout besides the packages.
OTHER_FOLDERS = ("configs/", "bench/", "tests/")


def layout_blocks(text: str) -> list[list[str]]:
    """The ``text`` blocks of the ``## Layout`` section, as lists of non-empty lines."""
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    bodies = re.findall(r"^```text\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)
    return [[line for line in body.splitlines() if line.strip()] for body in bodies]


def first_words(lines: Iterable[str]) -> list[str]:
    """The folder each entry starts with (an indented line continues the entry above)."""
    return [line.split()[0] for line in lines if not line[0].isspace()]


def packages(root: Path = ROOT) -> set[str]:
    """Every package folder of our three root packages, as ``controller/core/``."""
    inits = (p for name in ROOTS for p in (root / name).rglob("__init__.py"))
    return {p.parent.relative_to(root).as_posix() + "/" for p in inits}


def layer_of(module: str) -> str:
    """The layer (as the figure names it) a module belongs to."""
    parts = module.split(".")
    if parts[0] != "controller":
        return f"{parts[0]}/"
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in {"core", "twin", "ports", "runtime"}):
        return f"controller/{parts[1]}/"
    return BASE


def figure_rows(lines: Iterable[str]) -> dict[str, set[str]]:
    """Layer -> the layers its line says it imports (``imports: nothing`` -> empty)."""
    rows = {}
    for line in lines:
        layer, _, allowed = line.partition(" imports: ")
        names = {n.strip() for n in allowed.split(",")} - {"nothing"}
        rows[layer.strip()] = names
    return rows


def imports_outside_figure(
    graph: grimp.ImportGraph, rows: Mapping[str, set[str]], roots: Iterable[str] = ROOTS
) -> list[str]:
    """``importer -> imported`` for each import between layers that the figure does not allow."""
    ours = {m for m in graph.modules if m.split(".")[0] in set(roots)}
    found = []
    for importer in sorted(ours):
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & ours):
            source, target = layer_of(importer), layer_of(imported)
            if source != target and target not in rows.get(source, set()):
                found.append(f"{importer} -> {imported} ({source} -> {target})")
    return found


def _blocks() -> list[list[str]]:
    blocks = layout_blocks(README.read_text(encoding="utf-8"))
    assert len(blocks) == 2, "README.md ## Layout: expected a folders block and a layers figure"
    return blocks


def test_the_layout_names_every_package_and_only_folders_that_exist() -> None:
    folders = first_words(_blocks()[0])
    missing = sorted(packages() - set(folders))
    assert not missing, f"README.md ## Layout does not name {missing}"
    gone = [f for f in folders if not (ROOT / f.replace(BASE, "controller/")).is_dir()]
    assert not gone, f"README.md ## Layout names folders that do not exist: {gone}"
    assert set(OTHER_FOLDERS) <= set(folders)


def test_the_package_finder_sees_nested_packages(tmp_path: Path) -> None:
    for name in ("controller/core", "hil/servers", "plant_models"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "__init__.py").write_text("", encoding="utf-8")
    assert packages(tmp_path) == {"controller/core/", "hil/servers/", "plant_models/"}


def test_the_tests_mirror_the_layers() -> None:
    layers = [f for f in first_words(_blocks()[1]) if f != BASE]
    missing = [f"tests/{f}" for f in layers if not (ROOT / "tests" / f).is_dir()]
    assert not missing, f"no test folder mirrors {missing}"


def test_the_figure_has_the_layers_of_the_contract() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "layers")
    declared = [m.strip() for layer in contract["layers"] for m in layer.split("|")]
    declared = [m.replace(".", "/") + "/" for m in declared]
    shown = [f for f in first_words(_blocks()[1]) if f != BASE]
    assert sorted(shown) == sorted(declared)


def test_the_figure_checker_finds_an_import_it_does_not_allow() -> None:
    graph = grimp.ImportGraph()
    graph.add_import(importer="controller.core.mpc", imported="controller.errors")
    graph.add_import(importer="controller.errors", imported="plant_models.base")
    graph.add_import(importer="controller.ports.modbus", imported="controller.core.mpc")
    rows = figure_rows(
        [
            "controller/ports/    imports: controller/*.py",
            "controller/core/     imports: controller/*.py",
            "controller/*.py      imports: plant_models/",
        ]
    )
    assert imports_outside_figure(graph, rows) == [
        "controller.ports.modbus -> controller.core.mpc (controller/ports/ -> controller/core/)"
    ]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*ROOTS, cache_dir=None)


def test_the_code_imports_only_what_the_figure_allows(graph: grimp.ImportGraph) -> None:
    rows = figure_rows(_blocks()[1])
    found = imports_outside_figure(graph, rows)
    assert not found, "imports the README.md layers figure does not show:\n" + "\n".join(found)
