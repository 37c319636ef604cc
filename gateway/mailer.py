"""Sending the gateway's mails: templates, transports, the outbox handler and its worker.

:class:`core.envelopes.notify.MailObserver` adds one outbox delivery per mail in the transaction of the
envelope event. :class:`MailHandler` sends one such delivery: it makes the link the mail
carries at that moment (so no raw token ever waits in the outbox), renders the Jinja2 template
of its kind (``mail/<kind>.txt``; an admin's ``mail.templates_dir`` overrides any of them),
attaches the signed PDFs when they fit, and hands the message to the transport: a maildir
folder by default, SMTP with STARTTLS in production. SMTP failures are retried a few times
with backoff (tenacity); after that the delivery stays in the outbox for a later try.
:class:`MailDispatcher` runs :func:`core.pushback.outbox.dispatch` for mail in a thread of
``keiyaku serve``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import mailbox
import os
import smtplib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any, Protocol

import jinja2
from sqlalchemy.orm import Session, sessionmaker
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from core.envelopes.deadlines import NOTICE_TARGET
from core.envelopes.documents import current_documents
from core.envelopes.lifecycle import get_envelope
from core.envelopes.links import issue_link
from core.envelopes.notify import MAIL_TARGET, AttachmentLimits, MailKind, attachments_fit
from core.errors import ConfigError, Disposition, GatewayError
from core.model import Delivery, LinkPurpose, Party
from core.pushback.outbox import DispatchResult, dispatch
from core.records.audit import list_events
from core.runtime import Runtime
from core.states import ACTIONABLE_PARTY_STATES, EnvelopeState, party_state_ja
from core.text import without_controls
from core.timezone import JST
from gateway.background import PollingThread
from gateway.settings import ContactSettings

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"


class MailTransport(Protocol):
    """Hands one finished message to the mail system."""

    def send(self, message: EmailMessage) -> None:
        """Send ``message`` or raise :class:`GatewayError` (retriable for outages)."""


@dataclass
class MaildirTransport:
    """Writes every message into a maildir folder (the embedded default)."""

    path: Path

    def send(self, message: EmailMessage) -> None:
        """Add the message to the folder's ``new/``."""
        box = mailbox.Maildir(str(self.path), create=True)
        box.add(message.as_bytes())


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(400 <= code < 500 for code, _ in exc.recipients.values())
    return isinstance(exc, smtplib.SMTPServerDisconnected | smtplib.SMTPConnectError | OSError)


@dataclass
class SmtpTransport:
    """SMTP submission with STARTTLS and login, retried with backoff on transient failures."""

    host: str
    port: int
    starttls: bool = True
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    timeout: float = 30.0
    attempts: int = 3
    backoff: float = 0.5

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_file is not None:
            context.load_verify_locations(cafile=str(self.ca_file))
        return context

    def _send_once(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.ehlo()
            if self.starttls:
                smtp.starttls(context=self._context())
                smtp.ehlo()
            if self.username is not None:
                smtp.login(self.username, self.password or "")
            smtp.send_message(message)

    def send(self, message: EmailMessage) -> None:
        """Send, retrying transient failures ``attempts`` times; then fail retriably."""
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=10),
            retry=retry_if_exception(_transient),
            reraise=False,
        )
        try:
            retrying(self._send_once, message)
        except RetryError as exc:
            cause = exc.last_attempt.exception()
            raise GatewayError(
                "mail.smtp_unavailable",
                f"SMTP server {self.host}:{self.port} failed {self.attempts} times: {cause}",
                "メールサーバーに接続できません。後で再送します。",
                disposition=Disposition.RETRIABLE,
            ) from cause
        except smtplib.SMTPAuthenticationError as exc:
            raise GatewayError(
                "mail.smtp_auth",
                f"SMTP login refused: {exc.smtp_code}",
                "メールサーバーへのログインが拒否されました。設定を確認してください。",
                disposition=Disposition.RETRIABLE,
            ) from exc
        except (smtplib.SMTPException, ssl.SSLError) as exc:
            raise GatewayError(
                "mail.rejected",
                f"SMTP server refused the message: {exc}",
                "メールサーバーがメールを受け付けませんでした。",
            ) from exc


class MailRenderer:
    """Renders ``mail/<kind>.txt``: its ``subject`` and ``body`` blocks."""

    def __init__(self, override_dir: Path | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if override_dir is not None:
            loaders.append(jinja2.FileSystemLoader(str(override_dir)))
        loaders.append(jinja2.FileSystemLoader(str(TEMPLATES)))
        # Plain-text mail: no HTML escaping; undefined names fail loudly in tests and templates.
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(loaders),
            autoescape=False,  # noqa: S701 - text/plain mail, not HTML
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
        )

    def render(self, kind: str, context: dict[str, Any]) -> tuple[str, str]:
        """(subject, body) of one mail."""
        template = self.env.get_template(f"mail/{kind}.txt")
        ctx = template.new_context(context)
        subject = "".join(template.blocks["subject"](ctx)).strip().replace("\n", " ")
        body = "".join(template.blocks["body"](ctx)).strip() + "\n"
        return subject, body


def jst(value: dt.datetime | None) -> str:
    """A time as people read it here: ``2025年10月01日 09:25`` in JST."""
    if value is None:
        return ""
    return value.astimezone(JST).strftime("%Y年%m月%d日 %H:%M")


@dataclass
class MailHandler:
    """Sends one ``mail`` delivery of the outbox (see the module docstring)."""

    sessions: sessionmaker[Session]
    runtime: Runtime
    renderer: MailRenderer
    transport: MailTransport
    sender: str
    public_url: str
    link_valid: dt.timedelta
    download_valid: dt.timedelta
    attachment_limits: AttachmentLimits = field(default_factory=AttachmentLimits)
    # お問い合わせ先 at the end of every mail; its e-mail address is every mail's Reply-To.
    contact: ContactSettings = field(default_factory=ContactSettings)

    def __call__(self, delivery: Delivery) -> None:
        """Render and send the delivery's mail; a mail that no longer applies is dropped."""
        if delivery.target == NOTICE_TARGET:
            self.transport.send(self.compose_notice(delivery))
            log.info("notice %s sent", delivery.id)
            return
        message = self.compose(delivery)
        if message is not None:
            self.transport.send(message)
            log.info("mail %s sent (%s)", delivery.id, delivery.payload.get("kind"))

    def compose_notice(self, delivery: Delivery) -> EmailMessage:
        """A deadline reminder or overdue notice: subject and body were composed when it was
        queued (core.envelopes.deadlines), addressed to every recipient at once."""
        payload = delivery.payload
        recipients = [Address(addr_spec=str(address)) for address in payload["to"]]
        return self._message(
            delivery, str(payload["subject"]), str(payload["body"]), recipients, attachments=()
        )

    def compose(self, delivery: Delivery) -> EmailMessage | None:
        """The message of one delivery, with a fresh link when it carries one; None when the
        mail no longer applies (the party was forwarded, the envelope closed meanwhile)."""
        payload = delivery.payload
        kind = MailKind(payload["kind"])
        to, name = str(payload["to"]), str(payload["name"])
        party_id = payload.get("party_id")
        with self.sessions() as session:
            envelope = get_envelope(session=session, envelope_id=str(delivery.envelope_id))
            party = next((p for p in envelope.parties if p.id == party_id), None)
            context: dict[str, Any] = {
                "buyer": self.runtime.buyer_name,
                "title": envelope.title,
                "management_number": envelope.management_number,
                "creator": envelope.creator,
                "name": name,
                "email": to,
                "company": party.company if party is not None else None,
                "documents": [d.name for d in envelope.documents],
                "party": party,
                "party_state": party_state_ja(party.state) if party is not None else "",
                "url": None,
                "expires_at": "",
                "attached": False,
                "download_days": self.download_valid.days,
                "reason": "",
                "deadline": f"{envelope.deadline:%Y年%m月%d日}" if envelope.deadline else "",
                "contact": self.contact,
                # For the mails that go to staff (decline, lock, forward): the envelope's page.
                "staff_url": f"{self.public_url}/admin/envelopes/{envelope.id}",
            }
            attachments: list[tuple[str, bytes]] = []
            now = dt.datetime.now(dt.UTC)
            if kind.carries_signing_link:
                if not self._request_still_applies(envelope.state, party, to):
                    log.info("mail %s dropped: the request no longer applies", delivery.id)
                    return None
                assert party is not None
                link, token = issue_link(
                    session=session,
                    envelope_id=envelope.id,
                    party_id=party.id,
                    email=to,
                    purpose=LinkPurpose.SIGN,
                    valid_for=self.link_valid,
                    issued_for=delivery.idempotency_key,
                    now=now,
                )
                context["url"] = f"{self.public_url}/sign/{token}"
                context["expires_at"] = jst(link.expires_at)
                if kind is MailKind.FORWARDED_REQUEST:
                    context["forwarded_from"] = self._forwarded_from(session, envelope.id, party)
            elif kind is MailKind.STAFF_REQUEST:
                if not self._request_still_applies(envelope.state, party, to):
                    log.info("mail %s dropped: the request no longer applies", delivery.id)
                    return None
                # No token: the staff member logs in and finds the envelope in the inbox.
                context["url"] = f"{self.public_url}/admin/sign/{envelope.id}"
                context["inbox_url"] = f"{self.public_url}/admin/inbox"
                context["role_ja"] = "承認" if party and party.role.value == "approver" else "署名"
            elif kind is MailKind.COMPLETION:
                link, token = issue_link(
                    session=session,
                    envelope_id=envelope.id,
                    party_id=party.id if party is not None else None,
                    email=to,
                    purpose=LinkPurpose.DOWNLOAD,
                    valid_for=self.download_valid,
                    issued_for=delivery.idempotency_key,
                    now=now,
                )
                context["url"] = f"{self.public_url}/download/{token}"
                context["expires_at"] = jst(link.expires_at)
                files = current_documents(runtime=self.runtime, envelope=envelope)
                sizes = [len(data) for _, data in files]
                if attachments_fit(email=to, sizes=sizes, limits=self.attachment_limits):
                    attachments = files
                    context["attached"] = True
            elif kind is MailKind.DECLINE_NOTICE:
                decliner = next((p for p in envelope.parties if p.decline_reason), party)
                context["party"] = decliner
                context["reason"] = decliner.decline_reason if decliner is not None else ""
            elif kind is MailKind.FORWARD_NOTICE:
                forward = self._forward_event(
                    session, envelope.id, party_id, str(payload.get("forwarded_to", ""))
                )
                if forward is None:
                    log.info("mail %s dropped: its forward is not recorded", delivery.id)
                    return None
                context["forward"] = forward
                context["staff_url"] = f"{self.public_url}/admin/envelopes/{envelope.id}"
            elif kind is MailKind.CANCEL_NOTICE:
                context["reason"] = self._cancel_reason(session, envelope.id)
            session.commit()  # the link exists before the mail that carries it leaves
        subject, body = self.renderer.render(kind.value, context)
        # Entries normalise names and titles; rows stored before they did may still hold a
        # line break, which no header may carry (the mail would never leave).
        recipients = [Address(display_name=without_controls(name), addr_spec=to.strip())]
        return self._message(delivery, subject, body, recipients, attachments)

    @staticmethod
    def _request_still_applies(state: EnvelopeState, party: Party | None, to: str) -> bool:
        return (
            party is not None
            and state is EnvelopeState.SENT
            and party.state in ACTIONABLE_PARTY_STATES
            and party.email.lower() == to.lower()
        )

    @staticmethod
    def _forwarded_from(session: Session, envelope_id: str, party: Party) -> str:
        events = [
            e
            for e in list_events(session=session, envelope_id=envelope_id)
            if e.action == "party.forwarded" and e.party_id == party.id
        ]
        return str(events[-1].detail.get("from_name", "")) if events else ""

    @staticmethod
    def _forward_event(
        session: Session, envelope_id: str, party_id: object, to_email: str
    ) -> dict[str, str] | None:
        """The forward a notice is about (the newest of the party's forwards to that address):
        who forwarded, to whom, why and when (JST)."""
        events = [
            e
            for e in list_events(session=session, envelope_id=envelope_id)
            if e.action == "party.forwarded"
            and e.party_id == party_id
            and str(e.detail.get("to_email", "")).lower() == to_email.lower()
        ]
        if not events:
            return None
        detail = {k: str(v) if v is not None else "" for k, v in events[-1].detail.items()}
        return {**detail, "at": jst(events[-1].at)}

    @staticmethod
    def _cancel_reason(session: Session, envelope_id: str) -> str:
        events = [
            e
            for e in list_events(session=session, envelope_id=envelope_id)
            if e.action == "envelope.cancelled"
        ]
        return str(events[-1].detail.get("reason", "")) if events else ""

    def _message(
        self,
        delivery: Delivery,
        subject: str,
        body: str,
        recipients: Sequence[Address],
        attachments: Sequence[tuple[str, bytes]],
    ) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = without_controls(subject)
        message["From"] = Address(
            display_name=without_controls(f"{self.runtime.buyer_name} 電子契約"),
            addr_spec=self.sender,
        )
        message["To"] = recipients
        # A reply reaches the contract department, not the unattended sending address.
        message["Reply-To"] = Address(
            display_name=without_controls(f"{self.runtime.buyer_name} {self.contact.department}"),
            addr_spec=self.contact.email or self.sender,
        )
        message["Date"] = format_datetime(dt.datetime.now(JST))
        domain = self.sender.rpartition("@")[2] or "keiyaku-gateway"
        # The same delivery always has the same Message-ID, so a repeat after a crash between
        # sending and recording can be recognised by the receiving side.
        digest = hashlib.sha256(delivery.idempotency_key.encode()).hexdigest()[:40]
        message["Message-ID"] = f"<{digest}@{domain}>"
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(body, charset="utf-8")
        for filename, data in attachments:
            message.add_attachment(
                data,
                maintype="application",
                subtype="pdf",
                filename=without_controls(filename) or "document.pdf",
            )
        return message


class MailDispatcher(PollingThread):
    """Runs the mail outbox in a background thread: every ``interval`` seconds, or at once
    after :meth:`wake`."""

    name = "mail-dispatch"

    def __init__(
        self,
        sessions: sessionmaker[Session],
        handler: Callable[[Delivery], None],
        interval: float,
        lease: dt.timedelta = dt.timedelta(minutes=5),
    ) -> None:
        super().__init__(sessions, f"{socket.gethostname()}:{os.getpid()}:mail", interval)
        self.handler = handler
        # how long a killed node's claimed mail waits before another node sends it
        self.lease = lease

    def run_once(self) -> DispatchResult:
        """One pass over the due mail deliveries."""
        return dispatch(
            sessions=self.sessions,
            handlers={MAIL_TARGET: self.handler, NOTICE_TARGET: self.handler},
            worker=self.worker,
            lease=self.lease,
            stop=self._stop.is_set,
        )

    def _pass(self) -> None:
        while True:
            result = self.run_once()
            if not (result.delivered or result.retrying or result.dead):
                break


def build_transport(settings: Any) -> MailTransport:
    """The transport the settings name (``gateway.settings.Settings``)."""
    mail = settings.mail
    if mail.transport == "maildir":
        return MaildirTransport(settings.path(mail.maildir))
    smtp = mail.smtp
    if not smtp.host:
        raise ConfigError(
            "config.smtp", "mail.smtp.host is required", "mail.smtp.host を指定してください。"
        )
    return SmtpTransport(
        host=smtp.host,
        port=smtp.port,
        starttls=smtp.starttls,
        username=smtp.username,
        password=smtp.password.get_secret_value() if smtp.password is not None else None,
        ca_file=settings.path(smtp.ca_file) if smtp.ca_file is not None else None,
        timeout=smtp.timeout_seconds,
        attempts=smtp.attempts,
    )
