"""Staff recovery through the envelope API, over real HTTP (SQLite and PostgreSQL): each action
changes what the party's link accepts as the signing pages show it, mails whom it affects (never
with a code or the old link), is audited with the API client as actor, is refused with a coded
error where it makes no sense, and is invisible to another client. The envelope then completes
with the replaced signer."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import mailbox
import re
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import select

from core.model import AuditEvent
from gateway.app import build_mail_handler
from gateway.mailer import MailDispatcher
from tests.fixtures.gateway import complete_by_services, envelope_request
from tests.gateway.conftest import LiveGateway

MAIL = "  maildir: outgoing\n  sender: keiyaku@city.example.jp\n"
LINK = re.compile(r"https?://[^\s/]+(/sign/[A-Za-z0-9_-]+)")
KACHO = "kacho-rec@city.example.jp"
CONTRACTOR = "ichiro-rec@takahashi.example.co.jp"


class Mails:
    """The maildir as the parties see it: run the mail outbox, then read what arrived."""

    def __init__(self, live: LiveGateway, directory: Path) -> None:
        self.dispatcher = MailDispatcher(live.gateway.sessions, build_mail_handler(live.gateway), 1)
        self.directory = directory
        self.seen: set[str] = set()

    def new(self) -> list[EmailMessage]:
        """Messages that arrived since the last call, after one outbox pass."""
        while self.dispatcher.run_once().delivered:
            pass
        box = mailbox.Maildir(str(self.directory), create=False)
        fresh = []
        for key in sorted(box.keys()):
            if key in self.seen:
                continue
            self.seen.add(key)
            message = email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            fresh.append(message)
        return fresh


def _to(messages: list[EmailMessage], address: str) -> list[EmailMessage]:
    return [m for m in messages if address in str(m["To"])]


def _text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def _path(message: EmailMessage) -> str:
    match = LINK.search(_text(message))
    assert match, _text(message)
    return match.group(1)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def _enter(live: LiveGateway, path: str, code: str) -> int:
    """Type ``code`` on the link's access-code page, as a fresh browser; the answer's status."""
    with live.client() as browser:
        page = browser.get(path)
        if page.status_code != 200:
            return page.status_code
        answer = browser.post(
            path, data={"access_code": code, "csrf_token": _csrf(page.text)}, follow_redirects=False
        )
        return answer.status_code


def _actions(live: LiveGateway, envelope_id: str) -> list[tuple[str, str]]:
    with live.gateway.sessions() as session:
        rows = session.execute(
            select(AuditEvent.action, AuditEvent.actor)
            .where(AuditEvent.envelope_id == envelope_id)
            .order_by(AuditEvent.id)
        )
        return [(action, actor) for action, actor in rows]


def test_every_recovery_action_over_the_api_ends_in_a_completed_envelope(
    live_gateway: Callable[..., LiveGateway], tmp_path: Path
) -> None:
    live = live_gateway(mail=MAIL)
    mails = Mails(live, tmp_path / "outgoing")
    deadline = dt.date(2030, 4, 10)
    body = envelope_request(
        emails=(KACHO, CONTRACTOR, "shicho-rec@city.example.jp"),
        codes=("48151623", "42424242", "31415926"),
        send=True,
        metadata={"deadline": str(deadline), "amount": 1000, "transaction_date": "2030-04-01"},
    )
    with live.client(live.token("e-bid")) as api:
        created = api.post("/api/v1/envelopes", json=body)
        assert created.status_code == 201, created.text
        env = created.json()["id"]
        base = f"/api/v1/envelopes/{env}"
        (request,) = _to(mails.new(), KACHO)
        first = _path(request)

        # Five wrong codes lock the link; the right one is then refused too.
        for _ in range(5):
            assert _enter(live, first, "00000000") in (401, 423)
        assert _enter(live, first, "48151623") == 423
        assert api.get(base).json()["parties"][0]["locked"] is True
        mails.new()  # the lock notice to the sender

        # Unlock: the same link takes the right code again; the party is told.
        unlocked = api.post(f"{base}/parties/1/unlock")
        assert unlocked.status_code == 200, unlocked.text
        assert unlocked.json()["parties"][0]["locked"] is False
        (notice,) = _to(mails.new(), KACHO)
        assert "48151623" not in _text(notice)
        assert _enter(live, first, "48151623") == 303
        again = api.post(f"{base}/parties/1/unlock")
        assert again.status_code == 422 and again.json()["error"]["code"] == "party.not_locked"

        # A new access code: the old one stops working, the new one opens; the mail never has it.
        changed = api.put(f"{base}/parties/1/access-code", json={"access_code": "27182818"})
        assert changed.status_code == 200, changed.text
        (told,) = _to(mails.new(), KACHO)
        assert "27182818" not in _text(told) and "/sign/" not in _text(told)
        assert _enter(live, first, "48151623") == 401
        assert _enter(live, first, "27182818") == 303

        # Resend: a new link in a new mail; the old link is revoked.
        resent = api.post(f"{base}/parties/1/resend")
        assert resent.status_code == 200, resent.text
        (fresh,) = _to(mails.new(), KACHO)
        second = _path(fresh)
        assert second != first
        assert _enter(live, first, "27182818") != 303
        assert _enter(live, second, "27182818") == 303

        # Remind now: a reminder mail to the party whose turn it is.
        assert api.post(f"{base}/parties/1/remind").status_code == 200
        assert len(_to(mails.new(), KACHO)) == 1

        # A later deadline is taken and told; an earlier one is refused.
        earlier = api.post(f"{base}/deadline", json={"deadline": str(deadline - dt.timedelta(1))})
        assert earlier.status_code == 422
        assert earlier.json()["error"]["code"] == "envelope.deadline_not_later"
        later = deadline + dt.timedelta(days=7)
        extended = api.post(f"{base}/deadline", json={"deadline": str(later)})
        assert extended.status_code == 200, extended.text
        assert extended.json()["metadata"]["deadline"] == str(later)
        assert len(_to(mails.new(), KACHO)) == 1

        # Correct the approver's address: the new address gets a working link, the old one only a
        # notice without the title or any link; the old links stop working.
        moved = api.post(
            f"{base}/parties/1/readdress",
            json={"name": "契約 花子", "email": "kacho2-rec@city.example.jp"},
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["parties"][0]["email"] == "kacho2-rec@city.example.jp"
        arrived = mails.new()
        (old_notice,) = _to(arrived, KACHO)
        assert "/sign/" not in _text(old_notice)
        assert body["title"] not in _text(old_notice) + str(old_notice["Subject"])
        (new_request,) = _to(arrived, "kacho2-rec@city.example.jp")
        third = _path(new_request)
        assert _enter(live, second, "27182818") != 303
        assert _enter(live, third, "27182818") == 303

        # Replace the contractor's signer (who has not acted): a reason is required.
        replacement = {"name": "髙橋 二郎", "email": "jiro-rec@takahashi.example.co.jp"}
        no_reason = api.post(f"{base}/parties/2/readdress", json={**replacement, "replace": True})
        assert no_reason.status_code == 422
        assert no_reason.json()["error"]["code"] == "party.replace_reason_required"
        replaced = api.post(
            f"{base}/parties/2/readdress",
            json={**replacement, "replace": True, "reason": "担当者の異動のため"},
        )
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["parties"][1]["name"] == "髙橋 二郎"

        # Another system sees none of it and can change none of it.
        with live.client(live.token("other-system")) as other:
            assert other.get(base).status_code == 404
            for method, path, payload in (
                ("POST", f"{base}/parties/1/unlock", None),
                ("POST", f"{base}/parties/1/resend", None),
                ("POST", f"{base}/parties/1/remind", None),
                ("PUT", f"{base}/parties/1/access-code", {"access_code": "99999999"}),
                ("POST", f"{base}/parties/1/readdress", {"name": "x", "email": "x@x.example.jp"}),
                ("POST", f"{base}/deadline", {"deadline": "2031-01-01"}),
            ):
                answer = other.request(method, path, json=payload)
                assert answer.status_code == 404, (path, answer.text)
                assert answer.json()["error"]["code"].startswith("not_found")
        with live.client(live.token("reader", ["envelopes:read"])) as reader:
            assert reader.post(f"{base}/parties/1/remind").status_code == 403

        # The envelope completes; the contractor's signature is the replacement's.
        complete_by_services(live.gateway, env)
        done = api.get(base).json()
        assert done["state"] == "completed"
        assert done["parties"][1]["email"] == "jiro-rec@takahashi.example.co.jp"

    actions = _actions(live, env)
    assert ("party.locked", "api:e-bid") not in actions  # the lock is the link's doing
    for action in (
        "party.unlocked",
        "party.access_code_changed",
        "party.resent",
        "party.reminded",
        "envelope.deadline_extended",
        "party.corrected",
        "party.replaced",
    ):
        assert (action, "api:e-bid") in actions, f"{action} not audited: {actions}"
    assert not any(actor == "api:other-system" for _, actor in actions)


def test_recovery_on_a_missing_party_or_a_closed_envelope_is_refused(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway(mail=MAIL)
    with live.client(live.token("e-bid")) as api:
        created = api.post("/api/v1/envelopes", json=envelope_request(send=True))
        assert created.status_code == 201, created.text
        env = created.json()["id"]
        missing = api.post(f"/api/v1/envelopes/{env}/parties/9/remind")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found.party"
        cancelled = api.post(f"/api/v1/envelopes/{env}/cancel", json={"reason": "入札のやり直し"})
        assert cancelled.status_code == 200, cancelled.text
        late = api.post(f"/api/v1/envelopes/{env}/parties/1/remind")
        assert late.status_code == 409, late.text
        assert late.json()["error"]["code"].startswith("state.")
        bad_code = api.put(
            f"/api/v1/envelopes/{env}/parties/1/access-code", json={"access_code": "1"}
        )
        assert bad_code.status_code == 422
