"""Mailed links and access codes (アクセスコード): who may open a party's signing pages.

A party opens its pages with two factors: a link token mailed to it (32 random bytes, so 256
bits; only its SHA-256 is stored) and an access code it agreed with the buyer beforehand by
another channel (4 digits by default, as the buyers' usage-request forms ask; longer allowed).
The code is stored as scrypt over an HMAC with a pepper that is not in the database, with a
per-party salt, so a copy of the database alone does not give the codes away; the code itself
is never stored, logged or returned.

Wrong codes are counted on the link row in the database, so every process and node shares the
count. Each check first *reserves* an attempt with a conditional ``UPDATE`` (only while fewer
than the limit are used) and commits, then compares: parallel guesses cannot exceed the limit
(:mod:`core.staff.attempts`, the rule every guessable secret follows).
The attempt that reaches the limit locks the link, records it and tells the sender (observer
event ``party.locked``).

A link is made when its mail is sent (``issue_link``), never earlier, so no raw token waits in
the outbox; a retried mail replaces the link made by the failed try (same ``issued_for``).
Forwarding and resending revoke a party's links.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.envelopes.lifecycle import check_party_can_act, get_party
from core.errors import AuthError, InputError, StateError
from core.model import AccessCode, LinkPurpose, Party, SigningLink, utcnow
from core.records.audit import record_event
from core.runtime import Runtime
from core.staff.attempts import AttemptCounter, lock_counter, reserve_attempt, settle_success
from core.states import PartyRole
from core.text import one_line

__all__ = [
    "AccessCodePolicy",
    "check_access_code",
    "forward_party",
    "hash_token",
    "issue_link",
    "open_link",
    "resend_request",
    "revoke_party_links",
    "set_access_code",
]

_CODE = re.compile(r"^[0-9A-Za-z]+$")
_SCHEME = "scrypt-hmac"


@dataclass(frozen=True)
class AccessCodePolicy:
    """How access codes are checked and stored.

    The scrypt cost is modest on purpose: no work factor protects a 13-bit code offline (10,000
    guesses), so the protection is the pepper kept outside the database plus the online lockout;
    scrypt still slows down any longer code and keeps each hash salted. N=2^10 costs about
    1.5 ms here; 2^12 cost 6 ms per code, a third of an envelope creation's CPU for no gain
    against a 4-digit code. The parameters are stored in each hash, so they can be raised later
    without breaking stored codes.
    """

    pepper: bytes
    min_length: int = 4
    max_length: int = 64
    max_attempts: int = 5
    n: int = 2**10
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if len(self.pepper) < 16:
            raise ValueError("the access-code pepper needs at least 16 bytes")

    def _derive(self, code: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        keyed = hmac.new(self.pepper, code.encode("utf-8"), hashlib.sha256).digest()
        return hashlib.scrypt(keyed, salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32)

    def hash(self, code: str) -> str:
        """A storable hash of ``code``: scheme, parameters, salt and digest."""
        salt = secrets.token_bytes(16)
        digest = self._derive(code, salt, self.n, self.r, self.p)
        return "$".join(
            [
                _SCHEME,
                str(self.n),
                str(self.r),
                str(self.p),
                base64.b64encode(salt).decode(),
                base64.b64encode(digest).decode(),
            ]
        )

    def matches(self, code: str, stored: str) -> bool:
        """True when ``code`` is the one ``stored`` was made from (constant-time compare)."""
        try:
            scheme, n, r, p, salt, digest = stored.split("$")
            if scheme != _SCHEME:
                return False
            expected = base64.b64decode(digest)
            actual = self._derive(code, base64.b64decode(salt), int(n), int(r), int(p))
        except (ValueError, TypeError):
            return False
        return hmac.compare_digest(actual, expected)

    def check_format(self, code: str) -> str:
        """The code, stripped, or ``party.bad_access_code``."""
        code = code.strip()
        if not (self.min_length <= len(code) <= self.max_length) or not _CODE.match(code):
            raise InputError(
                "party.bad_access_code",
                f"an access code is {self.min_length} to {self.max_length} letters or digits",
                f"アクセスコードは{self.min_length}～{self.max_length}桁の半角英数字で指定してください。",
                details={"min_length": self.min_length, "max_length": self.max_length},
            )
        return code


def set_access_code(*, session: Session, party_id: str, code_hash: str) -> None:
    """Store (or replace) a party's access-code hash (made by :meth:`AccessCodePolicy.hash`
    beforehand, so no database lock is held while hashing)."""
    row = session.get(AccessCode, party_id)
    if row is None:
        session.add(AccessCode(party_id=party_id, code_hash=code_hash, set_at=utcnow()))
    else:
        row.code_hash = code_hash
        row.set_at = utcnow()


def hash_token(token: str) -> str:
    """SHA-256 of a link or API token. Tokens carry 256 random bits, so no salt or work factor
    is needed: the hash only keeps a database copy from yielding working tokens."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def issue_link(
    *,
    session: Session,
    envelope_id: str,
    party_id: str | None,
    email: str,
    purpose: LinkPurpose,
    valid_for: dt.timedelta,
    issued_for: str,
    now: dt.datetime | None = None,
) -> tuple[SigningLink, str]:
    """Make a link for one mail; returns the row and the raw token (to put in the mail only).

    An earlier link made for the same ``issued_for`` (a failed try of the same mail) is revoked.
    """
    now = now or utcnow()
    session.execute(
        update(SigningLink)
        .where(SigningLink.issued_for == issued_for, SigningLink.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason="reissued")
        .execution_options(synchronize_session=False)
    )
    token = secrets.token_urlsafe(32)
    link = SigningLink(
        token_hash=hash_token(token),
        purpose=purpose,
        envelope_id=envelope_id,
        party_id=party_id,
        email=email,
        issued_for=issued_for,
        created_at=now,
        expires_at=now + valid_for,
        failed_attempts=0,
    )
    session.add(link)
    session.flush()
    return link, token


def revoke_party_links(*, session: Session, party_id: str, reason: str) -> int:
    """Revoke every live link of a party (signing and download). Returns how many."""
    result = session.execute(
        update(SigningLink)
        .where(SigningLink.party_id == party_id, SigningLink.revoked_at.is_(None))
        .values(revoked_at=utcnow(), revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _link_error(code: str, message_en: str, message_ja: str) -> AuthError:
    return AuthError(code, message_en, message_ja)


def _locked_link() -> AuthError:
    return _link_error(
        "link.locked",
        "this link is locked after too many wrong access codes",
        "アクセスコードの入力誤りが上限に達したため、このURLはロックされました。"
        "送信者に連絡済みです。再送をお待ちください。",
    )


def open_link(
    *, session: Session, token: str, purpose: LinkPurpose, now: dt.datetime | None = None
) -> SigningLink:
    """The live link for ``token``, or an :class:`AuthError`: ``link.not_found`` (unknown, or
    for another purpose), ``link.revoked`` (forwarded or replaced), ``link.expired``,
    ``link.locked``."""
    now = now or utcnow()
    link = session.scalar(
        select(SigningLink)
        .where(SigningLink.token_hash == hash_token(token))
        .execution_options(populate_existing=True)
    )
    if link is None or link.purpose is not purpose:
        raise _link_error(
            "link.not_found",
            "no such link",
            "このURLは無効です。メールに記載されたURLをご確認ください。",
        )
    if link.revoked_at is not None:
        if link.revoked_reason == "forwarded":
            raise _link_error(
                "link.forwarded",
                "this link was forwarded to someone else",
                "この署名依頼は他の方に転送されたため、このURLは使用できません。",
            )
        raise _link_error(
            "link.revoked",
            "this link was replaced by a newer one",
            "このURLは新しいURLに置き換えられました。最新のメールに記載されたURLをご利用ください。",
        )
    if link.expires_at <= now:
        if link.purpose is LinkPurpose.DOWNLOAD:
            raise _link_error(
                "link.expired",
                "the download period of this link has ended",
                "ダウンロードの有効期限が過ぎています。文書が必要な場合は発注者にお問い合わせください。",
            )
        raise _link_error(
            "link.expired",
            "this link has expired",
            "このURLの有効期限が過ぎています。発注者にお問い合わせください。",
        )
    if link.locked_at is not None:
        raise _link_error(
            "link.locked",
            "this link is locked after too many wrong access codes",
            "アクセスコードの入力誤りが上限に達したため、このURLはロックされました。"
            "送信者に連絡済みです。再送をお待ちください。",
        )
    return link


def check_access_code(
    *,
    session: Session,
    runtime: Runtime,
    link_id: str,
    code: str,
    policy: AccessCodePolicy,
    ip: str | None = None,
) -> Party:
    """Check a party's access code on its signing link; returns the party, or raises
    ``link.code_wrong`` (with the attempts left), ``link.locked`` or ``link.not_found``.

    Commits: the reserved attempt, the audit events and a lock are recorded whatever happens.
    """
    link = session.get(SigningLink, link_id, populate_existing=True)
    if link is None or link.party_id is None or link.purpose is not LinkPurpose.SIGN:
        raise _link_error("link.not_found", "no such link", "このURLは無効です。")
    envelope_id, party_id = link.envelope_id, link.party_id
    counter = AttemptCounter(
        where=SigningLink.id == link_id,
        count=SigningLink.failed_attempts,
        open=SigningLink.locked_at.is_(None) & SigningLink.revoked_at.is_(None),
        limit=policy.max_attempts,
    )
    # The count this attempt reserved, read atomically with the increment: reading it again
    # later would see other processes' attempts and misnumber this one.
    reserved_count = reserve_attempt(session=session, counter=counter)
    session.commit()
    if reserved_count is None:
        raise _locked_link()
    stored = session.get(AccessCode, party_id, populate_existing=True)
    if stored is not None and policy.matches(code.strip(), stored.code_hash):
        # Give the reserved attempt back (only wrong codes count), unless a parallel wrong
        # code locked the link meanwhile: then this right code does not open it either.
        if not settle_success(session=session, counter=counter):
            session.commit()
            raise _locked_link()
        record_event(
            session=session,
            action="party.authenticated",
            actor=link.email,
            envelope_id=envelope_id,
            party_id=party_id,
            ip=ip,
            detail={"link": link_id},
        )
        session.commit()
        return get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    used = reserved_count
    record_event(
        session=session,
        action="party.code_failed",
        actor=link.email,
        envelope_id=envelope_id,
        party_id=party_id,
        ip=ip,
        detail={"link": link_id, "attempts": used, "limit": policy.max_attempts},
    )
    locked_now = False
    if used >= policy.max_attempts:
        now = utcnow()
        if lock_counter(session=session, counter=counter, values={SigningLink.locked_at: now}):
            locked_now = True
            record_event(
                session=session,
                action="party.locked",
                actor="system",
                envelope_id=envelope_id,
                party_id=party_id,
                ip=ip,
                at=now,
                detail={"link": link_id, "attempts": used},
            )
            party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
            runtime.notify(session, party.envelope, "party.locked", party)
    session.commit()
    if locked_now or used >= policy.max_attempts:
        raise _locked_link()
    left = policy.max_attempts - used
    raise AuthError(
        "link.code_wrong",
        f"wrong access code; {left} attempts left",
        f"アクセスコードが正しくありません。あと{left}回誤るとこのURLはロックされます。",
        details={"attempts_left": left},
    )


def forward_party(
    *,
    session: Session,
    runtime: Runtime,
    envelope_id: str,
    party_id: str,
    name: str,
    email: str,
    reason: str,
    code_hash: str,
    ip: str | None = None,
) -> Party:
    """The current party hands its turn to another person (転送): the party's name and e-mail
    change, its links stop working, and the new person is sent a request of their own.

    The forwarding person gives the reason and sets the new person's access code
    (``code_hash``, made by :meth:`AccessCodePolicy.hash` beforehand), so the new person never
    needs the forwarder's code. The original addressee, the reason and the time stay in the
    audit trail (``party.forwarded``) for the staff page and the completion certificate, and
    the sender is told by mail.
    """
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    check_party_can_act(party)
    if party.role is PartyRole.CC:
        raise StateError(
            "state.cc_cannot_act", "a cc party cannot forward", "CC(写し送付先)は転送できません。"
        )
    name = one_line(name, field="name", label_ja="転送先の氏名")
    email = email.strip()
    reason = one_line(reason, field="reason", label_ja="転送の理由").strip()
    if not name or len(name) > 200:
        raise InputError(
            "party.forward_name", "the new person needs a name", "転送先の氏名を入力してください。"
        )
    if not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", email) or len(email) > 320:
        raise InputError(
            "party.forward_email",
            "the new person needs a valid e-mail address",
            "転送先のメールアドレスを正しく入力してください。",
        )
    if email.lower() == party.email.lower():
        raise InputError(
            "party.forward_same",
            "the request is already addressed to this e-mail",
            "現在の宛先と同じメールアドレスには転送できません。",
        )
    if not reason or len(reason) > 500:
        raise InputError(
            "party.forward_reason",
            "a forward needs a reason (at most 500 characters)",
            "転送の理由を入力してください(500文字以内)。",
        )
    if not code_hash:
        raise InputError(
            "party.forward_code",
            "a forward needs the new person's access code",
            "転送先の方のアクセスコードを入力してください。",
        )
    record_event(
        session=session,
        action="party.forwarded",
        actor=party.email,
        envelope_id=envelope_id,
        party_id=party.id,
        ip=ip,
        detail={
            "from_name": party.name,
            "from_email": party.email,
            "from_company": party.company,
            "to_name": name,
            "to_email": email,
            "reason": reason,
            "access_code_set": True,
        },
    )
    party.name, party.email = name, email
    set_access_code(session=session, party_id=party.id, code_hash=code_hash)
    revoke_party_links(session=session, party_id=party.id, reason="forwarded")
    runtime.notify(session, party.envelope, "party.forwarded", party)
    session.flush()
    return party


def resend_request(
    *, session: Session, runtime: Runtime, envelope_id: str, party_id: str, actor: str
) -> Party:
    """Send the current party a fresh link (after a lockout, or a lost mail); older links stop."""
    party = get_party(session=session, envelope_id=envelope_id, party_id=party_id)
    check_party_can_act(party)
    if party.role is PartyRole.CC:
        raise StateError(
            "state.cc_cannot_act", "a cc party has no link", "CC(写し送付先)には再送できません。"
        )
    revoke_party_links(session=session, party_id=party.id, reason="resent")
    record_event(
        session=session,
        action="party.resent",
        actor=actor,
        envelope_id=envelope_id,
        party_id=party.id,
    )
    runtime.notify(session, party.envelope, "party.resent", party)
    session.flush()
    return party
