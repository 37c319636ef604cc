"""Layers point one way (CONVENTIONS.md 1) and public surfaces are sorted (5)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["core", "mapping", "connectors", "schedules", "gateway"]
# What each package may import from the others.
ALLOWED = {
    "core": set(),
    "mapping": {"core"},
    "connectors": {"core"},
    "schedules": {"core", "mapping", "connectors"},
    "gateway": {"core", "mapping", "connectors", "schedules"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_upward_imports(package: str) -> None:
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        bad = (_imports(path) & set(PACKAGES)) - ALLOWED[package] - {package}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offenders == []


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_and_importable(package: str) -> None:
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert names == sorted(names)
    for name in names:
        assert hasattr(module, name)
