"""No ``assert`` in the packages' code: ``python -O`` strips it, so a check made with it would
silently not be made (seven were left: a controller loss's time, an OPC UA session, a CA's
key type, ...). Tests may assert."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("controller", "plant_models", "hil")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_assert_statement_in_the_package(package: str) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Assert)
    ]
    assert not found, f"assert in package code (stripped by python -O): {found}"
