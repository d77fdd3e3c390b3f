"""The layers of the code, checked against their one declaration in pyproject.toml.

``[tool.importlinter]`` in pyproject.toml declares, by folder, what may import what:
``hil > controller.runtime > controller.twin | controller.ports > controller.core > base >
plant_models`` (base: the modules directly under ``controller/``). These tests

- run every contract of that declaration with import-linter's ``lint-imports`` (a new module
  in a folder is covered the day it lands: nothing here lists module names);
- check with ``ast`` what import-linter cannot see: I/O calls in the pure layers
  (``controller/core``, ``controller/twin``): environment, files, logging set-up; and dynamic
  imports anywhere below hil;
- find import cycles between our modules in grimp's import graph;
- keep the protocol-library checks: each of pymodbus and asyncua is imported by exactly one
  ports module, and importing the pure layers loads neither (nor hil).

Every checker first shows, on a throw-away tree under ``tmp_path``, that it finds what it
looks for, so an "ok" comes from a check that could have failed.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
ROOTS = ("plant_models", "controller", "hil")
PURE_DIRS = (ROOT / "controller" / "core", ROOT / "controller" / "twin")
BELOW_HIL_DIRS = (ROOT / "controller", ROOT / "plant_models")
PROTOCOL_OWNERS = {"pymodbus": "controller.ports.modbus", "asyncua": "controller.ports.opcua"}


def _contracts() -> list[dict[str, object]]:
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    return list(config["tool"]["importlinter"]["contracts"])


CONTRACTS = _contracts()
CONTRACT_IDS = [str(c["id"]) for c in CONTRACTS]
CONTRACT_NAMES = {str(c["id"]): str(c["name"]) for c in CONTRACTS}


def _rel(path: Path, root: Path = ROOT) -> str:
    return path.relative_to(root).as_posix()


# ---------------------------------------------------------------------------------------------
# import-linter: the contracts of pyproject.toml
# ---------------------------------------------------------------------------------------------
def lint_imports(cwd: Path, *contract_ids: str) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` (no cache, nothing written) on the pyproject.toml in ``cwd``."""
    if not LINT_IMPORTS.is_file():
        pytest.fail(f"no {LINT_IMPORTS}: install the test extra (pip install -e '.[test]')")
    selected = [arg for cid in contract_ids for arg in ("--contract", cid)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", *selected],
        cwd=cwd,
        env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(cwd), "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def contract_verdicts(output: str) -> dict[str, str]:
    """Contract id -> ``KEPT`` or ``BROKEN``, read from lint-imports' summary lines."""
    verdicts = {}
    for cid, name in CONTRACT_NAMES.items():
        found = re.search(rf"^{re.escape(name)} (KEPT|BROKEN)$", output, flags=re.MULTILINE)
        if found:
            verdicts[cid] = found.group(1)
    return verdicts


#: A small tree with the real root packages' names, following every contract.
TOY_TREE: Mapping[str, str] = {
    "plant_models/__init__.py": "",
    "plant_models/base.py": "import math\n",
    "controller/__init__.py": "",
    "controller/errors.py": "import plant_models.base\n",
    "controller/clock.py": "import asyncio\nfrom controller import errors\n",
    "controller/core/__init__.py": "",
    "controller/core/mpc.py": "from controller import clock, errors\nimport plant_models.base\n",
    "controller/twin/__init__.py": "",
    "controller/twin/forecast.py": "from controller.core import mpc\n",
    "controller/ports/__init__.py": "from controller.ports.base import Port\n",
    "controller/ports/base.py": "from controller import errors\nPort = object\n",
    "controller/ports/modbus.py": "import pymodbus\nfrom controller.ports import base\n",
    "controller/runtime/__init__.py": "",
    "controller/runtime/site.py": (
        "from controller.core import mpc\nfrom controller.ports import modbus\n"
        "from controller.twin import forecast\n"
    ),
    "hil/__init__.py": "",
    "hil/cli.py": "from controller.runtime import site\n",
}

#: For each contract: one import, planted in the toy tree, that breaks it.
PLANTED: Mapping[str, tuple[str, str]] = {
    "layers": ("controller/core/mpc.py", "from controller.twin import forecast"),
    "plant-models": ("plant_models/base.py", "import controller.errors"),
    "nothing-imports-hil": ("controller/errors.py", "import hil.cli"),
    "core-importers": ("controller/ports/base.py", "from controller.core import mpc"),
    "twin-ports-importers": ("controller/clock.py", "from controller.ports import base"),
    "runtime-importers": ("controller/twin/forecast.py", "from controller.runtime import site"),
    "pure-no-io": ("controller/twin/forecast.py", "import subprocess"),
}


def write_toy_tree(where: Path, planted: tuple[str, str] | None = None) -> Path:
    """The toy tree and the real pyproject.toml under ``where``, one import planted."""
    for name, text in TOY_TREE.items():
        path = where / name
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = f"{planted[1]}\n" if planted and planted[0] == name else ""
        path.write_text(text + extra, encoding="utf-8")
    (where / "pyproject.toml").write_text(PYPROJECT.read_text(encoding="utf-8"), "utf-8")
    return where


def test_every_contract_has_a_planted_violation() -> None:
    assert CONTRACT_IDS, "pyproject.toml declares no import contract"
    assert sorted(PLANTED) == sorted(CONTRACT_IDS)


def test_the_toy_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = lint_imports(write_toy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert contract_verdicts(result.stdout) == dict.fromkeys(CONTRACT_IDS, "KEPT")


@pytest.mark.parametrize("contract_id", sorted(PLANTED))
def test_a_planted_import_breaks_its_contract(tmp_path: Path, contract_id: str) -> None:
    result = lint_imports(write_toy_tree(tmp_path, PLANTED[contract_id]), contract_id)
    assert result.returncode == 1, result.stdout + result.stderr
    assert contract_verdicts(result.stdout) == {contract_id: "BROKEN"}


@pytest.mark.parametrize("contract_id", CONTRACT_IDS)
def test_the_code_keeps_the_contract(contract_id: str) -> None:
    result = lint_imports(ROOT, contract_id)
    verdicts = contract_verdicts(result.stdout)
    assert verdicts == {contract_id: "KEPT"}, result.stdout + result.stderr
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# ast: what import-linter cannot see
# ---------------------------------------------------------------------------------------------
#: Path methods that touch the file system. ``replace``/``rename`` count only with the one
#: positional argument of ``Path.replace(target)``: ``str.replace`` takes two and
#: ``dataclasses.replace`` takes keywords.
FILE_METHODS = frozenset(
    {"write_text", "write_bytes", "read_text", "read_bytes", "mkdir", "unlink", "touch", "rmdir"}
)
ONE_ARG_FILE_METHODS = frozenset({"replace", "rename"})
OS_FILE_CALLS = frozenset(
    {"replace", "rename", "remove", "unlink", "makedirs", "mkdir", "rmdir", "getenv", "putenv"}
)
LOGGING_SETUP = frozenset({"basicConfig", "addHandler", "dictConfig", "fileConfig"})


def _call_finding(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return f"{func.id}()" if func.id in {"open", "getenv"} else None
    if not isinstance(func, ast.Attribute):
        return None
    owner = func.value.id if isinstance(func.value, ast.Name) else None
    name = func.attr
    if owner == "os" and name in OS_FILE_CALLS:
        return f"os.{name}()"
    if owner == "shutil" or name in LOGGING_SETUP or name in FILE_METHODS or name == "open":
        return f".{name}()" if owner is None else f"{owner}.{name}()"
    if name in ONE_ARG_FILE_METHODS and len(call.args) == 1 and not call.keywords:
        return f".{name}(target)"
    return None


def io_findings(path: Path) -> list[str]:
    """Environment, file and logging set-up uses in a module: ``"line N: what"``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        what: str | None = None
        if isinstance(node, ast.Call):
            what = _call_finding(node)
        elif isinstance(node, ast.Attribute) and node.attr == "environ":
            what = "os.environ"
        elif isinstance(node, ast.ImportFrom) and node.module in {"os", "shutil", "logging"}:
            names = {a.name for a in node.names} & {"environ", "getenv", "basicConfig"}
            what = f"from {node.module} import {sorted(names)}" if names else None
        if what and isinstance(node, ast.expr | ast.stmt):
            found.append((node.lineno, what))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def dynamic_imports(path: Path) -> list[str]:
    """``importlib.import_module`` and ``__import__`` calls, which no import graph shows."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in {"import_module", "__import__"}:
                found.append(f"line {node.lineno}: {name}()")
    return found


BAD_IO_SOURCE = """\
import logging, os, shutil
from os import environ
from pathlib import Path
level = os.environ.get("LEVEL")
home = os.getenv("HOME")
with open("x.txt") as fh: pass
Path("a").write_text("x"); Path("a").read_text(); Path("d").mkdir()
Path("a").unlink(); Path("a").touch(); Path("a").replace("b"); Path("a").rename("b")
os.replace("a", "b"); shutil.copy("a", "b")
logging.basicConfig(); logging.getLogger().addHandler(logging.NullHandler())
"""
CLEAN_SOURCE = """\
import dataclasses, logging
log = logging.getLogger(__name__)
name = "a-b".replace("-", "_")
point = dataclasses.replace(object(), x=1)
log.info("fine %s", name)
"""


def test_the_io_finder_sees_every_kind_of_io(tmp_path: Path) -> None:
    bad, clean = tmp_path / "bad.py", tmp_path / "clean.py"
    bad.write_text(BAD_IO_SOURCE, encoding="utf-8")
    clean.write_text(CLEAN_SOURCE, encoding="utf-8")
    whats = {f.split(": ", 1)[1] for f in io_findings(bad)}
    expected = {"os.environ", "os.getenv()", "open()", ".write_text()", ".read_text()"}
    expected |= {".mkdir()", ".unlink()", ".touch()", ".replace(target)", ".rename(target)"}
    expected |= {"os.replace()", "shutil.copy()", "logging.basicConfig()", ".addHandler()"}
    assert expected <= whats
    assert "from os import ['environ']" in whats
    assert io_findings(clean) == []


def _py_files(dirs: Iterable[Path]) -> list[Path]:
    return sorted(p for d in dirs for p in d.rglob("*.py"))


PURE_FILES = _py_files(PURE_DIRS)


def test_the_pure_layers_have_modules() -> None:
    assert {p.parent.name for p in PURE_FILES} == {"core", "twin"}


@pytest.mark.parametrize("path", PURE_FILES, ids=[_rel(p) for p in PURE_FILES])
def test_the_pure_layers_do_no_io(path: Path) -> None:
    found = io_findings(path)
    assert not found, f"{_rel(path)} does I/O (hand it in from runtime instead): {found}"


def test_the_dynamic_import_finder_sees_them(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("import importlib\nimportlib.import_module('hil.cli')\n__import__('x')\n")
    assert dynamic_imports(probe) == ["line 2: import_module()", "line 3: __import__()"]


BELOW_HIL_FILES = _py_files(BELOW_HIL_DIRS)


@pytest.mark.parametrize("path", BELOW_HIL_FILES, ids=[_rel(p) for p in BELOW_HIL_FILES])
def test_no_dynamic_imports_below_hil(path: Path) -> None:
    found = dynamic_imports(path)
    assert not found, f"{_rel(path)} imports dynamically, past the layer contracts: {found}"


# ---------------------------------------------------------------------------------------------
# grimp: import cycles and the protocol libraries
# ---------------------------------------------------------------------------------------------
def import_cycles(graph: grimp.ImportGraph, roots: Iterable[str]) -> list[list[str]]:
    """Groups of our modules that import each other in a ring (strongly connected, > 1)."""
    ours = {m for m in graph.modules if m.split(".")[0] in set(roots)}
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & ours) for m in sorted(ours)}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's algorithm
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in edges[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group: list[str] = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in edges:
        if module not in index:
            visit(module)
    return sorted(cycles)


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "toy_cycles"
    package.mkdir()
    files = {"__init__": "", "a": "from toy_cycles import b\n", "b": "import toy_cycles.c\n"}
    files |= {"c": "from toy_cycles import a\n", "d": "from toy_cycles import a\n"}
    for name, text in files.items():
        (package / f"{name}.py").write_text(text, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("toy_cycles", cache_dir=None)
    assert import_cycles(graph, ["toy_cycles"]) == [
        ["toy_cycles.a", "toy_cycles.b", "toy_cycles.c"]
    ]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*ROOTS, include_external_packages=True, cache_dir=None)


def _cycle_imports(graph: grimp.ImportGraph, cycle: list[str]) -> list[str]:
    """The imports inside one cycle: ``importer -> imported (l.N)``."""
    lines = []
    for importer in cycle:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & set(cycle)):
            details = graph.get_import_details(importer=importer, imported=imported)
            numbers = ", ".join(str(d["line_number"]) for d in details)
            lines.append(f"{importer} -> {imported} (l.{numbers})")
    return lines


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    cycles = import_cycles(graph, ROOTS)
    shown = [line for cycle in cycles for line in ["--", *_cycle_imports(graph, cycle)]]
    assert not cycles, "import cycles:\n" + "\n".join(shown)


@pytest.mark.parametrize(("library", "owner"), sorted(PROTOCOL_OWNERS.items()))
def test_each_protocol_library_is_imported_by_one_ports_module(
    graph: grimp.ImportGraph, library: str, owner: str
) -> None:
    users = graph.find_modules_that_directly_import(library)
    assert {m for m in users if m.startswith("controller")} == {owner}


def test_the_pure_layers_load_no_protocol_library_at_run_time() -> None:
    code = (
        "import json, pkgutil, sys, importlib\n"
        "import controller.core, controller.twin, plant_models\n"
        "for pkg in (controller.core, controller.twin):\n"
        "    for info in pkgutil.iter_modules(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('pymodbus', 'asyncua', 'hil'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the pure layers loaded {loaded}"
