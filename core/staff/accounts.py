"""Staff: records, passwords (argon2id), login with lockout and optional TOTP, and CSV import.

Failed logins are counted in the database (``staff.failed_logins``) so the limit holds across
processes and nodes; each attempt reserves its count before the password is checked
(:mod:`core.staff.attempts`), so parallel guesses cannot exceed the limit. A TOTP code is good once: the accepted time step is stored
(``staff.totp_last_step``) and a code of that step or an older one is refused (RFC 6238 5.2).

The import is planned first (:func:`plan_import`, which writes nothing) and applied after
(:func:`apply_import`): a plan with line errors is applied only when the caller asks to skip bad
lines, so a file is never half applied by accident.
"""

from __future__ import annotations

import csv
import datetime as dt
import hmac
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from zxcvbn import zxcvbn

from core.errors import AuthError, StaffError
from core.model import Staff, StaffRole, VisibilityScope, utcnow
from core.records.audit import record_event
from core.staff.attempts import (
    AttemptCounter,
    lock_counter,
    lock_if_over_limit,
    reserve_attempt,
    settle_success,
)
from core.staff.sessions import end_staff_sessions
from core.text import has_no_controls, one_line, printable

__all__ = [
    "MAX_IMPORT_BYTES",
    "ImportPlan",
    "LoginOutcome",
    "PasswordPolicy",
    "StaffLine",
    "add_staff",
    "apply_import",
    "authenticate",
    "check_department",
    "check_email",
    "check_name",
    "check_password",
    "decode_import",
    "disable_totp",
    "enable_totp",
    "get_staff",
    "hash_password",
    "import_columns",
    "list_staff",
    "parse_roles",
    "parse_scope",
    "plan_import",
    "read_import_rows",
    "refuse_bad_lines",
    "roles_ja",
    "scope_ja",
    "set_password",
    "update_staff",
]

# argon2-cffi's defaults are argon2id with the RFC 9106 "low memory" parameters.
_HASHER = PasswordHasher()
# Verified against when the e-mail is unknown, so both answers take the same time.
_DUMMY_HASH = _HASHER.hash("keiyaku-gateway dummy password")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class PasswordPolicy:
    """What a staff password must look like and how failures are limited."""

    min_length: int = 12
    # Three of: lower case, upper case, digit, symbol; a passphrase this long needs none.
    passphrase_length: int = 20
    max_failures: int = 5
    lockout: dt.timedelta = dt.timedelta(minutes=15)
    # zxcvbn's score (0-4) a password needs: 3 is "safely unguessable" against an online
    # attack that gets past the lockout, and refuses Password123! and its kind.
    min_score: int = 3


def check_password(password: str, *, policy: PasswordPolicy, email: str = "") -> None:
    """Refuse a password the policy does not allow (raises ``staff.weak_password``)."""
    problems: list[str] = []
    if len(password) < policy.min_length:
        problems.append(f"shorter than {policy.min_length} characters")
    if len(password) > 256:
        problems.append("longer than 256 characters")
    classes = sum(
        bool(re.search(pattern, password))
        for pattern in (r"[a-z]", r"[A-Z]", r"[0-9]", r"[^a-zA-Z0-9]")
    )
    if len(password) < policy.passphrase_length and classes < 3:
        problems.append("needs three of: lower case, upper case, digit, symbol")
    local = email.split("@", 1)[0].lower()
    if len(local) >= 3 and local in password.lower():
        problems.append("contains the e-mail address")
    common = False
    if not problems and policy.min_score > 0:
        # zxcvbn: dictionaries of common passwords, names and words, keyboard patterns, dates,
        # l33t substitutions; the e-mail address counts as known to the attacker.
        estimate = zxcvbn(password[:100], user_inputs=[email, local, *email.split("@")[1:]])
        if estimate["score"] < policy.min_score:
            common = True
            problems.append(
                f"too easy to guess (strength {estimate['score']} of 4, at least "
                f"{policy.min_score} needed)"
            )
    if problems:
        message_ja = (
            "このパスワードは推測されやすいため使用できません。よく使われる語句や"
            "単純な並び(Password123! など)を避け、長めのパスワードにしてください。"
            if common
            else f"パスワードは{policy.min_length}文字以上で、英大文字・英小文字・数字・記号の"
            "うち3種類以上を含め、メールアドレスを含めないでください。"
        )
        raise StaffError(
            "staff.weak_password",
            "the password does not meet the policy: " + "; ".join(problems),
            message_ja,
            details={"problems": problems},
        )


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _HASHER.hash(password)


def set_password(
    *, session: Session, staff: Staff, password: str, policy: PasswordPolicy, actor: str
) -> None:
    """Check ``password`` against the policy and store its hash; clears any lockout and ends
    every session of the staff member. ``actor`` is who set it (an admin, the CLI's user)."""
    check_password(password, policy=policy, email=staff.email)
    staff.password_hash = hash_password(password)
    staff.failed_logins = 0
    staff.locked_until = None
    record_event(
        session=session, action="staff.password_set", actor=actor, detail={"email": staff.email}
    )
    end_staff_sessions(session=session, staff=staff, actor=actor)


def enable_totp(*, session: Session, staff: Staff, issuer: str, actor: str) -> str:
    """Give the staff member a new TOTP secret; returns the otpauth:// URI for their app."""
    secret = pyotp.random_base32()
    staff.totp_secret = secret
    record_event(
        session=session, action="staff.totp_enabled", actor=actor, detail={"email": staff.email}
    )
    return pyotp.TOTP(secret).provisioning_uri(name=staff.email, issuer_name=issuer)


def disable_totp(*, session: Session, staff: Staff, actor: str) -> None:
    """Remove the staff member's TOTP second factor (e.g. a lost phone)."""
    staff.totp_secret = None
    record_event(
        session=session, action="staff.totp_disabled", actor=actor, detail={"email": staff.email}
    )


@dataclass
class LoginOutcome:
    """The result of :func:`authenticate`: ``staff`` on success, else ``error``.

    It is returned rather than raised so the caller commits the failure count either way.
    """

    staff: Staff | None = None
    error: AuthError | None = None


def _failed() -> AuthError:
    return AuthError(
        "auth.login_failed",
        "wrong e-mail address, password or one-time code",
        "メールアドレス、パスワードまたは確認コードが正しくありません。",
    )


def _code_reused() -> AuthError:
    return AuthError(
        "auth.totp_reused",
        "this one-time code was used already; wait for the next one",
        "この確認コードは使用済みです。認証アプリに次のコードが表示されてから入力してください。",
    )


def _totp_step(secret: str, code: str, now: dt.datetime) -> int | None:
    """The time step ``code`` belongs to, within one step of ``now`` (clock drift), or None."""
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in (current + 1, current, current - 1):
        if hmac.compare_digest(code.encode(), totp.generate_otp(step).encode()):
            return step
    return None


def _claim_totp_step(session: Session, staff: Staff, step: int) -> bool:
    # One conditional UPDATE: of two logins with the same code, only one can move the step on
    # (the other waits for the row and then finds it already there).
    result = session.execute(
        update(Staff)
        .where(
            Staff.id == staff.id,
            or_(Staff.totp_last_step.is_(None), Staff.totp_last_step < step),
        )
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    set_committed_value(staff, "totp_last_step", step)
    return True


def _dummy_verify(password: str) -> None:
    # The same argon2 work as a real check, so no answer is faster than another.
    try:
        _HASHER.verify(_DUMMY_HASH, password + "x")
    except VerificationError:
        pass


def _login_counter(staff_id: str, policy: PasswordPolicy, now: dt.datetime) -> AttemptCounter:
    return AttemptCounter(
        where=Staff.id == staff_id,
        count=Staff.failed_logins,
        open=Staff.locked_until.is_(None) | (Staff.locked_until <= now),
        limit=policy.max_failures,
    )


def authenticate(
    *,
    session: Session,
    email: str,
    password: str,
    policy: PasswordPolicy,
    totp_code: str | None = None,
    ip: str | None = None,
    now: dt.datetime | None = None,
) -> LoginOutcome:
    """Check a login (password, then the TOTP code when enrolled).

    Each attempt first reserves one of ``policy.max_failures`` attempts in the database
    (:mod:`core.staff.attempts`) and commits it, then checks; the failure that uses the last one locks
    the account for ``policy.lockout``. A locked, unknown or disabled account answers exactly
    like a wrong password (``auth.login_failed``, after the same hashing work), so the answer
    does not tell which accounts exist or are locked; the audit log says which it was.
    Commits; commit the session again after using the outcome.
    """
    now = now or utcnow()
    email = email.strip().lower()
    staff = None
    if has_no_controls(email) and has_no_controls(password) and len(email) <= 320:
        staff = session.scalars(select(Staff).where(Staff.email == email)).one_or_none()
    if staff is None or staff.disabled or staff.password_hash is None:
        _dummy_verify(password)
        record_event(session=session, action="login.failed", actor=printable(email[:320]), ip=ip)
        return LoginOutcome(error=_failed())
    counter = _login_counter(staff.id, policy, now)
    reserved = reserve_attempt(session=session, counter=counter)
    if reserved is None:
        # Locked; or over a limit lowered since its failures were counted, with no lock that
        # could expire: then locked now.
        lock_if_over_limit(
            session=session,
            counter=counter,
            values={Staff.locked_until: now + policy.lockout, Staff.failed_logins: 0},
        )
    session.commit()
    if reserved is None:
        _dummy_verify(password)
        record_event(session=session, action="login.locked", actor=email, ip=ip)
        return LoginOutcome(error=_failed())
    session.refresh(staff)
    try:
        good: bool = _HASHER.verify(staff.password_hash or "", password)
    except (VerifyMismatchError, InvalidHashError, VerificationError):
        good = False
    error, action = _failed(), "login.failed"
    if good and staff.totp_secret:
        step = _totp_step(staff.totp_secret, (totp_code or "").strip(), now)
        good = step is not None and _claim_totp_step(session, staff, step)
        if step is not None and not good:
            error, action = _code_reused(), "login.totp_reused"
    if not good:
        if reserved >= policy.max_failures and lock_counter(
            session=session,
            counter=counter,
            values={Staff.locked_until: now + policy.lockout, Staff.failed_logins: 0},
        ):
            record_event(
                session=session,
                action="login.lockout",
                actor=email,
                ip=ip,
                detail={"failures": reserved},
            )
        record_event(
            session=session, action=action, actor=email, ip=ip, detail={"attempt": reserved}
        )
        return LoginOutcome(error=error)
    # Clear the count, unless a parallel wrong guess locked the account meanwhile: then this
    # login is refused and the lock stays.
    if not settle_success(session=session, counter=counter, values={Staff.failed_logins: 0}):
        record_event(session=session, action="login.locked", actor=email, ip=ip)
        return LoginOutcome(error=_failed())
    session.refresh(staff)
    if _HASHER.check_needs_rehash(staff.password_hash or ""):
        staff.password_hash = hash_password(password)
    record_event(session=session, action="login", actor=email, ip=ip)
    return LoginOutcome(staff=staff)


# --- records -----------------------------------------------------------------------------------


_ROLE_JA = {StaffRole.SENDER: "送信者", StaffRole.SIGNER: "署名者", StaffRole.ADMIN: "管理者"}
_SCOPE_JA = {
    VisibilityScope.OWN: "本人",
    VisibilityScope.DEPARTMENT: "所属",
    VisibilityScope.ALL: "全体",
}


def roles_ja(roles: str) -> str:
    """A stored role list ("admin,sender") as staff read it: 送信者・管理者, in a fixed order;
    a name that is not a role stays as it is (never hidden)."""
    names = {p.strip() for p in re.split(r"[;,|/\s]+", roles) if p.strip()}
    known = [ja for role, ja in _ROLE_JA.items() if role.value in names]
    unknown = sorted(names - {r.value for r in StaffRole})
    return "・".join([*known, *unknown])


def scope_ja(scope: VisibilityScope | str) -> str:
    """A visibility scope as staff read it (本人, 所属, 全体)."""
    try:
        return _SCOPE_JA[VisibilityScope(scope)]
    except ValueError:
        return str(scope)


def parse_roles(text: str) -> str:
    """Normalise a role list ("admin; sender", "sender|signer") to the stored form."""
    names = {p.strip().lower() for p in re.split(r"[;,|/\s]+", text) if p.strip()}
    unknown = names - {r.value for r in StaffRole}
    if unknown:
        raise StaffError(
            "staff.unknown_role",
            f"unknown role(s): {', '.join(sorted(unknown))} (admin, sender, signer)",
            "権限は admin, sender, signer のいずれかで指定してください。",
        )
    return ",".join(sorted(names))


_SCOPE_ALIASES = {
    "本人": "own",
    "自分": "own",
    "所属": "department",
    "部署": "department",
    "全体": "all",
    "全て": "all",
    "すべて": "all",
}


def parse_scope(text: str) -> VisibilityScope:
    """A visibility scope from its English name or a Japanese alias (本人, 部署, 全体)."""
    value = _SCOPE_ALIASES.get(text.strip(), text.strip().lower())
    try:
        return VisibilityScope(value)
    except ValueError as exc:
        raise StaffError(
            "staff.unknown_scope",
            f"unknown visibility scope {text!r} (own, department, all)",
            "閲覧範囲は own, department, all のいずれかで指定してください。",
        ) from exc


def check_email(email: str) -> str:
    """The address lower-cased and stripped, or ``staff.bad_email``."""
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320 or not has_no_controls(email):
        raise StaffError(
            "staff.bad_email",
            f"not an e-mail address: {printable(email)!r}",
            "メールアドレスの形式が正しくありません。",
        )
    return email


def check_name(name: str) -> str:
    """The name on one line, stripped (1 to 200 characters), or ``staff.bad_name``
    (``text.control_character`` for a control character other than a line break)."""
    name = one_line(name, field="name", label_ja="氏名", error=StaffError)
    if not name or len(name) > 200:
        raise StaffError(
            "staff.bad_name",
            "a name of 1 to 200 characters is required",
            "氏名を200文字以内で入力してください。",
        )
    return name


def check_department(department: str | None) -> str | None:
    """The department on one line, stripped (None when empty), or ``staff.bad_department``."""
    text = one_line(department or "", field="department", label_ja="所属", error=StaffError)
    if len(text) > 200:
        raise StaffError(
            "staff.bad_department",
            "a department of at most 200 characters",
            "所属は200文字以内で入力してください。",
        )
    return text or None


def add_staff(
    *,
    session: Session,
    name: str,
    email: str,
    roles: str,
    scope: VisibilityScope | str,
    department: str | None = None,
    actor: str,
) -> Staff:
    """Add one staff member (no password yet: set one with :func:`set_password`)."""
    email = check_email(email)
    if session.scalars(select(Staff.id).where(Staff.email == email)).first() is not None:
        raise StaffError(
            "staff.exists",
            f"a staff member with e-mail {email} exists",
            "このメールアドレスの職員は登録済みです。",
        )
    staff = Staff(
        name=check_name(name),
        email=email,
        department=check_department(department),
        roles=parse_roles(roles),
        scope=scope if isinstance(scope, VisibilityScope) else parse_scope(scope),
        disabled=False,
        failed_logins=0,
    )
    session.add(staff)
    record_event(session=session, action="staff.add", actor=actor, detail={"email": email})
    return staff


def update_staff(*, session: Session, staff: Staff, actor: str, **changes: Any) -> dict[str, Any]:
    """Change some of name, department, roles, scope, disabled; returns what changed.
    Disabling a staff member ends their sessions."""
    wanted = _normalise(changes)
    changed = {k: v for k, v in wanted.items() if getattr(staff, k) != v}
    for key, value in changed.items():
        setattr(staff, key, value)
    if changed:
        record_event(
            session=session,
            action="staff.update",
            actor=actor,
            detail={"email": staff.email, "changed": sorted(changed)},
        )
    if changed.get("disabled"):
        end_staff_sessions(session=session, staff=staff, actor=actor)
    return changed


def get_staff(*, session: Session, email: str) -> Staff:
    """One staff member by e-mail address."""
    staff = session.scalars(select(Staff).where(Staff.email == email.strip().lower())).first()
    if staff is None:
        raise StaffError(
            "staff.not_found",
            f"no staff member with e-mail {email}",
            "該当する職員が見つかりません。",
        )
    return staff


def list_staff(*, session: Session) -> Sequence[Staff]:
    """Every staff member, by department and name."""
    return session.scalars(select(Staff).order_by(Staff.department, Staff.name)).all()


def _normalise(changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            continue
        if key == "name":
            out[key] = check_name(value)
        elif key == "department":
            out[key] = check_department(value)
        elif key == "roles":
            out[key] = parse_roles(value)
        elif key == "scope":
            out[key] = value if isinstance(value, VisibilityScope) else parse_scope(value)
        elif key == "disabled":
            out[key] = bool(value)
        else:
            raise ValueError(f"not a changeable staff field: {key}")
    return out


# --- import ------------------------------------------------------------------------------------

_HEADERS = {
    "name": "name",
    "氏名": "name",
    "名前": "name",
    "department": "department",
    "所属": "department",
    "部署": "department",
    "email": "email",
    "e-mail": "email",
    "mail": "email",
    "メールアドレス": "email",
    "roles": "roles",
    "role": "roles",
    "権限": "roles",
    "scope": "scope",
    "閲覧範囲": "scope",
    "disabled": "disabled",
    "無効": "disabled",
}
_REQUIRED = ("name", "email", "roles", "scope")
MAX_IMPORT_BYTES = 1024 * 1024


@dataclass
class StaffLine:
    """One good line of an import file."""

    line: int
    values: dict[str, Any]


@dataclass
class ImportPlan:
    """What an import would do: the diff a dry run prints, and what :func:`apply_import` does."""

    created: list[dict[str, Any]] = field(default_factory=list)
    updated: list[dict[str, Any]] = field(default_factory=list)
    disabled: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data."""
        return {
            "created": self.created,
            "updated": self.updated,
            "disabled": self.disabled,
            "unchanged": self.unchanged,
            "errors": self.errors,
        }


def decode_import(data: bytes) -> str:
    """The text of an import file in UTF-8 (with or without BOM) or CP932 (Excel's Shift_JIS)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp932")
    except UnicodeDecodeError as exc:
        raise StaffError(
            "staff.import_encoding",
            "the file is neither UTF-8 nor CP932",
            "ファイルの文字コードは UTF-8 または Shift_JIS (CP932) にしてください。",
        ) from exc


def read_import_rows(data: bytes) -> list[list[str]]:
    """The rows of a CSV import file (at most 1 MB, UTF-8 or CP932, not empty)."""
    if len(data) > MAX_IMPORT_BYTES:
        raise StaffError(
            "staff.import_size",
            "the import file is larger than 1 MB",
            "ファイルが1MBを超えています。",
        )
    try:
        rows = list(csv.reader(io.StringIO(decode_import(data), newline="")))
    except csv.Error as exc:  # e.g. a field longer than the csv module's limit
        raise StaffError(
            "staff.import_unreadable",
            f"the file is not readable as CSV: {exc}",
            "ファイルをCSVとして読み取れません。",
        ) from exc
    if not rows:
        raise StaffError("staff.import_empty", "the file is empty", "ファイルが空です。")
    return rows


def import_columns(
    rows: list[list[str]],
    *,
    headers: dict[str, str],
    required: tuple[str, ...],
    code: str,
    message_ja: str,
) -> list[str]:
    """The field each column of an import file holds, from its header line (matched without
    case; "" for a column nobody reads); refuses a header that lacks a required field."""
    columns = [headers.get(h.strip().lower(), headers.get(h.strip(), "")) for h in rows[0]]
    missing = [c for c in required if c not in columns]
    if missing:
        raise StaffError(
            code,
            f"the header lacks column(s): {', '.join(missing)}",
            message_ja,
            details={"problems": [f"missing column {c}" for c in missing]},
        )
    return columns


def _truthy(text: str) -> bool:
    return text.strip().lower() in {"1", "true", "yes", "y", "無効", "はい"}


def plan_import(
    *, session: Session, data: bytes, disable_missing: bool = False
) -> tuple[ImportPlan, list[StaffLine]]:
    """Read an import file and compare it with the stored staff; writes nothing."""
    rows = read_import_rows(data)
    plan = ImportPlan()
    columns = import_columns(
        rows,
        headers=_HEADERS,
        required=_REQUIRED,
        code="staff.import_header",
        message_ja="1行目に name, department, email, roles, scope の見出しが必要です。",
    )
    existing = {s.email: s for s in session.scalars(select(Staff)).all()}
    seen: dict[str, int] = {}
    good: list[StaffLine] = []
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        raw = {c: (row[i] if i < len(row) else "") for i, c in enumerate(columns) if c}
        try:
            values: dict[str, Any] = {
                "email": check_email(raw["email"]),
                "name": check_name(raw["name"]),
                "department": check_department(raw.get("department")),
                "roles": parse_roles(raw["roles"]),
                "scope": parse_scope(raw["scope"]),
                "disabled": _truthy(raw.get("disabled", "")),
            }
        except StaffError as exc:
            plan.errors.append({"line": number, "code": exc.code, "message": exc.message_en})
            continue
        if values["email"] in seen:
            plan.errors.append(
                {
                    "line": number,
                    "code": "staff.import_duplicate",
                    "message": f"{values['email']} is also on line {seen[values['email']]}",
                }
            )
            continue
        seen[values["email"]] = number
        good.append(StaffLine(number, values))
        current = existing.get(values["email"])
        if current is None:
            plan.created.append({"line": number, **_jsonable(values)})
            continue
        changes = {
            k: {"from": _jsonable({k: getattr(current, k)})[k], "to": _jsonable({k: v})[k]}
            for k, v in values.items()
            if k != "email" and getattr(current, k) != v
        }
        if changes:
            plan.updated.append({"line": number, "email": values["email"], "changes": changes})
        else:
            plan.unchanged += 1
    if disable_missing:
        for email, current in sorted(existing.items()):
            if email not in seen and not current.disabled:
                plan.disabled.append({"email": email, "name": current.name})
    return plan, good


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, VisibilityScope) else v) for k, v in values.items()}


def refuse_bad_lines(plan: ImportPlan) -> None:
    """Raise ``staff.import_invalid`` (with every bad line) when the plan has line errors."""
    if plan.errors:
        raise StaffError(
            "staff.import_invalid",
            f"{len(plan.errors)} bad line(s); nothing was imported",
            "誤りのある行があるため、取り込みませんでした。",
            details={
                "problems": [f"line {e['line']}: {e['message']}" for e in plan.errors],
                "errors": plan.errors,
            },
        )


def apply_import(
    *,
    session: Session,
    plan: ImportPlan,
    lines: Sequence[StaffLine],
    actor: str,
    skip_bad_lines: bool = False,
    ip: str | None = None,
) -> None:
    """Apply a plan from :func:`plan_import`; refuses one with line errors unless told to skip
    them (then only the good lines are applied). Staff it disables lose their sessions."""
    if not skip_bad_lines:
        refuse_bad_lines(plan)
    existing = {s.email: s for s in session.scalars(select(Staff)).all()}
    disabled: list[Staff] = []
    for item in lines:
        values = item.values
        current = existing.get(values["email"])
        if current is None:
            session.add(Staff(**values, failed_logins=0))
        else:
            if values["disabled"] and not current.disabled:
                disabled.append(current)
            for key, value in values.items():
                setattr(current, key, value)
    for entry in plan.disabled:
        existing[entry["email"]].disabled = True
        disabled.append(existing[entry["email"]])
    for staff in disabled:
        end_staff_sessions(session=session, staff=staff, actor=actor, ip=ip)
    record_event(
        session=session,
        action="staff.import",
        actor=actor,
        ip=ip,
        detail={
            "created": len(plan.created),
            "updated": len(plan.updated),
            "disabled": len(plan.disabled),
            "skipped_lines": [e["line"] for e in plan.errors],
        },
    )
