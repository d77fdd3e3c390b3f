"""The import boundary between the layers: plant_models <- controller <- hil.

In the spirit of python-control's kwargs_test: parse the source with ``ast`` and check what
every module imports, so a forbidden import fails here before it ever runs. The pure layers
(plant_models, and controller's pure modules) must stay free of networking/async code, and
nothing below hil may import hil.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLANT_MODELS = ROOT / "plant_models"
CONTROLLER = ROOT / "controller"

PURE_CONTROLLER_MODULES = (
    "config.py",
    "core/mpc.py",
    "core/estimator.py",
    "core/safety.py",
    "errors.py",
    "tags.py",
    "core/pipeline.py",
    "core/recipe.py",
    "twin/monitoring.py",
    "twin/publish.py",
    "twin/services.py",
)
REQUIRED_PURE_MODULES = ("config.py", "core/mpc.py", "core/safety.py")

NETWORK_AND_ASYNC = frozenset({"asyncio", "pymodbus", "asyncua"})


def _package_of(path: Path, root: Path) -> str:
    """Dotted package of a module file, e.g. controller/ports/base.py -> controller.ports."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts if parts[-1] == "__init__" else parts[:-1]).removesuffix(".__init__")


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module name ``path`` imports (anywhere: top level, functions, TYPE_CHECKING).

    Relative imports are resolved against the file's package; ``importlib.import_module`` and
    ``__import__`` called with a literal string count as imports too.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package_of(path, root)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            func = node.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else ""
            )
            if (
                name in {"import_module", "__import__"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
    return found


def forbidden_imports(path: Path, roots: frozenset[str], root: Path = ROOT) -> list[str]:
    return sorted(m for m in imported_modules(path, root) if m.split(".")[0] in roots)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_import_finder_sees_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "controller"
    pkg.mkdir()
    src = pkg / "probe.py"
    src.write_text(
        "from __future__ import annotations\n"
        "import os.path\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from asyncua import Client\n"
        "def f():\n"
        "    import pymodbus.client\n"
        "    from . import sibling\n"
        "    importlib.import_module('hil.cli')\n",
        encoding="utf-8",
    )
    found = imported_modules(src, root=tmp_path)
    assert {"os.path", "asyncua", "pymodbus.client", "controller.sibling", "hil.cli"} <= found
    roots = NETWORK_AND_ASYNC | {"hil"}
    assert forbidden_imports(src, roots, root=tmp_path) == [
        "asyncua",
        "asyncua.Client",
        "hil.cli",
        "pymodbus.client",
    ]


# ---------------------------------------------------------------------------------------------
# (a) plant_models imports nothing of controller, hil, asyncio, pymodbus, asyncua
# ---------------------------------------------------------------------------------------------
PLANT_FILES = sorted(PLANT_MODELS.rglob("*.py"))


def test_plant_model_files_found() -> None:
    assert PLANT_MODELS / "__init__.py" in PLANT_FILES
    assert PLANT_MODELS / "base.py" in PLANT_FILES


@pytest.mark.parametrize("path", PLANT_FILES, ids=[_rel(p) for p in PLANT_FILES])
def test_plant_models_import_nothing_above_or_networked(path: Path) -> None:
    bad = forbidden_imports(path, frozenset({"controller", "hil"}) | NETWORK_AND_ASYNC)
    assert not bad, f"{_rel(path)} imports {bad}"


# ---------------------------------------------------------------------------------------------
# (b) the pure controller modules stay free of async/network code and of hil
# ---------------------------------------------------------------------------------------------
PURE_FILES = [CONTROLLER / n for n in PURE_CONTROLLER_MODULES if (CONTROLLER / n).exists()]


def test_required_pure_controller_modules_exist() -> None:
    missing = [n for n in REQUIRED_PURE_MODULES if not (CONTROLLER / n).is_file()]
    assert not missing, f"controller/ is missing {missing}"


@pytest.mark.parametrize("path", PURE_FILES, ids=[_rel(p) for p in PURE_FILES])
def test_pure_controller_modules_import_no_async_network_or_hil(path: Path) -> None:
    roots = NETWORK_AND_ASYNC | {"socket", "hil"}
    bad = forbidden_imports(path, frozenset(roots))
    assert not bad, f"{_rel(path)} imports {bad}"


# ---------------------------------------------------------------------------------------------
# (c) nothing under controller/ or plant_models/ imports hil
# ---------------------------------------------------------------------------------------------
LOWER_FILES = sorted([*CONTROLLER.rglob("*.py"), *PLANT_FILES])


@pytest.mark.parametrize("path", LOWER_FILES, ids=[_rel(p) for p in LOWER_FILES])
def test_nothing_below_hil_imports_hil(path: Path) -> None:
    bad = forbidden_imports(path, frozenset({"hil"}))
    assert not bad, f"{_rel(path)} imports {bad}"


# ---------------------------------------------------------------------------------------------
# (d) importing the pure layers at run time loads no PLC protocol library
# ---------------------------------------------------------------------------------------------
def test_pure_layers_load_no_protocol_library_at_run_time() -> None:
    code = (
        "import json, sys\n"
        "import plant_models, controller.core.mpc, controller.core.safety, controller.config\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('pymodbus', 'asyncua', 'hil'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the pure layers loaded {loaded}"


@pytest.mark.parametrize(
    ("library", "owner"),
    [("pymodbus", "controller/ports/modbus.py"), ("asyncua", "controller/ports/opcua.py")],
)
def test_each_protocol_library_is_imported_by_one_controller_module(
    library: str, owner: str
) -> None:
    users = {
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "controller").rglob("*.py"))
        if any(m == library or m.startswith(library + ".") for m in imported_modules(p))
    }
    assert users == {owner}
