"""Mail through the outbox: SMTP with STARTTLS and login (aiosmtpd + trustme), an outage that
leaves the mail for later, the maildir default, and an admin's template override."""

from __future__ import annotations

import email
import email.policy
import mailbox
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme
from sqlalchemy import select, update

from core.envelopes.notify import AttachmentLimits, attachments_fit, is_carrier_address
from core.model import Delivery, SigningLink
from core.states import DeliveryState
from gateway.app import build_mail_handler
from gateway.mailer import MailDispatcher
from tests.e2e.conftest import body_of, link_in
from tests.fixtures.gateway import envelope_request
from tests.fixtures.smtp import free_port, smtp_server
from tests.gateway.conftest import LiveGateway

MB = 1024 * 1024
SUBJECT = "【開発市】様より市道１号線舗装補修工事への署名依頼が届いています"


@pytest.fixture(scope="module")
def smtp_tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, Path]:
    """A server certificate for 127.0.0.1 from a throwaway CA, and the CA file to trust."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server, ca_file


def _smtp_section(port: int, ca_file: Path, password: str = "s3cret") -> str:
    return (
        "  sender: keiyaku@city.example.jp\n"
        "  transport: smtp\n"
        "  smtp:\n"
        "    host: 127.0.0.1\n"
        f"    port: {port}\n"
        "    starttls: true\n"
        "    username: keiyaku\n"
        f"    password: {password}\n"
        f"    ca_file: {ca_file}\n"
        "    timeout_seconds: 5\n"
        "    attempts: 2\n"
    )


def test_carrier_domains_and_limits() -> None:
    assert is_carrier_address("taro@docomo.ne.jp") and is_carrier_address("a@EZweb.ne.jp")
    assert is_carrier_address("a@i.softbank.jp") and is_carrier_address("a@ymobile.ne.jp")
    assert not is_carrier_address("a@docomo.ne.jp.example.com")
    assert not is_carrier_address("a@mail.docomo.co.jp")
    assert attachments_fit(email="a@city.example.jp", sizes=[3 * MB, 3 * MB])
    assert not attachments_fit(email="a@city.example.jp", sizes=[3 * MB, 3 * MB + 1])
    assert attachments_fit(email="a@rakumail.jp", sizes=[2 * MB])
    assert not attachments_fit(email="a@rakumail.jp", sizes=[2 * MB + 1])
    assert attachments_fit(email="a@example.jp", sizes=[1000] * 20)
    assert not attachments_fit(email="a@example.jp", sizes=[1000] * 21)
    assert not attachments_fit(email="a@example.jp", sizes=[])
    assert not attachments_fit(
        email="a@example.jp", sizes=[10], limits=AttachmentLimits(per_envelope_bytes=5)
    )


def test_signing_request_over_starttls_with_login_and_no_secret_at_rest(
    live_gateway: Callable[..., LiveGateway], smtp_tls: tuple[ssl.SSLContext, Path]
) -> None:
    context, ca_file = smtp_tls
    with smtp_server(tls=context, login=("keiyaku", "s3cret")) as (port, inbox):
        live = live_gateway(mail=_smtp_section(port, ca_file))
        with live.client(live.token("e-bid")) as client:
            client.post("/api/v1/envelopes", json=envelope_request(send=True))
        dispatcher = MailDispatcher(live.gateway.sessions, build_mail_handler(live.gateway), 1)
        assert len(dispatcher.run_once().delivered) == 1
        assert dispatcher.run_once().delivered == []  # delivered once, never twice
        (mail,) = inbox.wait_for("kacho@city.example.jp")
    assert mail["Subject"] == SUBJECT
    assert mail["From"].addresses[0].display_name == "開発市 電子契約"
    assert mail["To"].addresses[0].display_name == "契約 花子"
    body = body_of(mail)
    assert "1111" not in body and "アクセスコード" in body
    token = link_in(mail).rsplit("/", 1)[1]
    assert len(token) >= 43  # 32 random bytes
    with live.gateway.sessions() as session:
        (delivery,) = session.scalars(select(Delivery)).all()
        assert delivery.state is DeliveryState.DELIVERED
        assert token not in str(delivery.payload)
        (link,) = session.scalars(select(SigningLink)).all()
        assert token not in (link.token_hash, link.id) and len(link.token_hash) == 64


def test_wrong_smtp_password_and_outage_leave_the_mail_for_later(
    live_gateway: Callable[..., LiveGateway], smtp_tls: tuple[ssl.SSLContext, Path]
) -> None:
    context, ca_file = smtp_tls
    port = free_port()
    live = live_gateway(mail=_smtp_section(port, ca_file))
    with live.client(live.token("e-bid")) as client:
        client.post("/api/v1/envelopes", json=envelope_request(send=True))
    dispatcher = MailDispatcher(live.gateway.sessions, build_mail_handler(live.gateway), 1)
    outage = dispatcher.run_once()  # nothing listens: retried twice in the handler, then later
    assert outage.retrying and not outage.delivered and not outage.dead
    with live.gateway.sessions() as session:
        (delivery,) = session.scalars(select(Delivery)).all()
        assert delivery.state is DeliveryState.PENDING and delivery.attempts == 1
        assert (delivery.last_error or "").startswith("mail.smtp_unavailable")
        # The link made for the failed try is revoked when the mail is tried again.
        first_link = session.scalars(select(SigningLink)).one()

    def due_now() -> None:
        with live.gateway.sessions() as session:
            session.execute(update(Delivery).values(next_attempt_at=Delivery.created_at))
            session.commit()

    with smtp_server(port=port, tls=context, login=("keiyaku", "s3cret")) as (_, inbox):
        due_now()
        assert len(dispatcher.run_once().delivered) == 1
        (mail,) = inbox.wait_for("kacho@city.example.jp")
    with live.gateway.sessions() as session:
        links = session.scalars(select(SigningLink).order_by(SigningLink.created_at)).all()
        assert [link.revoked_reason for link in links] == ["reissued", None]
        assert links[0].id == first_link.id
    assert "/sign/" in link_in(mail)


def test_maildir_default_and_admin_template_override(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    override = tmp_path / "my-templates" / "mail"
    override.mkdir(parents=True)
    (override / "signing_request.txt").write_text(
        "{% block subject %}[{{ buyer }}] 署名のお願い: {{ title }}{% endblock %}\n"
        "{% block body %}{{ name }} 様\n{{ url }}\n{% endblock %}\n",
        encoding="utf-8",
    )
    live = live_gateway(
        mail="  maildir: outgoing\n  sender: keiyaku@city.example.jp\n"
        f"  templates_dir: {override.parent}\n"
    )
    with live.client(live.token("e-bid")) as client:
        client.post("/api/v1/envelopes", json=envelope_request(send=True))
    dispatcher = MailDispatcher(live.gateway.sessions, build_mail_handler(live.gateway), 1)
    assert len(dispatcher.run_once().delivered) == 1
    box = mailbox.Maildir(str(tmp_path / "outgoing"), create=False)
    (raw,) = [m.as_bytes() for m in box]
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == "[開発市] 署名のお願い: 市道１号線舗装補修工事"
    assert body_of(message).startswith("契約 花子 様\nhttp://testserver/sign/")  # type: ignore[arg-type]


def test_deadline_notices_are_mailed_to_every_recipient(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    from core.envelopes.deadlines import NOTICE_TARGET
    from core.pushback.outbox import enqueue

    live = live_gateway(mail="  maildir: outgoing\n  sender: keiyaku@city.example.jp\n")
    with live.gateway.sessions() as session:
        enqueue(
            session=session,
            target=NOTICE_TARGET,
            idempotency_key="notice:usage_request_due:s:A1:2025-10-03",
            payload={
                "kind": "deadline_notice",
                "notice": "usage_request_due",
                "to": ["a@example.co.jp", "b@example.co.jp"],
                "subject": "【開発市】電子契約利用申出書の提出期限のお知らせ",
                "body": "本日2025年10月3日が提出期限です。",
            },
        )
        session.commit()
    dispatcher = MailDispatcher(live.gateway.sessions, build_mail_handler(live.gateway), 1)
    assert len(dispatcher.run_once().delivered) == 1
    assert dispatcher.run_once().delivered == []  # once only
    box = mailbox.Maildir(str(tmp_path / "outgoing"), create=False)
    (raw,) = [m.as_bytes() for m in box]
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == "【開発市】電子契約利用申出書の提出期限のお知らせ"
    assert [a.addr_spec for a in message["To"].addresses] == ["a@example.co.jp", "b@example.co.jp"]
    assert "2025年10月3日" in body_of(message)  # type: ignore[arg-type]
