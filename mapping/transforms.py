"""The built-in transforms a mapping's ``transforms:`` list may name.

Each transform has a name, an optional argument checked when the mapping is loaded (so a wrong
argument is a mapping error with its YAML line, not a failure on row 9,000), and a function from
value to value. An empty value (None) passes through every transform except ``default``.
``docs/mapping.md`` documents every name in :data:`TRANSFORMS` (a test checks it).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from stdnum.exceptions import ValidationError as StdnumValidationError
from stdnum.jp import cn as corporate_number_check

from mapping._japanese import ValueProblem, nfkc, parse_date, parse_decimal, parse_yen

__all__ = ["RUNS_ON_EMPTY", "TRANSFORMS", "Env", "SpecProblem", "TransformDef", "transform_names"]


class SpecProblem(Exception):
    """A transform's argument is wrong (reported with the mapping's line)."""


class Env:
    """What a transform may look at besides its value: the record's other fields and the
    mapping's lookup tables."""

    def __init__(
        self, resolve: Callable[[str], Any], lookups: Mapping[str, Mapping[str, Any]]
    ) -> None:
        self.resolve = resolve
        self.lookups = lookups


Prepare = Callable[[Any, Mapping[str, Any]], Any]
Apply = Callable[[Any, Any, Env], Any]


@dataclass(frozen=True)
class TransformDef:
    """One registered transform."""

    name: str
    summary: str
    apply: Apply
    prepare: Prepare | None = None  # None: takes no argument
    argument_required: bool = False


TRANSFORMS: dict[str, TransformDef] = {}


def _register(
    name: str,
    summary: str,
    *,
    prepare: Prepare | None = None,
    argument_required: bool = False,
) -> Callable[[Apply], Apply]:
    def wrap(fn: Apply) -> Apply:
        TRANSFORMS[name] = TransformDef(name, summary, fn, prepare, argument_required)
        return fn

    return wrap


def transform_names() -> list[str]:
    """Every registered transform name, sorted."""
    return sorted(TRANSFORMS)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _problem(code: str, en: str, ja: str) -> ValueProblem:
    return ValueProblem(code, en, ja)


# --- text -----------------------------------------------------------------------------------


@_register("nfkc", "Unicode NFKC normalisation and strip: full-width digits and letters to ASCII.")
def _nfkc(value: Any, arg: Any, env: Env) -> Any:
    return nfkc(_text(value))


@_register("strip", "Remove leading and trailing spaces, including the full-width space.")
def _strip(value: Any, arg: Any, env: Env) -> Any:
    return _text(value).strip().strip("\u3000").strip()


@_register("remove_spaces", "Remove every space, half- or full-width, anywhere in the value.")
def _remove_spaces(value: Any, arg: Any, env: Env) -> Any:
    return re.sub(r"[\s\u3000]+", "", _text(value))


@_register("upper", "Upper-case letters.")
def _upper(value: Any, arg: Any, env: Env) -> Any:
    return _text(value).upper()


@_register("lower", "Lower-case letters.")
def _lower(value: Any, arg: Any, env: Env) -> Any:
    return _text(value).lower()


def _prepare_int(arg: Any, lookups: Mapping[str, Any]) -> int:
    if not isinstance(arg, int) or isinstance(arg, bool) or arg < 1:
        raise SpecProblem("needs a positive whole number")
    return arg


@_register(
    "truncate",
    "Cut the value to at most N characters.",
    prepare=_prepare_int,
    argument_required=True,
)
def _truncate(value: Any, arg: Any, env: Env) -> Any:
    return _text(value)[: int(arg)]


def _prepare_regex(arg: Any, lookups: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(arg, str):
        arg = {"pattern": arg}
    if not isinstance(arg, dict) or not isinstance(arg.get("pattern"), str):
        raise SpecProblem("needs a regular expression, or {pattern: ..., with: ...}")
    unknown = set(arg) - {"pattern", "with", "message", "message_ja"}
    if unknown:
        raise SpecProblem(f"unknown keys {sorted(unknown)}")
    try:
        compiled = re.compile(arg["pattern"])
    except re.error as exc:
        raise SpecProblem(f"bad regular expression: {exc}") from exc
    return {**arg, "compiled": compiled}


@_register(
    "replace",
    "Replace every match of a regular expression: {pattern: ..., with: ...}.",
    prepare=_prepare_regex,
    argument_required=True,
)
def _replace(value: Any, arg: Any, env: Env) -> Any:
    return str(arg["compiled"].sub(str(arg.get("with", "")), _text(value)))


@_register(
    "extract",
    "Keep the part a regular expression matches (its first group if it has one).",
    prepare=_prepare_regex,
    argument_required=True,
)
def _extract(value: Any, arg: Any, env: Env) -> Any:
    match = arg["compiled"].search(_text(value))
    if match is None:
        raise _problem(
            "mapping.no_match",
            f"{value!r} does not contain {arg['pattern']!r}",
            f"「{value}」から必要な部分を取り出せません。",
        )
    return match.group(1) if match.re.groups else match.group(0)


@_register(
    "match",
    "Refuse the value unless the whole of it matches a regular expression.",
    prepare=_prepare_regex,
    argument_required=True,
)
def _match(value: Any, arg: Any, env: Env) -> Any:
    text = _text(value)
    if arg["compiled"].fullmatch(text) is None:
        raise _problem(
            "mapping.no_match",
            arg.get("message") or f"{text!r} does not match {arg['pattern']!r}",
            arg.get("message_ja") or f"「{text}」の形式が正しくありません。",
        )
    return text


def _prepare_template(arg: Any, lookups: Mapping[str, Any]) -> Any:
    from mapping._template import Template

    if not isinstance(arg, str):
        raise SpecProblem("needs a template text such as '{value}号'")
    return Template.parse(arg)


@_register(
    "template",
    "Build text from a template: {value} is the value so far, {列名} other columns.",
    prepare=_prepare_template,
    argument_required=True,
)
def _template(value: Any, arg: Any, env: Env) -> Any:
    def resolve(name: str) -> Any:
        return value if name == "value" else env.resolve(name)

    return arg.render(resolve)


# --- numbers, dates, codes -------------------------------------------------------------------


@_register(
    "date",
    "A date from 令和7年10月1日, 令和元年…, R7.10.1, R07.10.01, 2025/10/01, 2025-10-01, 20251001, "
    "kanji numerals and full-width digits; dates outside their era are refused.",
)
def _date(value: Any, arg: Any, env: Env) -> Any:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return parse_date(_text(value))


def _prepare_strftime(arg: Any, lookups: Mapping[str, Any]) -> str:
    if not isinstance(arg, str) or "%" not in arg:
        raise SpecProblem("needs a strftime pattern such as '%Y%m%d'")
    return arg


@_register(
    "format_date",
    "Write a date as text with a strftime pattern, e.g. '%Y%m%d'.",
    prepare=_prepare_strftime,
    argument_required=True,
)
def _format_date(value: Any, arg: Any, env: Env) -> Any:
    day = value if isinstance(value, dt.date) else parse_date(_text(value))
    return day.strftime(str(arg))


@_register(
    "yen",
    "A whole yen amount: full-width digits, commas, 円, ¥/￥, △/▲ negative, 万/億 units.",
)
def _yen(value: Any, arg: Any, env: Env) -> Any:
    if isinstance(value, Decimal | int):
        return parse_yen(str(value))
    return parse_yen(_text(value))


@_register("decimal", "A number (Decimal), read like yen but fractions allowed.")
def _decimal(value: Any, arg: Any, env: Env) -> Any:
    return parse_decimal(_text(value))


@_register("integer", "A whole number.")
def _integer(value: Any, arg: Any, env: Env) -> Any:
    number = parse_decimal(_text(value))
    if number != number.to_integral_value():
        raise _problem(
            "mapping.bad_number",
            f"{value!r} is not a whole number",
            f"「{value}」は整数ではありません。",
        )
    return int(number)


@_register(
    "corporate_number",
    "A 13-digit corporate number (法人番号), check digit verified; hyphens and spaces removed.",
)
def _corporate_number(value: Any, arg: Any, env: Env) -> Any:
    text = re.sub(r"[\s\-]", "", nfkc(_text(value)))
    try:
        return str(corporate_number_check.validate(text))
    except StdnumValidationError as exc:
        raise _problem(
            "mapping.bad_corporate_number",
            f"{value!r} is not a valid corporate number: {exc}",
            f"「{value}」は正しい法人番号ではありません(13桁・チェックディジット)。",
        ) from exc


@_register(
    "access_code",
    "A 4-digit access code (アクセスコード), full-width digits accepted; never printed.",
)
def _access_code(value: Any, arg: Any, env: Env) -> Any:
    text = nfkc(_text(value))
    if not re.fullmatch(r"\d{4}", text):
        raise _problem(
            "mapping.bad_access_code",
            "the access code must be 4 digits",
            "アクセスコードは4桁の数字で指定してください。",
        )
    return text


_EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")  # fmt: skip
_EMAIL_SEPARATORS = re.compile(r"[\s,;、，；/／]+")


def _one_email(text: str) -> str:
    address = nfkc(text).strip("<>").strip()
    if not _EMAIL.match(address):
        raise _problem(
            "mapping.bad_email",
            f"{text!r} is not an e-mail address",
            f"「{text}」はメールアドレスとして正しくありません。",
        )
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


@_register("email", "One e-mail address, NFKC-normalised (full-width ＠ and letters), checked.")
def _email(value: Any, arg: Any, env: Env) -> Any:
    return _one_email(_text(value))


@_register(
    "emails",
    "Several e-mail addresses in one cell (separated by , ; 、 spaces or line breaks) as a list.",
)
def _emails(value: Any, arg: Any, env: Env) -> Any:
    items = value if isinstance(value, list) else _EMAIL_SEPARATORS.split(nfkc(_text(value)))
    found: list[str] = []
    for item in items:
        if item and str(item).strip():
            address = _one_email(str(item))
            if address not in found:
                found.append(address)
    return found


def _prepare_split(arg: Any, lookups: Mapping[str, Any]) -> re.Pattern[str]:
    if arg is None:
        return _EMAIL_SEPARATORS
    if not isinstance(arg, str):
        raise SpecProblem("needs a separator regular expression")
    try:
        return re.compile(arg)
    except re.error as exc:
        raise SpecProblem(f"bad regular expression: {exc}") from exc


@_register(
    "split",
    "Split text into a list (default separators: , ; 、 spaces); empty items dropped.",
    prepare=_prepare_split,
)
def _split(value: Any, arg: Any, env: Env) -> Any:
    return [part for part in arg.split(_text(value)) if part.strip()]


# --- tables and defaults ----------------------------------------------------------------------


def _lookup_key(value: Any) -> str:
    return unicodedata.normalize("NFKC", _text(value)).strip()


def _prepare_lookup(arg: Any, lookups: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(arg, str | dict) and not (isinstance(arg, dict) and "table" in arg):
        arg = {"table": arg}
    if not isinstance(arg, dict):
        raise SpecProblem("needs a table name, an inline table, or {table: ..., default: ...}")
    unknown = set(arg) - {"table", "default"}
    if unknown:
        raise SpecProblem(f"unknown keys {sorted(unknown)}")
    table = arg["table"]
    if isinstance(table, str):
        if table not in lookups:
            raise SpecProblem(f"no lookup table {table!r} under 'lookups'")
        table = lookups[table]
    if not isinstance(table, dict):
        raise SpecProblem("a lookup table maps source values to results")
    return {
        "table": {_lookup_key(k): v for k, v in table.items()},
        "has_default": "default" in arg,
        "default": arg.get("default"),
    }


@_register(
    "lookup",
    "Replace the value through a table (keys compared after NFKC); unknown values are an error "
    "unless a default is given.",
    prepare=_prepare_lookup,
    argument_required=True,
)
def _lookup(value: Any, arg: Any, env: Env) -> Any:
    key = _lookup_key(value)
    if key in arg["table"]:
        return arg["table"][key]
    if arg["has_default"]:
        return arg["default"]
    raise _problem(
        "mapping.lookup_missing",
        f"{value!r} is not in the lookup table",
        f"「{value}」は対応表にありません。",
    )


def _prepare_default(arg: Any, lookups: Mapping[str, Any]) -> Any:
    return arg


@_register(
    "default",
    "Use this value when the value is empty.",
    prepare=_prepare_default,
    argument_required=True,
)
def _default(value: Any, arg: Any, env: Env) -> Any:
    return arg if value is None or value == "" else value


# Transforms that also run on an empty value.
RUNS_ON_EMPTY = frozenset({"default"})
