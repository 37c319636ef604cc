"""The YAML mapping language: load and check a mapping, then apply it to raw records.

A mapping is loaded once (:func:`load_mapping`); every problem in it is reported at once, each
with its YAML line. Applying it to a record (:meth:`SourceMapping.apply`) is pure: it returns a
draft, a skip (a ``skip:`` condition held) or the record's line errors, and never touches a
database, a file or the network. ``docs/mapping.md`` is the reference for admins.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import dataclasses
import datetime as dt
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from core.drafts import (
    ContractorDraft,
    ContractorRef,
    DocumentRef,
    Draft,
    EnvelopeDraft,
    FieldDraft,
    LineError,
    PartyDraft,
    SigningAuthority,
    UsageRequestDraft,
)
from core.errors import ConfigError
from core.text_boxes import MAX_LENGTH, shape_problem
from mapping._japanese import ValueProblem, nfkc, parse_date, parse_decimal, parse_yen
from mapping._template import Template, TemplateProblem
from mapping._yaml import LineDict, LineList, YamlProblem, load_yaml
from mapping.transforms import RUNS_ON_EMPTY, TRANSFORMS, Env, SpecProblem

__all__ = [
    "AWARD_KEYS",
    "CONDITION_OPS",
    "FORMAT_KEYS",
    "USAGE_KEYS",
    "VALUE_KEYS",
    "Condition",
    "DocumentSpec",
    "MappingSpecError",
    "Outcome",
    "PartySpec",
    "Problem",
    "SourceMapping",
    "Target",
    "Value",
    "choose_signing_authority",
    "contract_type_of",
    "load_mapping",
    "redact",
]

Kind = Literal["awards", "contractors", "usage_requests"]
KINDS: tuple[str, ...] = ("awards", "contractors", "usage_requests")

TOP_KEYS = {
    "awards": {"version", "kind", "description", "format", "lookups", "vars", "skip", "award",
               "contractor", "documents", "parties", "fields", "signer"},
    "contractors": {"version", "kind", "description", "format", "lookups", "vars", "skip",
                    "contractor"},
    "usage_requests": {"version", "kind", "description", "format", "lookups", "vars", "skip",
                       "contractor", "usage_request"},
}  # fmt: skip
FORMAT_KEYS = {
    "type", "encoding", "header", "columns", "delimiter", "quotechar", "skip_rows",
    "null_values", "record_path",
}  # fmt: skip
AWARD_KEYS = {"id", "title", "amount", "award_date", "transaction_date", "department",
              "deadline", "management_number", "contract_type"}  # fmt: skip
CONTRACTOR_KEYS = {"name", "corporate_number", "registry_code", "emails"}
USAGE_KEYS = {"award_id", "signer_name", "signer_title", "signer_email", "access_code",
              "contact_department", "contact_name", "contact_phone", "contact_email",
              "consented_on", "request_id", "measures"}  # fmt: skip
# Where the contractor's signer comes from, per contract type (``signer:``).
SIGNER_SOURCES = ("usage_request", "registry", "mapping")
CONTRACT_TYPES = ("construction", "other")
VALUE_KEYS = {"column", "template", "value", "first_of", "var", "transforms", "default",
              "required"}  # fmt: skip
CONDITION_OPS = {"equals", "not_equals", "in", "not_in", "empty", "matches", "less_than",
                 "greater_than"}  # fmt: skip
PARTY_ROLES = ("approver", "signer", "cc")
PARTY_FROM = ("fixed", "contractor", "signing_authority")
_ENCODING_ALIASES = {"shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "s_jis": "cp932",
                     "windows-31j": "cp932", "ms932": "cp932"}  # fmt: skip

# What each target is read as; text arriving for a typed target is converted implicitly.
TargetType = Literal["text", "date", "yen", "emails", "email", "corporate_number",
                     "access_code", "contract_type", "bytes", "any"]  # fmt: skip


class MappingSpecError(ConfigError):
    """A mapping file is wrong; ``details['problems']`` lists each problem with its line."""


@dataclass(frozen=True)
class Problem:
    """One problem in a mapping file."""

    line: int
    message: str


class _Problems:
    def __init__(self) -> None:
        self.items: list[Problem] = []

    def add(self, line: int, message: str) -> None:
        self.items.append(Problem(line, message))


def _line(node: Any, default: int) -> int:
    return int(getattr(node, "line", default) or default)


# --- record context ------------------------------------------------------------------------


class _MissingColumn(ValueProblem):
    def __init__(self, name: str) -> None:
        super().__init__(
            "mapping.column_missing",
            f"the record has no column {name!r}",
            f"列「{name}」がありません。",
        )


class _Context:
    """One record while a mapping is applied to it."""

    def __init__(self, mapping: SourceMapping, fields: Mapping[str, Any]) -> None:
        self.mapping = mapping
        self.fields = fields
        self._positional: list[Any] | None = None
        self._vars: dict[str, Any] = {}
        self._evaluating: set[str] = set()
        self.env = Env(self.resolve, mapping.lookups)

    def column(self, ref: str | int) -> Any:
        if isinstance(ref, int):
            if self._positional is None:
                self._positional = list(self.fields.values())
            if ref > len(self._positional):
                raise _MissingColumn(str(ref))
            return _clean(self._positional[ref - 1])
        if ref not in self.fields:
            raise _MissingColumn(ref)
        return _clean(self.fields[ref])

    def resolve(self, name: str) -> Any:
        if name in self.mapping.vars:
            if name not in self._vars:
                if name in self._evaluating:
                    raise ValueProblem(
                        "mapping.var_cycle",
                        f"var {name!r} refers to itself",
                        f"変数「{name}」が循環しています。",
                    )
                self._evaluating.add(name)
                try:
                    self._vars[name] = self.mapping.vars[name].evaluate(self)
                finally:
                    self._evaluating.discard(name)
            return self._vars[name]
        if name.isdigit():
            return self.column(int(name))
        return self.column(name)


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value if value.strip(" \t\r\n\u3000") else None
    return value


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    name: str
    arg: Any
    line: int


class _FieldFailure(Exception):
    def __init__(self, problem: ValueProblem, line: int) -> None:
        super().__init__(problem.reason)
        self.problem = problem
        self.line = line


@dataclass
class Value:
    """A compiled value spec: where the value comes from, then its transforms."""

    line: int
    kind: str  # column | template | value | first_of | var
    source: Any
    steps: tuple[_Step, ...] = ()
    default: Any = None
    has_default: bool = False
    required: bool = False
    columns: frozenset[str] = frozenset()

    def _raw(self, ctx: _Context) -> Any:
        if self.kind == "column":
            return ctx.column(self.source)
        if self.kind == "template":
            return self.source.render(ctx.resolve)
        if self.kind == "var":
            return ctx.resolve(self.source)
        if self.kind == "first_of":
            for option in self.source:
                try:
                    candidate = option.evaluate(ctx)
                except _FieldFailure as failure:
                    if isinstance(failure.problem, _MissingColumn):
                        continue
                    raise
                if candidate is not None and candidate != "" and candidate != []:
                    return candidate
            return None
        return self.source  # a constant

    def evaluate(self, ctx: _Context) -> Any:
        """The value for this record (raises :class:`_FieldFailure` with the failing line)."""
        try:
            value = self._raw(ctx)
        except _FieldFailure:
            raise
        except ValueProblem as problem:
            raise _FieldFailure(problem, self.line) from problem
        for step in self.steps:
            if (value is None or value == "") and step.name not in RUNS_ON_EMPTY:
                continue
            try:
                value = TRANSFORMS[step.name].apply(value, step.arg, ctx.env)
            except ValueProblem as problem:
                raise _FieldFailure(problem, step.line) from problem
        if (value is None or value == "" or value == []) and self.has_default:
            value = self.default
        if self.required and (value is None or value == "" or value == []):
            raise _FieldFailure(
                ValueProblem("mapping.required", "a value is required", "値が必要です(空欄です)。"),
                self.line,
            )
        return value


def _template_columns(template: Template) -> set[str]:
    return set(template.names)


class _Compiler:
    """Turns the YAML tree into compiled specs, collecting every problem."""

    def __init__(self, problems: _Problems, lookups: Mapping[str, Mapping[str, Any]]) -> None:
        self.problems = problems
        self.lookups = lookups

    def value(self, node: Any, line: int, where: str, *, required: bool = False) -> Value | None:
        if isinstance(node, bool) or node is None:
            if node is None:
                self.problems.add(line, f"{where}: a value spec is empty")
                return None
            return Value(line, "value", node, required=required)
        if isinstance(node, int):
            if node < 1:
                self.problems.add(line, f"{where}: column positions start at 1")
                return None
            return Value(line, "column", node, required=required, columns=frozenset({str(node)}))
        if isinstance(node, float):
            return Value(line, "value", node, required=required)
        if isinstance(node, str):
            return self._template_value(node, line, where, required=required)
        if isinstance(node, LineList):
            self.problems.add(line, f"{where}: a list is not a value spec (use first_of: [...])")
            return None
        if not isinstance(node, LineDict):
            self.problems.add(line, f"{where}: not a value spec")
            return None
        return self._full_value(node, where, required)

    def _template_value(self, text: str, line: int, where: str, *, required: bool) -> Value | None:
        try:
            template = Template.parse(text)
        except TemplateProblem as exc:
            self.problems.add(line, f"{where}: {exc}")
            return None
        if template.is_literal:
            return Value(line, "value", text, required=required)
        return Value(
            line, "template", template, required=required, columns=frozenset(template.names)
        )

    def _full_value(self, node: LineDict, where: str, required: bool) -> Value | None:
        line = node.line
        unknown = set(node) - VALUE_KEYS
        for key in sorted(unknown):
            self.problems.add(
                node.line_of(key), f"{where}: unknown key {key!r} (known: {sorted(VALUE_KEYS)})"
            )
        sources = [k for k in ("column", "template", "value", "first_of", "var") if k in node]
        if len(sources) != 1:
            self.problems.add(
                line, f"{where}: give exactly one of column, template, value, first_of, var"
            )
            return None
        kind = sources[0]
        raw = node[kind]
        kline = node.line_of(kind)
        columns: set[str] = set()
        source: Any = raw
        if kind == "column":
            if isinstance(raw, bool) or not isinstance(raw, str | int):
                self.problems.add(kline, f"{where}: column is a name or a position (1, 2, ...)")
                return None
            if isinstance(raw, int) and raw < 1:
                self.problems.add(kline, f"{where}: column positions start at 1")
                return None
            columns.add(str(raw))
        elif kind == "template":
            if not isinstance(raw, str):
                self.problems.add(kline, f"{where}: template must be text")
                return None
            try:
                source = Template.parse(raw)
            except TemplateProblem as exc:
                self.problems.add(kline, f"{where}: {exc}")
                return None
            columns |= _template_columns(source)
        elif kind == "var":
            if not isinstance(raw, str):
                self.problems.add(kline, f"{where}: var names a value under 'vars'")
                return None
            columns.add(raw)
        elif kind == "first_of":
            if not isinstance(raw, LineList) or not raw:
                self.problems.add(kline, f"{where}: first_of needs a list of value specs")
                return None
            options = []
            for index, item in enumerate(raw):
                option = self.value(item, raw.line_of(index), f"{where}.first_of[{index + 1}]")
                if option is not None:
                    options.append(option)
                    columns |= option.columns
            source = tuple(options)
        steps = self.steps(node.get("transforms"), node.line_of("transforms"), where)
        req = node.get("required", required)
        if not isinstance(req, bool):
            self.problems.add(node.line_of("required"), f"{where}: required is true or false")
            req = required
        return Value(
            line,
            kind,
            source,
            steps=steps,
            default=node.get("default"),
            has_default="default" in node,
            required=req,
            columns=frozenset(columns),
        )

    def steps(self, node: Any, line: int, where: str) -> tuple[_Step, ...]:
        if node is None:
            return ()
        items: list[Any]
        lines: list[int]
        if isinstance(node, str | LineDict):
            items, lines = [node], [line]
        elif isinstance(node, LineList):
            items, lines = list(node), [node.line_of(i) for i in range(len(node))]
        else:
            self.problems.add(line, f"{where}: transforms is a list of transform names")
            return ()
        steps = []
        for item, item_line in zip(items, lines, strict=True):
            if isinstance(item, str):
                name, arg, has_arg = item, None, False
            elif isinstance(item, LineDict) and len(item) == 1:
                name, arg = next(iter(item.items()))
                has_arg = True
            else:
                self.problems.add(
                    item_line, f"{where}: a transform is a name or {{name: argument}}"
                )
                continue
            definition = TRANSFORMS.get(name)
            if definition is None:
                self.problems.add(
                    item_line,
                    f"{where}: unknown transform {name!r} (known: {', '.join(sorted(TRANSFORMS))})",
                )
                continue
            if definition.prepare is None:
                if has_arg and arg is not None:
                    self.problems.add(item_line, f"{where}: transform {name!r} takes no argument")
                    continue
                prepared = None
            else:
                if definition.argument_required and not has_arg:
                    self.problems.add(item_line, f"{where}: transform {name!r} needs an argument")
                    continue
                try:
                    prepared = definition.prepare(arg, self.lookups)
                except SpecProblem as exc:
                    self.problems.add(item_line, f"{where}: transform {name!r}: {exc}")
                    continue
            steps.append(_Step(name, prepared, item_line))
        return tuple(steps)


# --- conditions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """A compiled ``skip:`` condition."""

    line: int
    op: str
    subject: Value | None = None
    arg: Any = None
    children: tuple[Condition, ...] = ()
    reason: str | None = None

    def holds(self, ctx: _Context) -> bool:
        """True when the condition holds for the record."""
        if self.op == "all":
            return all(c.holds(ctx) for c in self.children)
        if self.op == "any":
            return any(c.holds(ctx) for c in self.children)
        if self.op == "not":
            return not self.children[0].holds(ctx)
        assert self.subject is not None
        value = self.subject.evaluate(ctx)
        empty = value is None or value == "" or value == []
        if self.op == "empty":
            return bool(empty == self.arg)
        text = "" if empty else _norm(value)
        if self.op == "equals":
            return bool(text == self.arg)
        if self.op == "not_equals":
            return bool(text != self.arg)
        if self.op == "in":
            return text in self.arg
        if self.op == "not_in":
            return text not in self.arg
        if self.op == "matches":
            return bool(self.arg.search(text))
        if empty:
            return False
        try:
            number = value if isinstance(value, Decimal) else parse_decimal(text)
        except ValueProblem as problem:
            raise _FieldFailure(problem, self.line) from problem
        return bool(number < self.arg if self.op == "less_than" else number > self.arg)

    def describe(self) -> str:
        """What the condition says, for reports."""
        return self.reason or f"skip condition at mapping line {self.line}"


def _norm(value: Any) -> str:
    if isinstance(value, dt.date):
        return value.isoformat()
    return unicodedata.normalize("NFKC", str(value)).strip()


def _compile_condition(c: _Compiler, node: Any, line: int, where: str) -> Condition | None:
    if not isinstance(node, LineDict):
        c.problems.add(line, f"{where}: a condition is a mapping (column: ..., in: [...])")
        return None
    line = node.line
    reason = node.get("reason")
    if reason is not None and not isinstance(reason, str):
        c.problems.add(node.line_of("reason"), f"{where}: reason is text")
        reason = None
    for combinator in ("all", "any"):
        if combinator in node:
            items = node[combinator]
            if not isinstance(items, LineList) or not items:
                c.problems.add(node.line_of(combinator), f"{where}: {combinator} needs a list")
                return None
            children = [
                _compile_condition(c, item, items.line_of(i), f"{where}.{combinator}[{i + 1}]")
                for i, item in enumerate(items)
            ]
            if any(child is None for child in children):
                return None
            return Condition(
                line, combinator, children=tuple(ch for ch in children if ch), reason=reason
            )
    if "not" in node:
        child = _compile_condition(c, node["not"], node.line_of("not"), f"{where}.not")
        return Condition(line, "not", children=(child,), reason=reason) if child else None
    subject_keys = [k for k in ("column", "value", "var") if k in node]
    ops = [k for k in node if k in CONDITION_OPS]
    unknown = set(node) - CONDITION_OPS - {"column", "value", "var", "reason", "transforms"}
    for key in sorted(unknown):
        c.problems.add(node.line_of(key), f"{where}: unknown key {key!r}")
    if len(subject_keys) != 1 or len(ops) != 1:
        c.problems.add(
            line,
            f"{where}: a condition names one of column/value/var and one test of "
            f"{sorted(CONDITION_OPS)} (or all/any/not)",
        )
        return None
    spec: Any = LineDict({subject_keys[0]: node[subject_keys[0]]})
    spec.line, spec.key_lines = line, {subject_keys[0]: node.line_of(subject_keys[0])}
    if "transforms" in node:
        spec["transforms"] = node["transforms"]
        spec.key_lines["transforms"] = node.line_of("transforms")
    if subject_keys[0] == "value":
        subject = c.value(node["value"], node.line_of("value"), where)
        if subject is not None and "transforms" in node:
            steps = c.steps(node["transforms"], node.line_of("transforms"), where)
            subject = Value(
                subject.line, subject.kind, subject.source, steps=subject.steps + steps,
                columns=subject.columns,
            )  # fmt: skip
    else:
        subject = c.value(spec, line, where)
    op = ops[0]
    arg = node[op]
    op_line = node.line_of(op)
    prepared: Any = arg
    if op in ("equals", "not_equals"):
        if isinstance(arg, LineList | LineDict):
            c.problems.add(op_line, f"{where}: {op} compares with one value")
            return None
        prepared = _norm(arg) if arg is not None else ""
    elif op in ("in", "not_in"):
        if not isinstance(arg, LineList):
            c.problems.add(op_line, f"{where}: {op} needs a list")
            return None
        prepared = frozenset(_norm(a) if a is not None else "" for a in arg)
    elif op == "empty":
        if not isinstance(arg, bool):
            c.problems.add(op_line, f"{where}: empty is true or false")
            return None
    elif op == "matches":
        try:
            prepared = re.compile(str(arg))
        except re.error as exc:
            c.problems.add(op_line, f"{where}: bad regular expression: {exc}")
            return None
    else:
        try:
            prepared = parse_decimal(str(arg))
        except ValueProblem:
            c.problems.add(op_line, f"{where}: {op} needs a number")
            return None
    if subject is None:
        return None
    return Condition(line, op, subject=subject, arg=prepared, reason=reason)


# --- the mapping ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One output of a mapping: a name in the draft, its spec and how it is read."""

    name: str
    value: Value
    type: TargetType = "text"


@dataclass(frozen=True)
class DocumentSpec:
    """One ``documents:`` item."""

    line: int
    name: Value
    path: Value | None
    attachment: Value | None
    required: bool


@dataclass(frozen=True)
class PartySpec:
    """One ``parties:`` item."""

    line: int
    role: str
    origin: str
    name: Value | None = None
    email: Value | None = None
    company: Value | None = None
    title: Value | None = None
    staff: bool = False


@dataclass(frozen=True)
class Outcome:
    """What a mapping made of one record: a draft, a skip, or line errors."""

    draft: Draft | None = None
    skipped: str | None = None
    errors: tuple[LineError, ...] = ()


@dataclass
class SourceMapping:
    """A loaded, checked mapping. :meth:`apply` it to records."""

    name: str
    kind: Kind
    format: dict[str, Any]
    lookups: dict[str, dict[str, Any]]
    vars: dict[str, Value]
    skip: tuple[Condition, ...]
    targets: dict[str, Target]
    documents: tuple[DocumentSpec, ...] = ()
    parties: tuple[PartySpec, ...] = ()
    fields: tuple[FieldDraft, ...] = ()
    sensitive_columns: frozenset[str] = field(default_factory=frozenset)
    # contract type → usage_request | registry | mapping (``signer:``)
    signer: dict[str, str] = field(default_factory=dict)

    def apply(
        self,
        fields: Mapping[str, Any],
        *,
        source: str,
        file: str | None = None,
        line: int | None = None,
        path: str | None = None,
        authorities: Sequence[SigningAuthority] = (),
    ) -> Outcome:
        """Map one record's fields (name → value) to a draft, a skip or its line errors."""
        ctx = _Context(self, fields)
        errors: list[LineError] = []

        def fail(target: str | None, code: str, en: str, ja: str, mline: int | None) -> None:
            # One cause once: a bad date used by three targets (through a var) is one error.
            if any(e.code == code and e.reason == en for e in errors):
                return
            errors.append(
                LineError(
                    source=source,
                    file=file,
                    line=line,
                    path=path,
                    field=target,
                    code=code,
                    reason=en,
                    reason_ja=ja,
                    mapping_line=mline,
                )
            )

        for condition in self.skip:
            try:
                if condition.holds(ctx):
                    return Outcome(skipped=condition.describe())
            except _FieldFailure as failure:
                p = failure.problem
                fail("skip", p.code, p.reason, p.reason_ja, failure.line)
                return Outcome(errors=tuple(errors))

        values: dict[str, Any] = {}
        for target in self.targets.values():
            try:
                values[target.name] = _coerce(target.value.evaluate(ctx), target.type)
            except _FieldFailure as failure:
                p = failure.problem
                fail(target.name, p.code, p.reason, p.reason_ja, failure.line)
            except ValueProblem as problem:
                fail(
                    target.name, problem.code, problem.reason, problem.reason_ja, target.value.line
                )

        documents: list[DocumentRef] = []
        for index, doc in enumerate(self.documents):
            label = f"documents[{index + 1}]"
            try:
                name = doc.name.evaluate(ctx)
                where = doc.path.evaluate(ctx) if doc.path else None
                data = doc.attachment.evaluate(ctx) if doc.attachment else None
            except _FieldFailure as failure:
                p = failure.problem
                fail(label, p.code, p.reason, p.reason_ja, failure.line)
                continue
            if isinstance(data, str):
                # JSON and XML carry a PDF as base64 text; SOAP (zeep) hands over bytes.
                try:
                    data = base64.b64decode("".join(data.split()), validate=True)
                except (binascii.Error, ValueError):
                    data = None
                    fail(label, "mapping.bad_attachment", "the attachment is not valid base64",
                         "添付ファイルの内容が正しくありません(base64ではありません)。", doc.line)  # fmt: skip
                    continue
            if data is not None and not isinstance(data, bytes):
                fail(label, "mapping.bad_attachment", "the attachment is not binary data",
                     "添付ファイルの内容が正しくありません。", doc.line)  # fmt: skip
                continue
            if where is None and data is None:
                if doc.required:
                    fail(label, "mapping.document_missing", "no document path or attachment",
                         "契約書ファイルの場所が空欄です。", doc.line)  # fmt: skip
                continue
            documents.append(
                DocumentRef(
                    name=_file_name(str(name)),
                    path=None if where is None else str(where),
                    data=data,
                    required=doc.required,
                )
            )

        if errors:
            return Outcome(errors=tuple(errors))
        try:
            draft = self._build(values, documents, ctx, authorities)
        except _FieldFailure as failure:
            p = failure.problem
            fail("parties", p.code, p.reason, p.reason_ja, failure.line)
            return Outcome(errors=tuple(errors))
        except ValueProblem as problem:
            fail(
                problem.code.rpartition(".")[2],
                problem.code,
                problem.reason,
                problem.reason_ja,
                None,
            )
            return Outcome(errors=tuple(errors))
        return Outcome(draft=draft)

    def _contractor(self, values: Mapping[str, Any]) -> ContractorRef:
        ref = ContractorRef(
            name=values.get("contractor.name"),
            corporate_number=values.get("contractor.corporate_number"),
            registry_code=values.get("contractor.registry_code"),
        )
        if not (ref.name or ref.corporate_number or ref.registry_code):
            raise ValueProblem(
                "mapping.contractor",
                "the record names no contractor (name, corporate number or registry code)",
                "受注者(商号・法人番号・業者番号)が空欄です。",
            )
        return ref

    def _build(
        self,
        values: Mapping[str, Any],
        documents: list[DocumentRef],
        ctx: _Context,
        authorities: Sequence[SigningAuthority],
    ) -> Draft:
        contractor = self._contractor(values)
        if self.kind == "contractors":
            return ContractorDraft(contractor=contractor, emails=tuple(values.get("emails") or ()))
        if self.kind == "usage_requests":
            return UsageRequestDraft(
                contractor=contractor,
                award_id=values.get("award_id"),
                signer_name=values["signer_name"],
                signer_title=values.get("signer_title"),
                signer_email=values["signer_email"],
                access_code=values.get("access_code"),
                contact_department=values.get("contact_department"),
                contact_name=values.get("contact_name"),
                contact_phone=values.get("contact_phone"),
                contact_email=values.get("contact_email"),
                consented_on=values.get("consented_on"),
                request_id=values.get("request_id"),
                measures=values.get("measures"),
            )
        amount = values.get("amount")
        department = values.get("department")
        parties = []
        for spec in self.parties:
            parties.append(self._party(spec, ctx, contractor, department, amount, authorities))
        award_date = values.get("award_date")
        contract_type = values.get("contract_type")
        # Unmapped, a contract counts as construction: the strictest rule (prior consent).
        signer_from = self.signer.get(contract_type or "construction", "usage_request")
        if signer_from != "mapping":
            parties = [
                dataclasses.replace(p, name=None, email=None, title=None)
                if p.source == "contractor" else p
                for p in parties
            ]  # fmt: skip
        return EnvelopeDraft(
            award_id=values["id"],
            title=values["title"],
            contractor=contractor,
            amount=amount,
            award_date=award_date,
            transaction_date=values.get("transaction_date") or award_date,
            department=department,
            deadline=values.get("deadline"),
            management_number=values.get("management_number"),
            documents=tuple(documents),
            parties=tuple(parties),
            fields=self.fields,
            contract_type=contract_type,
            signer_from=None if signer_from == "usage_request" else signer_from,
        )

    def _party(
        self,
        spec: PartySpec,
        ctx: _Context,
        contractor: ContractorRef,
        department: str | None,
        amount: Decimal | None,
        authorities: Sequence[SigningAuthority],
    ) -> PartyDraft:
        if spec.origin == "contractor":
            if spec.email is None:
                return PartyDraft(role=spec.role, source="contractor", company=contractor.name)
            name = spec.name.evaluate(ctx) if spec.name else None
            title = spec.title.evaluate(ctx) if spec.title else None
            return PartyDraft(
                role=spec.role,
                source="contractor",
                company=contractor.name,
                name=None if name is None else _coerce(name, "text"),
                email=_coerce(spec.email.evaluate(ctx), "email"),
                title=None if title is None else _coerce(title, "text"),
            )
        if spec.origin == "signing_authority":
            official = choose_signing_authority(authorities, department, amount)
            if official is None:
                raise _FieldFailure(
                    ValueProblem(
                        "mapping.no_signing_authority",
                        f"no signing authority covers department {department!r} "
                        f"and amount {amount}",
                        f"所属「{department or ''}」・金額{amount if amount is not None else '(空欄)'}円"
                        "に対応する契約締結権限者が契約締結権限表にありません。",
                    ),
                    spec.line,
                )
            return PartyDraft(
                role=spec.role,
                source="signing_authority",
                name=official.name,
                email=official.email,
                title=official.title,
            )

        def text(value: Value | None) -> str | None:
            if value is None:
                return None
            result = value.evaluate(ctx)
            return None if result is None else _coerce(result, "text")

        return PartyDraft(
            role=spec.role,
            source="fixed",
            name=text(spec.name),
            email=_coerce(text(spec.email), "email") if spec.email else None,
            company=text(spec.company),
            title=text(spec.title),
            staff=True if spec.staff else None,
        )


def choose_signing_authority(
    authorities: Sequence[SigningAuthority], department: str | None, amount: Decimal | None
) -> SigningAuthority | None:
    """The official who signs: among entries for the department (or ``*``) whose ceiling covers
    the amount, the one with the lowest ceiling (the most delegated); a department's own entry
    wins over ``*`` at the same ceiling. An unknown amount needs an entry without a ceiling."""
    wanted = nfkc(department) if department else None
    best: tuple[Decimal, int, SigningAuthority] | None = None
    for entry in authorities:
        specific = entry.department != "*"
        if specific and (wanted is None or nfkc(entry.department) != wanted):
            continue
        if entry.max_amount is not None and (amount is None or amount > entry.max_amount):
            continue
        ceiling = entry.max_amount if entry.max_amount is not None else Decimal("Infinity")
        rank = (ceiling, 0 if specific else 1)
        if best is None or rank < (best[0], best[1]):
            best = (ceiling, rank[1], entry)
    return best[2] if best else None


def _file_name(name: str) -> str:
    name = name.replace("/", "_").replace("\\", "_").strip()
    return name if name.lower().endswith(".pdf") else f"{name}.pdf"


def _coerce(value: Any, kind: TargetType) -> Any:
    if value is None or value == "" or value == []:
        return None
    if kind == "text":
        if isinstance(value, dt.date):
            return value.isoformat()
        if isinstance(value, bytes | list | dict):
            raise ValueProblem(
                "mapping.not_text", "the value is not text", "値が文字列ではありません。"
            )
        return str(value).strip()
    if kind == "date":
        if isinstance(value, dt.datetime):
            return value.date()
        return value if isinstance(value, dt.date) else parse_date(str(value))
    if kind == "yen":
        return parse_yen(str(value))
    if kind == "emails":
        return TRANSFORMS["emails"].apply(value, None, Env(lambda n: None, {}))
    if kind == "email":
        return TRANSFORMS["email"].apply(value, None, Env(lambda n: None, {}))
    if kind == "corporate_number":
        return TRANSFORMS["corporate_number"].apply(value, None, Env(lambda n: None, {}))
    if kind == "access_code":
        return TRANSFORMS["access_code"].apply(value, None, Env(lambda n: None, {}))
    if kind == "contract_type":
        return contract_type_of(str(value))
    return value


def contract_type_of(text: str) -> str:
    """``construction`` or ``other`` from how exports write it: ``construction``/``other``,
    建設工事, a 業種 of the 29 建設工事 kinds (土木一式工事, 舗装工事, ... all end in 工事), or
    anything else (委託, 物品, 役務) for other. Use a ``lookup`` for anything subtler."""
    word = unicodedata.normalize("NFKC", text).strip()
    if word.lower() in CONTRACT_TYPES:
        return word.lower()
    if word.endswith("工事") or word in ("建設", "工事"):
        return "construction"
    if not word:
        raise ValueProblem(
            "mapping.contract_type", "the contract type is empty", "契約種別が空欄です。"
        )
    return "other"


_AWARD_TYPES: dict[str, TargetType] = {
    "id": "text", "title": "text", "amount": "yen", "award_date": "date",
    "transaction_date": "date", "department": "text", "deadline": "date",
    "management_number": "text", "contract_type": "contract_type",
}  # fmt: skip
_CONTRACTOR_TYPES: dict[str, TargetType] = {
    "name": "text", "corporate_number": "corporate_number", "registry_code": "text",
    "emails": "emails",
}  # fmt: skip
_USAGE_TYPES: dict[str, TargetType] = {
    "award_id": "text", "signer_name": "text", "signer_title": "text", "signer_email": "email",
    "access_code": "access_code", "contact_department": "text", "contact_name": "text",
    "contact_phone": "text", "contact_email": "email", "consented_on": "date",
    "request_id": "text", "measures": "text",
}  # fmt: skip
_REQUIRED = {
    "awards": {"id", "title"},
    "contractors": set(),
    "usage_requests": {"signer_name", "signer_email"},
}


def _section(
    c: _Compiler,
    root: LineDict,
    key: str,
    allowed: set[str],
    types: Mapping[str, TargetType],
    required: set[str],
    prefix: str = "",
) -> dict[str, Target]:
    node = root.get(key)
    targets: dict[str, Target] = {}
    if node is None:
        if required:
            c.problems.add(root.line, f"'{key}' is missing (needs {', '.join(sorted(required))})")
        return targets
    if not isinstance(node, LineDict):
        c.problems.add(root.line_of(key), f"'{key}' must be a mapping of targets")
        return targets
    for name in sorted(set(node) - allowed):
        c.problems.add(
            node.line_of(name), f"{key}: unknown key {name!r} (known: {', '.join(sorted(allowed))})"
        )
    for name in sorted(required - set(node)):
        c.problems.add(root.line_of(key), f"{key}: '{name}' is required")
    for name in node:
        if name not in allowed:
            continue
        value = c.value(node[name], node.line_of(name), f"{key}.{name}", required=name in required)
        if value is not None:
            targets[prefix + name] = Target(prefix + name, value, types[name])
    return targets


def _format(c: _Compiler, root: LineDict) -> dict[str, Any]:
    node = root.get("format")
    result: dict[str, Any] = {"type": "csv", "encoding": "utf-8", "header": True}
    if node is None:
        return result
    if not isinstance(node, LineDict):
        c.problems.add(root.line_of("format"), "'format' must be a mapping")
        return result
    for key in sorted(set(node) - FORMAT_KEYS):
        c.problems.add(node.line_of(key), f"format: unknown key {key!r}")
    kind = node.get("type", "csv")
    if kind not in ("csv", "records"):
        c.problems.add(node.line_of("type"), "format.type is csv or records (SOAP, API)")
    result["type"] = kind
    encoding = str(node.get("encoding", "utf-8"))
    encoding = _ENCODING_ALIASES.get(encoding.lower(), encoding)
    try:
        codecs.lookup(encoding)
    except LookupError:
        c.problems.add(node.line_of("encoding"), f"format.encoding: unknown encoding {encoding!r}")
    result["encoding"] = encoding
    header = node.get("header", True)
    if not isinstance(header, bool):
        c.problems.add(node.line_of("header"), "format.header is true or false")
        header = True
    result["header"] = header
    if "columns" in node:
        columns = node["columns"]
        if header:
            c.problems.add(node.line_of("columns"), "format.columns is for files without a header")
        elif not isinstance(columns, LineList) or not all(isinstance(x, str) for x in columns):
            c.problems.add(node.line_of("columns"), "format.columns is a list of column names")
        elif len(set(columns)) != len(columns):
            c.problems.add(node.line_of("columns"), "format.columns has a name twice")
        else:
            result["columns"] = list(columns)
    for key, kind_name in (("delimiter", "one character"), ("quotechar", "one character")):
        if key in node:
            value = node[key]
            if not isinstance(value, str) or len(value) != 1:
                c.problems.add(node.line_of(key), f"format.{key} is {kind_name}")
            else:
                result[key] = value
    if "skip_rows" in node:
        value = node["skip_rows"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            c.problems.add(node.line_of("skip_rows"), "format.skip_rows is a whole number >= 0")
        else:
            result["skip_rows"] = value
    if "null_values" in node:
        value = node["null_values"]
        if not isinstance(value, LineList):
            c.problems.add(node.line_of("null_values"), "format.null_values is a list of texts")
        else:
            result["null_values"] = ["" if v is None else str(v) for v in value]
    if "record_path" in node:
        if not isinstance(node["record_path"], str):
            c.problems.add(node.line_of("record_path"), "format.record_path is a dotted path")
        else:
            result["record_path"] = node["record_path"]
    return result


def _lookups(c: _Compiler, root: LineDict) -> dict[str, dict[str, Any]]:
    node = root.get("lookups")
    if node is None:
        return {}
    if not isinstance(node, LineDict):
        c.problems.add(root.line_of("lookups"), "'lookups' maps table names to tables")
        return {}
    tables: dict[str, dict[str, Any]] = {}
    for name, table in node.items():
        if not isinstance(table, LineDict):
            c.problems.add(node.line_of(name), f"lookups.{name}: a table maps values to results")
            continue
        tables[name] = {str(k): v for k, v in table.items()}
    return tables


def _documents(c: _Compiler, root: LineDict) -> tuple[DocumentSpec, ...]:
    node = root.get("documents")
    if node is None:
        c.problems.add(root.line, "'documents' is missing: where does each contract PDF come from?")
        return ()
    if not isinstance(node, LineList) or not node:
        c.problems.add(root.line_of("documents"), "'documents' is a list of documents")
        return ()
    specs = []
    for index, item in enumerate(node):
        where = f"documents[{index + 1}]"
        line = node.line_of(index)
        if not isinstance(item, LineDict):
            c.problems.add(line, f"{where}: a document is a mapping (name, path or attachment)")
            continue
        for key in sorted(set(item) - {"name", "path", "attachment", "required"}):
            c.problems.add(item.line_of(key), f"{where}: unknown key {key!r}")
        if "path" not in item and "attachment" not in item:
            c.problems.add(
                line,
                f"{where}: give path (a file), attachment (a field), or both (the attachment "
                "when the record carries one, else the file)",
            )
            continue
        if "name" not in item:
            c.problems.add(line, f"{where}: 'name' is required (the file name staff see)")
            continue
        name = c.value(item["name"], item.line_of("name"), f"{where}.name", required=True)
        path = (
            c.value(item["path"], item.line_of("path"), f"{where}.path") if "path" in item else None
        )
        attachment = (
            c.value(item["attachment"], item.line_of("attachment"), f"{where}.attachment")
            if "attachment" in item
            else None
        )
        required = item.get("required", True)
        if not isinstance(required, bool):
            c.problems.add(item.line_of("required"), f"{where}: required is true or false")
            required = True
        if name is not None:
            specs.append(DocumentSpec(line, name, path, attachment, required))
    return tuple(specs)


def _parties(c: _Compiler, root: LineDict) -> tuple[PartySpec, ...]:
    node = root.get("parties")
    if node is None:
        c.problems.add(root.line, "'parties' is missing: who signs, in which order?")
        return ()
    if not isinstance(node, LineList) or not node:
        c.problems.add(root.line_of("parties"), "'parties' is a list in routing order")
        return ()
    specs = []
    for index, item in enumerate(node):
        where = f"parties[{index + 1}]"
        line = node.line_of(index)
        if not isinstance(item, LineDict):
            c.problems.add(line, f"{where}: a party is a mapping (role, from, name, email)")
            continue
        allowed = {"role", "from", "name", "email", "company", "title", "staff"}
        for key in sorted(set(item) - allowed):
            c.problems.add(item.line_of(key), f"{where}: unknown key {key!r}")
        role = item.get("role")
        if role not in PARTY_ROLES:
            c.problems.add(
                item.line_of("role"), f"{where}: role is one of {', '.join(PARTY_ROLES)}"
            )
            continue
        origin = item.get("from", "fixed")
        if origin not in PARTY_FROM:
            c.problems.add(item.line_of("from"), f"{where}: from is one of {', '.join(PARTY_FROM)}")
            continue
        if origin == "contractor" and ({"name", "email", "title"} & set(item)):
            # The signer named by the mapping, used where `signer:` says `mapping`.
            for key in sorted({"company"} & set(item)):
                c.problems.add(item.line_of(key), f"{where}: the company is the contractor's name")
            if "email" not in item:
                c.problems.add(line, f"{where}: a contractor signer from the mapping needs email")
                continue
            specs.append(
                PartySpec(
                    line, role, origin,
                    name=c.value(item["name"], item.line_of("name"), f"{where}.name")
                    if "name" in item else None,
                    email=c.value(item["email"], item.line_of("email"), f"{where}.email"),
                    title=c.value(item["title"], item.line_of("title"), f"{where}.title")
                    if "title" in item else None,
                )
            )  # fmt: skip
            continue
        staff = item.get("staff", False)
        if not isinstance(staff, bool):
            c.problems.add(item.line_of("staff"), f"{where}: staff is true or false")
            staff = False
        if origin != "fixed":
            extra = {"name", "email", "company", "title", "staff"} & set(item)
            for key in sorted(extra):
                c.problems.add(
                    item.line_of(key), f"{where}: {key} comes from the {origin}, not the mapping"
                )
            specs.append(PartySpec(line, role, origin))
            continue
        if "name" not in item or "email" not in item:
            c.problems.add(line, f"{where}: a fixed party needs name and email")
            continue

        def value(key: str, where: str = where, item: LineDict = item) -> Value | None:
            if key not in item:
                return None
            return c.value(item[key], item.line_of(key), f"{where}.{key}", required=key != "title")

        specs.append(
            PartySpec(line, role, origin, value("name"), value("email"), value("company"),
                      value("title"), staff)
        )  # fmt: skip
    if specs and not any(s.role in ("approver", "signer") for s in specs):
        c.problems.add(node.line, "parties: at least one approver or signer is needed")
    return tuple(specs)


def _fields(
    c: _Compiler, root: LineDict, documents: int, parties: Sequence[PartySpec]
) -> tuple[FieldDraft, ...]:
    node = root.get("fields")
    if node is None:
        return ()
    if not isinstance(node, LineList):
        c.problems.add(root.line_of("fields"), "'fields' is a list of text boxes")
        return ()
    result = []
    keys = {"document", "party", "label", "page", "rect", "required", "max_length"}
    for index, item in enumerate(node):
        where = f"fields[{index + 1}]"
        line = node.line_of(index)
        if not isinstance(item, LineDict):
            c.problems.add(line, f"{where}: a field is a mapping")
            continue
        for key in sorted(set(item) - keys):
            c.problems.add(item.line_of(key), f"{where}: unknown key {key!r}")
        ok = True

        def whole(
            key: str, low: int, high: int | None, item: LineDict = item, where: str = where
        ) -> int:
            nonlocal ok
            value = item.get(key)
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < low
                or (high is not None and value > high)
            ):
                rng = f"{low}..{high}" if high is not None else f">= {low}"
                c.problems.add(item.line_of(key), f"{where}: {key} is a whole number {rng}")
                ok = False
                return 0
            return value

        doc = whole("document", 1, documents)
        party = whole("party", 1, len(parties))
        page = whole("page", 1, None)
        max_length = whole("max_length", *MAX_LENGTH) if "max_length" in item else 200
        label = item.get("label")
        if not isinstance(label, str) or not label.strip():
            c.problems.add(item.line_of("label"), f"{where}: label is the box's name (text)")
            ok = False
        rect = item.get("rect")
        if not (
            isinstance(rect, LineList)
            and len(rect) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in rect)
            and rect[2] > rect[0]
            and rect[3] > rect[1]
        ):
            c.problems.add(item.line_of("rect"), f"{where}: rect is [x1, y1, x2, y2] in points")
            ok = False
        if ok:
            # The rule the API and the compose page obey; the page itself is known only when
            # the envelope is made (a box off its page is refused then, by the same rule).
            assert isinstance(rect, list) and isinstance(label, str)
            problem = shape_problem(
                label=label.strip(),
                rect=(float(rect[0]), float(rect[1]), float(rect[2]), float(rect[3])),
                max_length=max_length,
            )
            if problem is not None:
                key = next((k for k in ("label", "max_length") if k in problem[0]), "rect")
                c.problems.add(item.line_of(key), f"{where}: {problem[0]}")
                ok = False
        required = item.get("required", True)
        if not isinstance(required, bool):
            c.problems.add(item.line_of("required"), f"{where}: required is true or false")
            ok = False
        if ok and parties[party - 1].role == "cc":
            c.problems.add(item.line_of("party"), f"{where}: a cc party fills no fields")
            ok = False
        if ok:
            assert isinstance(rect, list) and isinstance(label, str)
            result.append(
                FieldDraft(
                    document=doc - 1,
                    party=party - 1,
                    label=label.strip(),
                    page=page,
                    rect=(float(rect[0]), float(rect[1]), float(rect[2]), float(rect[3])),
                    required=bool(required),
                    max_length=max_length,
                )
            )
    return tuple(result)


def _signer(c: _Compiler, root: LineDict, parties: Sequence[PartySpec]) -> dict[str, str]:
    """``signer:``: where the contractor's signer comes from, per contract type. Construction
    contracts always take it from the usage request (建設業法19条3項: the prior consent)."""
    chosen = {"construction": "usage_request", "other": "usage_request"}
    node = root.get("signer")
    if node is None:
        return chosen
    if not isinstance(node, LineDict):
        c.problems.add(root.line_of("signer"), "signer maps contract types to signer sources")
        return chosen
    for key in node:
        line = node.line_of(key)
        if key not in CONTRACT_TYPES:
            c.problems.add(line, f"signer: unknown contract type {key!r} (construction, other)")
            continue
        value = node[key]
        if value not in SIGNER_SOURCES:
            c.problems.add(line, f"signer.{key} is one of {', '.join(SIGNER_SOURCES)}")
            continue
        if key == "construction" and value != "usage_request":
            c.problems.add(
                line,
                "signer.construction must be usage_request: a construction contract needs the "
                "contractor's prior consent (建設業法19条3項)",
            )
            continue
        chosen[key] = value
    contractor_parties = [p for p in parties if p.origin == "contractor"]
    if "mapping" in chosen.values() and any(p.email is None for p in contractor_parties):
        c.problems.add(
            root.line_of("signer"),
            "signer: mapping needs name and email on each `from: contractor` party",
        )
    if "mapping" not in chosen.values():
        for party in contractor_parties:
            if party.email is not None:
                c.problems.add(
                    party.line,
                    "a contractor party's name/email are used only with `signer: {other: mapping}`",
                )
    return chosen


def _vars(c: _Compiler, root: LineDict) -> dict[str, Value]:
    node = root.get("vars")
    if node is None:
        return {}
    if not isinstance(node, LineDict):
        c.problems.add(root.line_of("vars"), "'vars' maps names to value specs")
        return {}
    result = {}
    for name, spec in node.items():
        value = c.value(spec, node.line_of(name), f"vars.{name}")
        if value is not None:
            result[name] = value
    return result


def _skips(c: _Compiler, root: LineDict) -> tuple[Condition, ...]:
    node = root.get("skip")
    if node is None:
        return ()
    if not isinstance(node, LineList):
        c.problems.add(root.line_of("skip"), "'skip' is a list of conditions")
        return ()
    conditions = []
    for index, item in enumerate(node):
        condition = _compile_condition(c, item, node.line_of(index), f"skip[{index + 1}]")
        if condition is not None:
            conditions.append(condition)
    return tuple(conditions)


def _expand_columns(names: Iterable[str], vars_: Mapping[str, Value]) -> set[str]:
    found: set[str] = set()
    pending = list(names)
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in vars_:
            pending.extend(vars_[name].columns)
        else:
            found.add(name)
    return found


def _conditions(conditions: Iterable[Condition]) -> Iterator[Value]:
    for condition in conditions:
        if condition.subject is not None:
            yield condition.subject
        yield from _conditions(condition.children)


def _check_declared_columns(
    problems: _Problems,
    columns: Sequence[str],
    vars_: Mapping[str, Value],
    targets: Mapping[str, Target],
    documents: Sequence[DocumentSpec],
    parties: Sequence[PartySpec],
    skip: Sequence[Condition],
) -> None:
    """With ``format.columns`` declared, a column position beyond them or a name not among
    them is a mistake in the mapping: one problem at its line, not one line error per record.
    (``first_of`` options are exempt: a missing column there means "try the next".)"""
    values: list[Value] = [*vars_.values(), *(t.value for t in targets.values())]
    for doc in documents:
        values += [v for v in (doc.name, doc.path, doc.attachment) if v is not None]
    for party in parties:
        values += [
            v for v in (party.name, party.email, party.company, party.title) if v is not None
        ]
    values += _conditions(skip)
    declared = set(columns)
    for value in values:
        if value.kind == "first_of":
            continue
        for ref in sorted(value.columns):
            if ref in vars_ or ref in declared or ref == "value":
                continue
            if ref.isdigit():
                if int(ref) > len(columns):
                    problems.add(
                        value.line,
                        f"column {ref} is out of range: format.columns declares {len(columns)}",
                    )
            else:
                problems.add(value.line, f"no column {ref!r} among format.columns")


def load_mapping(text: str, *, name: str = "mapping.yaml") -> SourceMapping:
    """Parse and check a mapping; raise :class:`MappingSpecError` listing every problem with
    its line."""
    problems = _Problems()
    try:
        root = load_yaml(text)
    except YamlProblem as exc:
        problems.add(exc.line, f"not valid YAML: {exc.message}")
        _raise(name, problems)
    if not isinstance(root, LineDict):
        problems.add(1, "a mapping file is a YAML mapping (format:, award:, ...)")
        _raise(name, problems)
    version = root.get("version", 1)
    if version != 1:
        problems.add(root.line_of("version"), "version must be 1")
    kind = root.get("kind", "awards")
    if kind not in KINDS:
        problems.add(root.line_of("kind"), f"kind is one of {', '.join(KINDS)}")
        _raise(name, problems)
    for key in sorted(set(root) - TOP_KEYS[kind]):
        problems.add(
            root.line_of(key),
            f"unknown key {key!r} for kind {kind} (known: {', '.join(sorted(TOP_KEYS[kind]))})",
        )
    lookups_compiler = _Compiler(problems, {})
    lookups = _lookups(lookups_compiler, root)
    c = _Compiler(problems, lookups)
    fmt = _format(c, root)
    vars_ = _vars(c, root)
    skip = _skips(c, root)
    targets: dict[str, Target] = {}
    contractor_keys = CONTRACTOR_KEYS if kind == "contractors" else CONTRACTOR_KEYS - {"emails"}
    contractor_targets = _section(
        c, root, "contractor", contractor_keys, _CONTRACTOR_TYPES, set(), prefix="contractor."
    )
    if "contractor" not in root:
        problems.add(root.line, "'contractor' is missing (name, corporate_number, registry_code)")
    if "contractor.emails" in contractor_targets:
        # The draft reads the addresses as ``emails``: the target's own name must say so too.
        emails = contractor_targets.pop("contractor.emails")
        contractor_targets["emails"] = dataclasses.replace(emails, name="emails")
    documents: tuple[DocumentSpec, ...] = ()
    parties: tuple[PartySpec, ...] = ()
    fields: tuple[FieldDraft, ...] = ()
    signer: dict[str, str] = {}
    if kind == "awards":
        targets.update(_section(c, root, "award", AWARD_KEYS, _AWARD_TYPES, _REQUIRED["awards"]))
        documents = _documents(c, root)
        parties = _parties(c, root)
        fields = _fields(c, root, len(documents), parties)
        signer = _signer(c, root, parties)
    elif kind == "usage_requests":
        targets.update(
            _section(c, root, "usage_request", USAGE_KEYS, _USAGE_TYPES, _REQUIRED[kind])
        )
    targets.update(contractor_targets)
    for var_name, var in vars_.items():
        if var_name in var.columns and var.kind == "var":
            problems.add(var.line, f"vars.{var_name} refers to itself")
    if "columns" in fmt:
        _check_declared_columns(problems, fmt["columns"], vars_, targets, documents, parties, skip)
    if problems.items:
        _raise(name, problems)
    sensitive: frozenset[str] = frozenset()
    if "access_code" in targets:
        sensitive = frozenset(_expand_columns(targets["access_code"].value.columns, vars_))
    return SourceMapping(
        name=name,
        kind=kind,
        format=fmt,
        lookups=lookups,
        vars=vars_,
        skip=skip,
        targets=targets,
        documents=documents,
        parties=parties,
        fields=fields,
        sensitive_columns=sensitive,
        signer=signer,
    )


def _raise(name: str, problems: _Problems) -> Any:
    items = sorted(problems.items, key=lambda p: p.line)
    lines = [f"{name}:{p.line}: {p.message}" for p in items]
    raise MappingSpecError(
        "mapping.invalid",
        f"{name}: {len(items)} problem(s): " + "; ".join(lines),
        f"マッピング定義 {name} に誤りがあります({len(items)}件): " + "; ".join(lines),
        details={
            "file": name,
            "problems": lines,
            "lines": [{"line": p.line, "message": p.message} for p in items],
        },
    )


def redact(fields: Mapping[str, Any], sensitive: Iterable[str]) -> dict[str, Any]:
    """The record's fields as JSON-ready text, with secret columns (access codes) masked."""
    hidden = set(sensitive)
    out: dict[str, Any] = {}
    for position, (key, value) in enumerate(fields.items(), start=1):
        if key in hidden or str(position) in hidden:
            out[key] = "****"
        elif isinstance(value, bytes):
            # Kept whole (as base64, which mappings read as an attachment) so a dead letter can
            # be replayed with its document.
            out[key] = base64.b64encode(value).decode("ascii")
        elif isinstance(value, str | int | float | bool) or value is None:
            out[key] = value
        else:
            out[key] = str(value)
    return out
