"""Layers point one way (CONVENTIONS.md 1), connectors and mapping use core's models only
(DESIGN.md, Layout) and public surfaces are complete and sorted (CONVENTIONS.md 5)."""

from __future__ import annotations
import __future__

import ast
import importlib
import subprocess
import sys
import types
from collections.abc import Iterator
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
# The core modules connectors/ and mapping/ may import ("core models only"): the domain model,
# its states and errors, the drafts a mapping produces, and pure rules over them. Importing one
# loads no service (no pyHanko, no HTTP client): test_core_models_load_no_service.
CORE_MODELS = {
    "core",
    "core.csv_export",
    "core.drafts",
    "core.errors",
    "core.model",
    "core.outbound_types",
    "core.states",
    "core.text_boxes",
    "core.timezone",
}
# Known breaches of the models-only rule, each with the change that removes it. Importing these
# files loads pyHanko and aiohttp; do not add to this list, fix the import instead.
MODELS_ONLY_EXCEPTIONS: set[tuple[str, str]] = set()
# Every package whose __init__ is a public surface (CONVENTIONS.md 5).
PUBLIC_PACKAGES = sorted(
    ".".join(p.parent.relative_to(ROOT).parts)
    for package in PACKAGES
    for p in (ROOT / package).rglob("__init__.py")
    if "migrations" not in p.parts
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _modules_named(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules of this project an import statement loads (``from core import errors``
    names ``core.errors``)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif node.module and node.level == 0:
        yield node.module
        for alias in node.names:
            if _is_module(f"{node.module}.{alias.name}"):
                yield f"{node.module}.{alias.name}"


def _all_imports(path: Path) -> set[str]:
    """Every module ``path`` imports, wherever the import statement is."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in _modules_named(node)
    }


def _load_time_imports(path: Path) -> set[str]:
    """The modules importing ``path`` loads: module-level imports, not those inside functions
    or under ``if TYPE_CHECKING:``."""

    def walk(body: list[ast.stmt]) -> Iterator[str]:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield from _modules_named(node)
            elif isinstance(node, ast.If):
                if not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
                    yield from walk(node.body)
                yield from walk(node.orelse)
            elif isinstance(node, ast.Try):
                for part in (node.body, node.orelse, node.finalbody):
                    yield from walk(part)
                for handler in node.handlers:
                    yield from walk(handler.body)
            elif isinstance(node, ast.ClassDef | ast.With):
                yield from walk(node.body)

    return set(walk(ast.parse(path.read_text(encoding="utf-8")).body))


def _module_file(name: str) -> Path:
    base = ROOT.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


@pytest.mark.parametrize("package", PACKAGES)
def test_no_upward_imports(package: str) -> None:
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        bad = (_imports(path) & set(PACKAGES)) - ALLOWED[package] - {package}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offenders == []


@pytest.mark.parametrize("package", ["connectors", "mapping"])
def test_connectors_and_mapping_import_only_core_models(package: str) -> None:
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        for name in sorted(_all_imports(path)):
            if name.split(".")[0] != "core" or name in CORE_MODELS:
                continue
            if (where, name) not in MODELS_ONLY_EXCEPTIONS:
                offenders.append(f"{where} imports {name}")
    assert offenders == []


def test_models_only_exceptions_are_still_needed() -> None:
    # An exception whose import is gone must leave the list, so the list only shrinks.
    stale = [
        (where, name)
        for where, name in sorted(MODELS_ONLY_EXCEPTIONS)
        if name not in _all_imports(ROOT / where)
    ]
    assert stale == []


@pytest.mark.parametrize("model", sorted(CORE_MODELS))
def test_core_models_load_no_service(model: str) -> None:
    services = {
        name
        for name in _load_time_imports(_module_file(model))
        if name.split(".")[0] == "core" and name not in CORE_MODELS
    }
    assert services == set(), f"importing {model} loads {sorted(services)}"


def test_mapping_loads_neither_pyhanko_nor_an_http_client() -> None:
    # What the models-only rule buys: `mapping check` and the mapping tests start fast.
    probe = (
        "import sys, mapping, connectors; "
        "print(sorted({'pyhanko', 'aiohttp', 'httpx', 'zeep'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


def _public_names(module: types.ModuleType) -> set[str]:
    """The public names a package defines or re-exports from this project: not its submodules,
    not ``from __future__`` features, not classes or functions imported from a library."""
    names = set()
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType | __future__._Feature):
            continue
        if isinstance(value, type | types.FunctionType):
            if getattr(value, "__module__", "").split(".")[0] not in PACKAGES:
                continue
        names.add(name)
    return names


def _isort_style(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2, name)


@pytest.mark.parametrize("package", PUBLIC_PACKAGES)
def test_all_is_complete_sorted_and_importable(package: str) -> None:
    # Like httpx's tests/test_exported_members.py: __all__ is exactly the public names.
    module = importlib.import_module(package)
    assert hasattr(module, "__all__"), f"{package}/__init__.py has no __all__"
    names = list(module.__all__)
    assert names == sorted(names, key=_isort_style)
    for name in names:
        assert hasattr(module, name)
    assert sorted(_public_names(module), key=_isort_style) == names


# Every public module (no leading underscore in its path) of these packages declares its
# surface, as each package does (CONVENTIONS.md 5). The app shell is left out: its modules are
# entry points (routes, commands), not a library.
MODULE_PACKAGES = ["core", "connectors", "mapping", "schedules"]
PUBLIC_MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for package in MODULE_PACKAGES
    for p in (ROOT / package).rglob("*.py")
    if p.name != "__init__.py"
    and "migrations" not in p.parts
    and not any(part.startswith("_") for part in p.relative_to(ROOT).parts)
)


def _public_definitions(path: Path) -> set[str]:
    """The public functions and classes a module defines at its top level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not node.name.startswith("_")
    }


def test_public_modules_are_found() -> None:
    assert {
        "core.envelopes.creation",
        "connectors.sftp.transport",
        "mapping.spec",
        "schedules.intake",
    } <= set(PUBLIC_MODULES)
    assert not [m for m in PUBLIC_MODULES if "._" in m or "migrations" in m]


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_public_module_lists_what_it_defines_in_all(module: str) -> None:
    # Like httpx's tests/test_exported_members.py, per module: __all__ exists, is sorted, names
    # only what the module has, and names every public function and class it defines.
    imported = importlib.import_module(module)
    assert hasattr(imported, "__all__"), f"{module} has no __all__"
    names = list(imported.__all__)
    assert names == sorted(names, key=_isort_style), f"{module}.__all__ is not sorted"
    assert len(set(names)) == len(names), f"{module}.__all__ repeats a name"
    assert [n for n in names if not hasattr(imported, n)] == [], f"{module}.__all__"
    unlisted = _public_definitions(_module_file(module)) - set(names)
    assert sorted(unlisted) == [], f"{module} defines these without listing them in __all__"


def _private_imports(path: Path) -> Iterator[str]:
    """``module.name`` for each underscored name ``path`` imports from another module of this
    project, wherever the import statement is."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        if node.module.split(".")[0] not in PACKAGES:
            continue
        for alias in node.names:
            if alias.name.startswith("_"):
                yield f"{node.module}.{alias.name}"


def test_no_module_reaches_into_another_modules_private_names() -> None:
    # A leading underscore means "only this module relies on it" (CONVENTIONS.md 5): a helper
    # another module needs is public in its home, with a name and a docstring, so renaming or
    # changing it shows up as a change to a surface.
    reached = {
        f"{path.relative_to(ROOT)}: {name}"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
        for name in _private_imports(path)
    }
    assert sorted(reached) == []
