"""Who is told what by mail, and which files a mail may carry.

:class:`MailObserver` is an envelope observer: for each envelope event it adds one outbox
delivery (target ``"mail"``) per recipient, inside the transaction of the event, so the mail is
sent if and only if the state change commits. The payload names the kind of mail and the
recipient, never a link token: links are made when the mail is sent (see :mod:`core.envelopes.links`).

Attachment rules of the completion mail (Ichinomiya City's guide): the signed PDFs are attached
when they fit, 6 MB per envelope, 2 MB for mobile-carrier mail domains, at most 20 files;
otherwise none is attached and the mail's download link is the way to get them.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from core.model import Envelope, Party
from core.pushback.outbox import enqueue
from core.states import PartyRole, PartyState

__all__ = [
    "CARRIER_DOMAINS",
    "MAIL_TARGET",
    "AttachmentLimits",
    "MailKind",
    "MailObserver",
    "attachments_fit",
    "is_carrier_address",
    "planned_mails",
]

MAIL_TARGET = "mail"
MB = 1024 * 1024

# Mobile carriers' mail domains, whose mailboxes take small attachments only.
CARRIER_DOMAINS = frozenset(
    {
        "docomo.ne.jp",
        "ezweb.ne.jp",
        "i.softbank.jp",
        "softbank.ne.jp",
        "rakumail.jp",
        "ymobile.ne.jp",
    }
)


class MailKind(enum.StrEnum):
    """The mails the gateway sends; each has a template ``mail/<kind>.txt``."""

    SIGNING_REQUEST = "signing_request"  # the first party of a sent envelope
    NEXT_REQUEST = "next_request"  # a later party, when the one before it has finished
    FORWARDED_REQUEST = "forwarded_request"  # the person a party forwarded its turn to
    DECLINE_NOTICE = "decline_notice"  # to the sender, with the reason
    CANCEL_NOTICE = "cancel_notice"  # to every party already asked
    EXPIRE_NOTICE = "expire_notice"  # to the sender
    LOCKOUT_NOTICE = "lockout_notice"  # to the sender: a link was locked by wrong codes
    COMPLETION = "completion"  # 電子署名完了のお知らせ, to everyone, with a download link
    # A party bound to a staff account: its turn, with the staff pages' address (no link token,
    # no access code: it signs after logging in).
    STAFF_REQUEST = "staff_request"
    REMINDER = "reminder"  # staff's "remind now", with a fresh link
    UNLOCK_NOTICE = "unlock_notice"  # to the party: its locked link works again
    CODE_CHANGED = "code_changed"  # to the party: a new access code comes by another channel
    READDRESSED_NOTICE = "readdressed_notice"  # to an old address: the request moved (no details)
    DEADLINE_EXTENDED = "deadline_extended"  # to the current party: the new deadline
    # To the sender: a contractor's signer forwarded its turn (who, to whom, why, when), with
    # the envelope's staff page.
    FORWARD_NOTICE = "forward_notice"

    @property
    def carries_signing_link(self) -> bool:
        """True for the mails that carry a party's signing link."""
        return self in (
            MailKind.SIGNING_REQUEST,
            MailKind.NEXT_REQUEST,
            MailKind.FORWARDED_REQUEST,
            MailKind.REMINDER,
        )


@dataclass(frozen=True)
class AttachmentLimits:
    """How much a completion mail may carry."""

    per_envelope_bytes: int = 6 * MB
    carrier_bytes: int = 2 * MB
    max_files: int = 20


def is_carrier_address(email: str) -> bool:
    """True for an address at a mobile carrier's mail domain (exact domain, any case)."""
    _, _, domain = email.strip().rpartition("@")
    return domain.lower().rstrip(".") in CARRIER_DOMAINS


def attachments_fit(
    *, email: str, sizes: Sequence[int], limits: AttachmentLimits = AttachmentLimits()
) -> bool:
    """Whether all the files (``sizes`` in bytes) may be attached to a mail to ``email``.

    All or nothing: a contract is never sent with part of its documents.
    """
    if not sizes or len(sizes) > limits.max_files:
        return False
    ceiling = limits.carrier_bytes if is_carrier_address(email) else limits.per_envelope_bytes
    return sum(sizes) <= ceiling


@dataclass(frozen=True)
class _Mail:
    kind: MailKind
    to: str
    name: str
    party_id: str | None
    key: str
    # more payload (no secrets): e.g. which forward a forward notice is about
    extra: tuple[tuple[str, str], ...] = ()


def _sender(envelope: Envelope, fallback: str | None) -> tuple[str, str] | None:
    email = envelope.creator_email or fallback
    return (email, envelope.creator) if email else None


def _first_acting(envelope: Envelope) -> Party | None:
    return next((p for p in envelope.parties if p.role is not PartyRole.CC), None)


def _unique(mails: Iterable[_Mail]) -> list[_Mail]:
    seen: set[str] = set()
    out = []
    for mail in mails:
        if mail.to.lower() in seen:
            continue
        seen.add(mail.to.lower())
        out.append(mail)
    return out


def planned_mails(
    envelope: Envelope, event: str, party: Party | None, fallback_sender: str | None
) -> list[_Mail]:
    """The mails one envelope event causes, with their stable idempotency keys."""
    sender = _sender(envelope, fallback_sender)
    eid = envelope.id
    if event in ("party.requested", "party.resent", "party.reminded") and party and party.staff_id:
        kind = MailKind.STAFF_REQUEST
        key = f"mail:{kind}:{eid}:{party.id}:{party.email.lower()}"
        if event != "party.requested":
            key = f"{key}:{secrets.token_hex(8)}"
        return [_Mail(kind, party.email, party.name, party.id, key)]
    one_off = {
        "party.reminded": MailKind.REMINDER,
        "party.unlocked": MailKind.UNLOCK_NOTICE,
        "party.code_changed": MailKind.CODE_CHANGED,
        "party.readdressed": MailKind.READDRESSED_NOTICE,
        "envelope.deadline_extended": MailKind.DEADLINE_EXTENDED,
    }
    if event in one_off and party is not None:
        # Each is a new mail: the key carries a fresh nonce.
        kind = one_off[event]
        key = f"mail:{kind}:{eid}:{party.id}:{secrets.token_hex(8)}"
        return [_Mail(kind, party.email, party.name, party.id, key)]
    if event == "party.requested" and party is not None:
        first = _first_acting(envelope)
        kind = (
            MailKind.SIGNING_REQUEST
            if first is not None and first.id == party.id
            else MailKind.NEXT_REQUEST
        )
        key = f"mail:{kind}:{eid}:{party.id}:{party.email.lower()}"
        return [_Mail(kind, party.email, party.name, party.id, key)]
    if event in ("party.forwarded", "party.resent") and party is not None:
        # Each forward or resend is a new request: the key carries a fresh nonce.
        kind = MailKind.FORWARDED_REQUEST if event == "party.forwarded" else MailKind.NEXT_REQUEST
        first = _first_acting(envelope)
        if event == "party.resent" and first is not None and first.id == party.id:
            kind = MailKind.SIGNING_REQUEST
        nonce = secrets.token_hex(8)
        key = f"mail:{kind}:{eid}:{party.id}:{nonce}"
        mails = [_Mail(kind, party.email, party.name, party.id, key)]
        if event == "party.forwarded" and sender is not None:
            # The party already carries the new address: the notice names the forward by it.
            notice_key = f"mail:{MailKind.FORWARD_NOTICE}:{eid}:{party.id}:{nonce}"
            extra = (("forwarded_to", party.email),)
            mails.append(
                _Mail(MailKind.FORWARD_NOTICE, sender[0], sender[1], party.id, notice_key, extra)
            )
        return mails
    if event == "party.locked" and party is not None and sender is not None:
        key = f"mail:{MailKind.LOCKOUT_NOTICE}:{eid}:{party.id}:{secrets.token_hex(8)}"
        return [_Mail(MailKind.LOCKOUT_NOTICE, sender[0], sender[1], party.id, key)]
    if event == "envelope.declined" and sender is not None:
        key = f"mail:{MailKind.DECLINE_NOTICE}:{eid}"
        return [
            _Mail(MailKind.DECLINE_NOTICE, sender[0], sender[1], party.id if party else None, key)
        ]
    if event == "envelope.expired" and sender is not None:
        key = f"mail:{MailKind.EXPIRE_NOTICE}:{eid}"
        return [_Mail(MailKind.EXPIRE_NOTICE, sender[0], sender[1], None, key)]
    if event == "envelope.cancelled":
        asked = [p for p in envelope.parties if p.state is not PartyState.WAITING]
        return _unique(
            _Mail(
                MailKind.CANCEL_NOTICE,
                p.email,
                p.name,
                p.id,
                f"mail:{MailKind.CANCEL_NOTICE}:{eid}:{p.email.lower()}",
            )
            for p in asked
        )
    if event == "envelope.copy_requested" and party is not None:
        # The current copy (renewed timestamps included) through a fresh download link; each
        # request is a new mail, so the key carries a nonce.
        key = f"mail:{MailKind.COMPLETION}:{eid}:{party.email.lower()}:{secrets.token_hex(8)}"
        return [_Mail(MailKind.COMPLETION, party.email, party.name, party.id, key)]
    if event == "envelope.completed":
        everyone = [
            _Mail(
                MailKind.COMPLETION,
                p.email,
                p.name,
                p.id,
                f"mail:{MailKind.COMPLETION}:{eid}:{p.email.lower()}",
            )
            for p in envelope.parties
        ]
        if sender is not None:
            everyone.append(
                _Mail(
                    MailKind.COMPLETION,
                    sender[0],
                    sender[1],
                    None,
                    f"mail:{MailKind.COMPLETION}:{eid}:{sender[0].lower()}",
                )
            )
        return _unique(everyone)
    return []


@dataclass(frozen=True)
class MailObserver:
    """Adds the mails of each envelope event to the outbox, in the event's transaction.

    ``fallback_sender`` receives the sender's notices (decline, lockout, expiry, completion)
    of envelopes that name no sender e-mail.
    """

    fallback_sender: str | None = None

    def envelope_event(
        self, *, session: Session, envelope: Envelope, event: str, party: Party | None
    ) -> None:
        """Enqueue one mail delivery per recipient of ``event``."""
        for mail in planned_mails(envelope, event, party, self.fallback_sender):
            enqueue(
                session=session,
                target=MAIL_TARGET,
                idempotency_key=mail.key,
                envelope_id=envelope.id,
                payload={
                    "kind": mail.kind.value,
                    "to": mail.to,
                    "name": mail.name,
                    "party_id": mail.party_id,
                    **dict(mail.extra),
                },
            )
