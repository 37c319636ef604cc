"""`keiyaku demo`: the whole flow on the embedded defaults, from an award export to the signed
PDFs, with every person acting through the surface a person uses.

It writes a sample into ``demo-input/`` next to the config: a bidder registry, a usage request
(電子契約利用申出書) and an award export (CP932, era dates, full-width digits) with the contract
PDFs the mapping names, plus copies of the worked-example mappings. As an admin would, it
registers staff accounts (`keiyaku staff add`): a clerk, and the officials of the
signing-authority register, who sign as staff; passwords are random per run and never printed.
It syncs the sample through the real intake path as three folder sources that exist only for the
demo (the admin's config is not touched). Then it serves the gateway's HTTP app on loopback
(with its mail and signing workers) and acts through it: the clerk logs in to the staff pages and
sends the draft; the contractor's signer finds the request in the demo's maildir
(``demo-input/mail``), opens the link, types the access code from the usage request, registers
its 前払金保証 (保証契約番号 + 認証キー) on 電子保証の登録 (when ``pages.guarantee_entry`` allows
it), fills the signing-date box and completes; the official finds the staff request mail, logs in, and signs
with the password typed again. No service is called with arguments a person could not give.
Each run takes in a new award number, so running it again makes a new envelope.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import email
import email.policy
import hashlib
import html as html_lib
import io
import mailbox
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from reportlab.lib.pagesizes import A4
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connectors.inbox import ReadLockConfig
from core.envelopes.certificate import find_cjk_font
from core.envelopes.creation import DocumentInput
from core.envelopes.documents import current_documents
from core.envelopes.lifecycle import get_envelope
from core.envelopes.notify import MAIL_TARGET
from core.envelopes.sealing import completion_certificate
from core.errors import RecordError
from core.intake.awards import get_award
from core.model import AuditEvent, Award, Delivery, Envelope, Party, Staff
from core.staff.accounts import add_staff, set_password
from core.states import DeliveryState, EnvelopeState, PartyRole
from core.timezone import JST
from gateway import intake
from gateway.app import create_app
from gateway.cli_staff import password_policy
from gateway.runtime import Gateway, access_code_policy
from gateway.server import serve_in_thread
from gateway.settings import FolderSourceSettings, Settings
from schedules.intake import IntakeResult, take_in_source

INPUT = Path("demo-input")
# The demo's sources: (name, mapping, folder), synced in this order so that the award finds its
# contractor and usage request already there and becomes an envelope at once.
REGISTRY = ("demo-registry", "registry.yaml", "registry")
USAGE_REQUESTS = ("demo-usage-requests", "usage_requests.yaml", "usage_requests")
AWARDS = ("demo-awards", "municipal.yaml", "awards")
SOURCES = (REGISTRY, USAGE_REQUESTS, AWARDS)
_FULL_WIDTH = str.maketrans("0123456789-,", "０１２３４５６７８９－，")


@dataclass(frozen=True)
class DemoResult:
    """Where the demo left its results."""

    envelope_id: str
    management_number: str
    signed: list[Path]
    certificate: Path
    input: Path
    syncs: list[IntakeResult]


def _font() -> str:
    path = find_cjk_font()
    if path is not None:
        pdfmetrics.registerFont(TTFont("DemoJP", str(path)))
        return "DemoJP"
    pdfmetrics.registerFont(UnicodeCIDFont("HeiseiMin-W3"))
    return "HeiseiMin-W3"


def _pdf(title: str, pages: list[list[str]]) -> bytes:
    font = _font()
    out = io.BytesIO()
    pdf = canvas.Canvas(out, pagesize=A4)
    pdf.setTitle(title)
    width, height = A4
    for lines in pages:
        pdf.setFont(font, 18)
        pdf.drawCentredString(width / 2, height - 80, title)
        pdf.setFont(font, 11)
        y = height - 130
        for line in lines:
            pdf.drawString(60, y, line)
            y -= 20
        pdf.showPage()
    pdf.save()
    return out.getvalue()


def sample_documents(buyer: str, day: dt.date) -> list[DocumentInput]:
    """The two demo PDFs for a contract concluded on ``day``: a two-page contract and a
    one-page 請書 for the same work, its period and delivery after ``day``."""
    ends = era_date(day + dt.timedelta(days=110), full_width=False)
    contract = _pdf(
        "工事請負契約書",
        [
            [
                f"発注者 {buyer}(以下「甲」という。)と受注者 株式会社髙橋建設(以下「乙」という。)は、",
                "次のとおり工事請負契約を締結する。",
                "1 工事名  市道１号線舗装補修工事",
                f"2 工事場所  {buyer}中央町地内",
                f"3 工期  契約締結の日の翌日から{ends}まで",
                "4 請負代金額  金31,389,000円(うち取引に係る消費税及び地方消費税の額 金2,853,545円)",
                "5 契約保証金  免除(電子保証による)",
            ],
            [
                "この契約の締結を証するため、本契約書の電磁的記録を作成し、",
                "甲及び乙が合意の後電子署名を行い、各自その電磁的記録を保管する。",
                f"甲  {buyer}  (電子署名)",
                "乙  株式会社髙橋建設 代表取締役 髙橋 一郎 (電子署名)",
            ],
        ],
    )
    ukesho = _pdf(
        "請書",
        [
            [
                "下記のとおり請け負います。",
                "件名  市道１号線舗装補修工事",
                "金額  金31,389,000円",
                f"工期  契約締結の日の翌日から{ends}まで",
            ]
        ],
    )
    return [
        DocumentInput(name="工事請負契約書.pdf", data=contract),
        DocumentInput(name="請書.pdf", data=ukesho),
    ]


def era_date(day: dt.date, *, full_width: bool = True) -> str:
    """``day`` as an era date, the way exports of Japanese buyers write it: 令和８年１０月１日
    (``full_width=False``: 令和8年10月1日, as a person types it)."""
    text = f"令和{day.year - 2018}年{day.month}月{day.day}日"
    return text.translate(_FULL_WIDTH) if full_width else text


def _cp932_csv(records: list[dict[str, str]]) -> bytes:
    """Records under a header row, the way Excel saves a CSV on a Japanese PC: CP932, CRLF."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue().encode("cp932")


def write_sample(folder: Path, *, buyer: str, award_id: str, day: dt.date) -> None:
    """The demo's inputs under ``folder``: a bidder registry, a usage request covering all of the
    contractor's awards, an award export naming ``award_id`` (plus one paper contract the mapping
    skips), the contract PDFs at the paths the mapping names, and the mappings themselves."""
    mappings = folder / "mappings"
    mappings.mkdir(parents=True, exist_ok=True)
    for _, mapping, inbox in SOURCES:
        shutil.copyfile(intake.SAMPLE_MAPPINGS / mapping, mappings / mapping)
        (folder / inbox).mkdir(exist_ok=True)
    code = "000123".translate(_FULL_WIDTH)
    email = "ichiro@takahashi-kensetsu.example.co.jp"
    registry = {
        "業者番号": code,
        "商号又は名称": "株式会社髙橋建設",
        "法人番号": "",
        "メールアドレス": f"{email}; jimu@takahashi-kensetsu.example.co.jp",
    }
    usage_request = {
        "業者番号": code,
        "商号又は名称": "㈱髙橋建設",
        "案件番号": "",  # every award of this contractor
        "契約締結権限者氏名": "髙橋 一郎",
        "役職": "代表取締役",
        "メールアドレス": email,
        "アクセスコード": "４８２１",
        "担当部署": "工事部",
        "担当者氏名": "鈴木 次郎",
        "電話番号": "０３-1234-5678",
        "提出日": era_date(day),
    }
    award = {
        "案件番号": award_id.translate(_FULL_WIDTH),
        "案件名": "市道１号線舗装補修工事",
        "開札日": era_date(day),
        "落札金額": "￥３１，３８９，０００",
        "課所名": "土木課",
        "落札業者名": "㈱髙橋建設",
        "業者番号": code,
        "電子契約": "希望",
    }
    paper = award | {
        "案件番号": f"{award_id}-P".translate(_FULL_WIDTH),
        "案件名": "公民館屋根改修工事",
        "落札金額": "￥２，４２０，０００",
        "落札業者名": "有限会社サンプル工務店",
        "業者番号": "000456",
        "電子契約": "不要",
    }
    (folder / REGISTRY[2] / "入札参加資格者名簿.csv").write_bytes(_cp932_csv([registry]))
    (folder / USAGE_REQUESTS[2] / "電子契約利用申出書.csv").write_bytes(_cp932_csv([usage_request]))
    (folder / AWARDS[2] / f"落札一覧_{award_id}.csv").write_bytes(_cp932_csv([award, paper]))
    documents = folder / "契約書" / f"{day:%Y%m%d}"
    documents.mkdir(parents=True, exist_ok=True)
    contract, ukesho = sample_documents(buyer, day)
    (documents / f"{award_id}.pdf").write_bytes(contract.data)
    (documents / f"{award_id}_請書.pdf").write_bytes(ukesho.data)


def _settings_with_sources(settings: Settings, folder: Path) -> Settings:
    """These settings as if the demo's three folders were configured sources, so that their
    connectors are built the way `keiyaku sync` builds any folder source."""
    sources = {
        name: FolderSourceSettings(
            kind="folder",
            mapping=folder / "mappings" / mapping,
            path=folder / inbox,
            read_lock=ReadLockConfig(mode="none"),  # written whole before the sync starts
            documents_dir=folder,
        )
        for name, mapping, inbox in SOURCES
    }
    return settings.model_copy(update={"sources": sources})


def _next_award_id(gateway: Gateway, day: dt.date) -> str:
    with gateway.sessions() as session:
        count = session.scalar(select(func.count()).where(Award.source == AWARDS[0])) or 0
    return f"R{day.year - 2018}-{count + 1:03d}"


def take_in_sample(gateway: Gateway, folder: Path) -> list[IntakeResult]:
    """Sync the demo's sources through the intake path `keiyaku sync` uses."""
    settings = gateway.settings
    sampled = _settings_with_sources(settings, folder)
    policy = intake.policy(settings, access_codes=access_code_policy(settings))
    return [
        take_in_source(
            sessions=gateway.sessions,
            runtime=gateway.runtime,
            policy=policy,
            spec=intake.source_spec(sampled, name),
            authorities=intake.authorities(settings),
            trigger="demo",
            batch_size=settings.intake.batch_size,
        )
        for name, _, _ in SOURCES
    ]


def _field_value(label: str, day: dt.date, signer: str) -> str:
    return era_date(day, full_width=False) if label.endswith("日") else signer


# --- the people of the demo --------------------------------------------------------------------

DEMO_ACTOR = "keiyaku demo"
CLERK = ("demo-clerk@keiyaku-demo.invalid", "デモ 契約担当")
# What the contractor wrote on its usage request (write_sample): its access code.
CONTRACTOR_CODE = "4821"
MAIL_WAIT_SECONDS = 120.0
# The 前払金保証 the contractor registers on the signing pages (seed 003: the contractor enters
# 保証契約番号 + 認証キー in the e-contract system). The number is made per envelope, since a
# number registered on another contract is refused; the key is random per run.
GUARANTEE_ISSUER = "西日本建設業保証株式会社(デモ)"


def guarantee_number(management_number: str) -> str:
    """A sample 保証契約番号 of this demo envelope (10 digits, as the issuers print them)."""
    digest = hashlib.sha256(management_number.encode("utf-8")).hexdigest()
    return "20" + str(int(digest[:12], 16))[-8:].zfill(8)


@dataclass
class DemoStaff:
    """The staff accounts the demo logs in with; passwords are random per run, kept in memory."""

    passwords: dict[str, str]
    # Accounts the demo did not make (someone's real account): never touched, so never used.
    foreign: set[str]


def _made_by_demo(session: Session, email: str) -> bool:
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.action == "staff.add", AuditEvent.actor == DEMO_ACTOR)
    )
    return any(e.detail.get("email") == email for e in events)


def register_staff(gateway: Gateway) -> DemoStaff:
    """What an admin does before the first contract (`keiyaku staff add --password-stdin`): a
    clerk who sends, and an account for each official of the signing-authority register, who
    signs as staff. An account the demo made on an earlier run gets a new random password; an
    account it did not make is left alone."""
    settings = gateway.settings
    policy = password_policy(settings)
    people = [(CLERK[0], CLERK[1], "sender", "all", settings.buyer.department)]
    people += [
        (a.email.strip().lower(), a.name, "signer", "own", settings.buyer.department)
        for a in settings.intake.signing_authorities
    ]
    result = DemoStaff(passwords={}, foreign=set())
    with gateway.sessions() as session:
        for email, name, roles, scope, department in people:
            if email in result.passwords or email in result.foreign:
                continue
            member = session.scalars(select(Staff).where(Staff.email == email)).first()
            if member is not None and not _made_by_demo(session, email):
                result.foreign.add(email)
                continue
            if member is None:
                member = add_staff(session=session, name=name, email=email, roles=roles,
                                   scope=scope, department=department, actor=DEMO_ACTOR)  # fmt: skip
                session.flush()
            member.disabled = False
            password = f"Demo-{secrets.token_urlsafe(18)}-9a"
            set_password(
                session=session, staff=member, password=password, policy=policy, actor=DEMO_ACTOR
            )
            result.passwords[email] = password
        session.commit()
    return result


# --- the real surfaces: the HTTP app, the maildir ------------------------------------------------


def _demo_gateway(gateway: Gateway, folder: Path) -> Gateway:
    """The same gateway with its mail in a maildir of the demo's own (whatever the config's
    transport), so the demo reads the mails the way a person would find them in a mailbox."""
    mail = gateway.settings.mail.model_copy(
        update={"transport": "maildir", "maildir": folder / "mail"}
    )
    return dataclasses.replace(gateway, settings=gateway.settings.model_copy(update={"mail": mail}))


_LINK = re.compile(r"https?://\S+?(/(?:sign|admin/sign)/[A-Za-z0-9_-]+)(?=\s)")
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_FIELD = re.compile(r'<input class="field-box"[^>]*>')


class MailReader:
    """The demo's mailbox: mails to one address, each read once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: set[str] = set()

    def wait_for(
        self, address: str, needle: str, wake: Any = None, *, subject: str | None = None
    ) -> str:
        """The body of the next unread mail to ``address`` that contains ``needle`` (and whose
        subject is ``subject``, when given)."""
        deadline = time.monotonic() + MAIL_WAIT_SECONDS
        while time.monotonic() < deadline:
            box = mailbox.Maildir(str(self.path), create=True)
            for key, message in sorted(box.items(), key=lambda item: item[1].get_date()):
                if key in self.seen or address.lower() not in str(message["To"]).lower():
                    continue
                parsed = _parsed(message)
                if subject is not None and str(parsed["Subject"]) != subject:
                    continue
                body = _body(parsed)
                if needle in body:
                    self.seen.add(key)
                    return body
            if wake is not None:
                wake()
            time.sleep(0.2)
        raise RecordError(
            "demo.no_mail",
            f"no mail to {address} about {needle} arrived within {MAIL_WAIT_SECONDS:.0f} s",
            f"{address} 宛てのメールが届きませんでした。",
        )


def _parsed(message: Any) -> Any:
    return email.message_from_bytes(bytes(message), policy=email.policy.default)


def _body(parsed: Any) -> str:
    part = parsed.get_body(preferencelist=("plain",))
    return str(part.get_content()) if part is not None else ""


def _csrf(html: str) -> str:
    found = _CSRF.search(html)
    if found is None:
        raise RecordError("demo.page", "the page has no form", "画面にフォームがありません。")
    return found.group(1)


def _fields(html: str) -> list[tuple[str, str]]:
    """(input name, label) of the party's text boxes on a documents page."""
    boxes = []
    for tag in _FIELD.findall(html):
        name = re.search(r'name="([^"]+)"', tag)
        label = re.search(r'aria-label="([^"]*)"', tag)
        if name is not None and label is not None:
            boxes.append((name.group(1), html_lib.unescape(label.group(1))))
    return boxes


def _expect(response: httpx.Response, *codes: int) -> httpx.Response:
    if response.status_code not in codes:
        raise RecordError(
            "demo.page",
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {_page_message(response.text)}",
            "デモの操作が画面に受け付けられませんでした。",
        )
    return response


def _staff_login(client: httpx.Client, email_address: str, password: str, target: str) -> str:
    """Log in on the staff login form and come back to ``target``; returns that page."""
    login = _expect(client.get("/admin/login", params={"next": target}), 200)
    form = {"csrf_token": _csrf(login.text), "email": email_address, "password": password,
            "next": target}  # fmt: skip
    _expect(client.post("/admin/login", data=form), 303)
    page = _expect(client.get(target), 200)
    return page.text


def _fill_and_complete(
    client: httpx.Client, base: str, page: str, day: dt.date, name: str, extra: dict[str, str]
) -> None:
    """The documents page's two steps: fill the boxes, 完了する, 署名手続きを完了する."""
    form = {"csrf_token": _csrf(page), **extra}
    for field, label in _fields(page):
        form[field] = _field_value(label, day, name)
    done = _expect(client.post(f"{base}/complete", data=form), 303)
    _expect(client.get(done.headers["location"]), 200)


def _act(
    client: httpx.Client,
    mails: MailReader,
    party: Party,
    envelope: Envelope,
    staff: DemoStaff,
    day: dt.date,
    wake: Any,
    guarantee_entry: str = "off",
) -> str:
    """One party acts on the mail it received; returns how it signed in. The contractor
    registers a guarantee on the signing pages when the buyer lets it (``guarantee_entry``)."""
    body = mails.wait_for(party.email, envelope.management_number, wake)
    found = _LINK.search(body)
    if found is None:
        raise RecordError(
            "demo.no_link", "the request mail has no link", "依頼メールにURLがありません。"
        )
    path = found.group(1)
    if path.startswith("/admin/sign/"):
        password = staff.passwords.get(party.email.lower())
        if password is None:
            raise RecordError(
                "demo.foreign_staff",
                f"{party.email} is an existing staff account; the demo does not sign as it",
                f"{party.email} は既存の職員アカウントのため、デモでは署名しません。",
            )
        page = _staff_login(client, party.email, password, path)
        _fill_and_complete(client, path, page, day, party.name, {"password": password})
        return "staff login"
    code_page = _expect(client.get(path), 200)
    form = {"csrf_token": _csrf(code_page.text), "access_code": CONTRACTOR_CODE}
    _expect(client.post(path, data=form), 303)
    documents = _expect(client.get(f"{path}/documents"), 200)
    entry = guarantee_entry
    if entry in ("before", "both"):
        _register_guarantee(client, path, envelope.management_number)
    _fill_and_complete(client, path, documents.text, day, party.name, {})
    if entry == "after":
        _register_guarantee(client, path, envelope.management_number)
    return "link + access code"


def _register_guarantee(client: httpx.Client, path: str, management_number: str) -> None:
    """The contractor's signer opens 電子保証の登録 and registers its 前払金保証."""
    page = _expect(client.get(f"{path}/guarantees"), 200)
    form = {
        "csrf_token": _csrf(page.text),
        "kind": "advance",
        "contract_number": guarantee_number(management_number),
        "authentication_key": secrets.token_hex(5).upper(),
        "issuer": GUARANTEE_ISSUER,
    }
    saved = _expect(client.post(f"{path}/guarantees", data=form), 303)
    _expect(client.get(saved.headers["location"]), 200)


def _wait_completed(gateway: Gateway, envelope_id: str, wake: Any) -> None:
    deadline = time.monotonic() + MAIL_WAIT_SECONDS
    while time.monotonic() < deadline:
        with gateway.sessions() as session:
            envelope = get_envelope(session=session, envelope_id=envelope_id)
            if envelope.state is EnvelopeState.COMPLETED:
                return
            if (
                envelope.state is not EnvelopeState.SEALING
                and envelope.state is not EnvelopeState.SENT
            ):
                break
        wake()
        time.sleep(0.2)
    raise RecordError(
        "demo.not_completed",
        f"envelope {envelope_id} did not complete",
        "デモの封筒の締結が完了しませんでした。",
    )


def _wait_mail_sent(gateway: Gateway, envelope_id: str, wake: Any) -> None:
    """Until no mail of the envelope is left in the outbox to send (each delivered, or given
    up on: then it is named)."""
    deadline = time.monotonic() + MAIL_WAIT_SECONDS
    while time.monotonic() < deadline:
        with gateway.sessions() as session:
            left = session.execute(
                select(Delivery.idempotency_key, Delivery.state, Delivery.last_error).where(
                    Delivery.envelope_id == envelope_id,
                    Delivery.target == MAIL_TARGET,
                    Delivery.state != DeliveryState.DELIVERED,
                )
            ).all()
        if not left:
            return
        dead = [row for row in left if row.state is DeliveryState.DEAD]
        if dead:
            raise RecordError(
                "demo.mail_failed",
                f"mail {dead[0].idempotency_key} was not sent: {dead[0].last_error}",
                "デモのメールを送信できませんでした。",
            )
        wake()
        time.sleep(0.2)
    raise RecordError(
        "demo.mail_pending",
        f"{len(left)} mail(s) of envelope {envelope_id} still unsent after "
        f"{MAIL_WAIT_SECONDS:.0f} s",
        "デモのメールの送信が終わりませんでした。",
    )


def run_demo(gateway: Gateway, *, output: Path) -> DemoResult:
    """Take a sample award export in, then act as each person does: the clerk sends the draft
    from the staff pages, the contractor signs by the mailed link and its access code, the
    official logs in to the staff pages and signs; copy the signed PDFs and certificate to
    ``output``."""
    runtime = gateway.runtime
    settings = gateway.settings
    day = dt.datetime.now(JST).date()
    folder = settings.path(INPUT)
    award_id = _next_award_id(gateway, day)
    write_sample(folder, buyer=settings.buyer.name, award_id=award_id, day=day)
    staff = register_staff(gateway)
    syncs = take_in_sample(gateway, folder)
    with gateway.sessions() as session:
        award = get_award(session=session, source=AWARDS[0], award_id=award_id)
        if award.envelope_id is None:
            problems = [e.describe() for r in syncs for e in r.line_errors]
            raise RecordError(
                "demo.no_envelope",
                f"the demo award {award_id} did not become an envelope: {award.note or 'see below'}",
                f"デモの落札情報 {award_id} から封筒を作成できませんでした。",
                details={"problems": problems},
            )
        envelope_id = award.envelope_id
    demo_gateway = _demo_gateway(gateway, folder)
    mails = MailReader(settings.path(folder / "mail"))
    app = create_app(demo_gateway, run_mailer=True, run_signing=True)
    # The demo's own server is reached over loopback only; it stands in for the TLS a deployment
    # terminates at its proxy, so its cookies are not marked Secure (with an https public_url,
    # as production requires, the browser-like client would otherwise never send them back).
    app.state.context.secure_cookies = False
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        context = app.state.context

        def wake() -> None:
            # Look for due mail and signatures now rather than at the next interval.
            context.wake_mailer()
            context.wake_signer()

        with gateway.sessions() as session:
            envelope = get_envelope(session=session, envelope_id=envelope_id)
        if envelope.state is EnvelopeState.DRAFT:
            # The clerk opens the draft on the staff pages and sends it.
            detail = f"/admin/envelopes/{envelope_id}"
            page = _staff_login(client, CLERK[0], staff.passwords[CLERK[0]], detail)
            _expect(client.post(f"{detail}/send", data={"csrf_token": _csrf(page)}), 303)
            client.cookies.clear()
        for party in list(envelope.parties):
            if party.role is PartyRole.CC:
                continue
            _act(client, mails, party, envelope, staff, day, wake,
                 settings.pages.guarantee_entry)  # fmt: skip
            client.cookies.clear()  # the next person uses their own browser
        _wait_completed(gateway, envelope_id, wake)
        # 電子署名完了のお知らせ goes to every party and the sender: the demo ends once the
        # outbox has handed them to the demo's maildir (and the contractor finds its own there),
        # not with them still queued for whatever transport the config names.
        _wait_mail_sent(gateway, envelope_id, wake)
        contractor = next(p for p in envelope.parties if p.staff_id is None)
        mails.wait_for(contractor.email, f"封筒: {envelope.management_number}", wake,
                       subject="電子署名完了のお知らせ")  # fmt: skip
    with gateway.sessions() as session:
        envelope = get_envelope(session=session, envelope_id=envelope_id)
        output = output / envelope.management_number
        if output.exists():
            shutil.rmtree(output)
        output.mkdir(parents=True)
        signed = []
        for name, data in current_documents(runtime=runtime, envelope=envelope):
            target = output / (name if name.lower().endswith(".pdf") else f"{name}.pdf")
            target.write_bytes(data)
            signed.append(target)
        certificate = output / "締結証明書.pdf"
        certificate.write_bytes(completion_certificate(runtime=runtime, envelope=envelope))
        return DemoResult(
            envelope.id, envelope.management_number, signed, certificate, folder, syncs
        )


def _page_message(html: str) -> str:
    """What an error page says to its reader (its notice), else the start of the body."""
    import re

    found = re.search(r'class="(?:notice|error)[^"]*"[^>]*>([^<]+)<', html)
    return found.group(1).strip() if found else html[:300]
