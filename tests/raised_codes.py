"""Find every error code the gateway's source can raise, by reading the source (no import).

A raise site is a call to a :class:`core.errors.GatewayError` class (or a subclass defined
anywhere in the source), to a parameter annotated ``type[...Error]``, or to a module's small
factory that passes one of its parameters on as the code (``_refuse(code, en, ja)``). The
code is the first argument: a string literal, either branch of a conditional expression, or
anything else, which is then a *dynamic* site the catalogue test must know by name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "connectors", "gateway", "mapping", "schedules")


@dataclass(frozen=True)
class RaiseSite:
    """One place a coded error is built."""

    file: str
    line: int
    error_class: str
    code: str | None  # None for a dynamic code
    expression: str  # the code argument as written
    disposition: str | None  # the ``disposition=`` argument as written, if any


def source_files() -> list[Path]:
    """Every Python module of the gateway's packages."""
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def error_classes(trees: dict[str, ast.Module]) -> dict[str, str]:
    """Every error class of the source, mapped to its base class's name."""
    classes: dict[str, str] = {"GatewayError": "Exception"}
    changed = True
    while changed:
        changed = False
        for tree in trees.values():
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in classes:
                    for base in node.bases:
                        if _name(base) in classes:
                            classes[node.name] = str(_name(base))
                            changed = True
    return classes


def _own_code_classes(trees: dict[str, ast.Module], classes: dict[str, str]) -> set[str]:
    """Error classes whose ``__init__`` takes no code (``BodyTooLarge(limit)``): their own
    ``super().__init__("request.too_large", ...)`` is the raise site."""
    found = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name in classes:
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                        params = [a.arg for a in item.args.args[1:]]
                        if not params or params[0] != "code":
                            found.add(node.name)
    return found


def catalogue_constants() -> dict[str, str]:
    """``core/error_codes.py``'s constants (``STAFF_BAD_EMAIL: Final = _code("staff.bad_email",
    ...)``), by name."""
    tree = ast.parse((ROOT / "core" / "error_codes.py").read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(node.value, ast.Call)
            and _name(node.value.func) == "_code"
            and isinstance(node.value.args[0], ast.Constant)
        ):
            found[node.target.id] = str(node.value.args[0].value)
    return found


_CONSTANTS = catalogue_constants()


def _literals(node: ast.expr | None) -> list[str] | None:
    """The code(s) an argument names: a string, a catalogue constant (``codes.AUTH_FORBIDDEN``
    or imported by name) or a choice between them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Name | ast.Attribute) and _name(node) in _CONSTANTS:
        return [_CONSTANTS[str(_name(node))]]
    if isinstance(node, ast.IfExp):
        body, orelse = _literals(node.body), _literals(node.orelse)
        if body is not None and orelse is not None:
            return body + orelse
    return None


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


@dataclass(frozen=True)
class _Factory:
    error_class: str
    position: int
    parameter: str
    disposition: str | None
    disposition_param: int | None


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.arg]:
    return [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]


def _class_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str]:
    """Parameters annotated ``type[SomeError]`` (called to build the error)."""
    found = {}
    for arg in _params(fn):
        note = arg.annotation
        if isinstance(note, ast.Subscript) and _name(note.value) == "type":
            inner = _name(note.slice) if isinstance(note.slice, ast.expr) else None
            if inner and inner.endswith("Error"):
                found[arg.arg] = inner
    return found


def _callee(call: ast.Call, classes: dict[str, str], class_params: dict[str, str]) -> str | None:
    name = _name(call.func)
    if name in classes:
        return name
    if isinstance(call.func, ast.Name) and call.func.id in class_params:
        return class_params[call.func.id]
    return None


def _functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _factories(tree: ast.Module, classes: dict[str, str]) -> dict[str, _Factory]:
    """The module's functions that build an error with one of their parameters as its code."""
    found = {}
    for fn in _functions(tree):
        names = [a.arg for a in _params(fn)]
        class_params = _class_params(fn)
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            error_class = _callee(node, classes, class_params)
            first = node.args[0]
            if error_class and isinstance(first, ast.Name) and first.id in names:
                disposition = _keyword(node, "disposition")
                if isinstance(disposition, ast.Name) and disposition.id in names:
                    disposition_param: int | None = names.index(disposition.id)
                    disposition = None
                else:
                    disposition_param = None
                found[fn.name] = _Factory(
                    error_class,
                    names.index(first.id),
                    first.id,
                    None if disposition is None else ast.unparse(disposition),
                    disposition_param,
                )
    return found


def _enclosing(tree: ast.Module) -> dict[int, ast.FunctionDef | ast.AsyncFunctionDef]:
    """Each call's innermost enclosing function (by the call node's id)."""
    found: dict[int, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for fn in _functions(tree):  # outer functions first: inner ones overwrite
        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                found[id(node)] = fn
    return found


def raise_sites() -> list[RaiseSite]:
    """Every place in the source where a coded error is built (a factory's own body is not
    one: its callers are)."""
    trees = {
        str(p.relative_to(ROOT)): ast.parse(p.read_text(encoding="utf-8")) for p in source_files()
    }
    classes = error_classes(trees)
    for name in _own_code_classes(trees, classes):
        del classes[name]
    factories = {file: _factories(tree, classes) for file, tree in trees.items()}
    # A factory imported by name from another module (``from core.staff.accounts import import_columns``).
    exported = {
        name: factory
        for per_file in factories.values()
        for name, factory in per_file.items()
        if not name.startswith("_")
    }
    sites = []
    for file, tree in trees.items():
        local = {**exported, **factories[file]}
        enclosing = _enclosing(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            fn = enclosing.get(id(node))
            class_params = {} if fn is None else _class_params(fn)
            error_class = _callee(node, classes, class_params)
            disposition = _keyword(node, "disposition")
            argument: ast.expr | None
            if error_class is not None:
                argument = node.args[0] if node.args else _keyword(node, "code")
                if fn is not None and fn.name in factories[file] and isinstance(argument, ast.Name):
                    if argument.id == factories[file][fn.name].parameter:
                        continue  # the factory's body: its callers are the raise sites
            elif isinstance(node.func, ast.Name) and node.func.id in local:
                factory = local[node.func.id]
                error_class = factory.error_class
                if len(node.args) > factory.position:
                    argument = node.args[factory.position]
                else:
                    argument = _keyword(node, factory.parameter)
                if disposition is None and factory.disposition is not None:
                    disposition = ast.parse(factory.disposition, mode="eval").body
                if disposition is None and factory.disposition_param is not None:
                    if len(node.args) > factory.disposition_param:
                        disposition = node.args[factory.disposition_param]
            else:
                continue
            if argument is None:
                continue  # a class that supplies its own code (``BodyTooLarge(limit)``)
            written = None if disposition is None else ast.unparse(disposition)
            literals = _literals(argument)
            for code in literals if literals is not None else [None]:
                sites.append(
                    RaiseSite(file, node.lineno, error_class, code, ast.unparse(argument), written)
                )
        sites.extend(_own_code_sites(file, tree, classes))
    return sorted(sites, key=lambda s: (s.file, s.line, s.code or ""))


def _own_code_sites(file: str, tree: ast.Module, classes: dict[str, str]) -> list[RaiseSite]:
    """``super().__init__("code", ...)`` in an error class that brings its own code."""
    sites = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef) or node.name in classes:
            continue
        if not any(_name(base) in classes for base in node.bases):
            continue
        for call in ast.walk(node):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr == "__init__"
                and call.args
            ):
                for code in _literals(call.args[0]) or []:
                    sites.append(RaiseSite(file, call.lineno, node.name, code, repr(code), None))
    return sites
