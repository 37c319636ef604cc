"""`keiyaku demo`: the whole flow on the embedded defaults, from an award export to the signed
PDFs.

It writes a sample into ``demo-input/`` next to the config: a bidder registry, a usage request
(電子契約利用申出書) and an award export (CP932, era dates, full-width digits) with the contract
PDFs the mapping names, plus copies of the worked-example mappings. It syncs them through the real
intake path as three folder sources that exist only for the demo (the admin's config is not
touched): the contractor is matched by its registry code, the buyer's signer comes from the
signing-authority register, the deadlines from the office calendar. Then it sends the envelope as
staff would, and each party (the contractor's signer, who fills the signing-date box, then the
official) acts the way the signing pages make them act. Each run takes in a new award number, so
running it again makes a new envelope.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from reportlab.lib.pagesizes import A4
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas
from sqlalchemy import func, select

from core.certificate import find_cjk_font
from core.envelopes import (
    DocumentInput,
    approve,
    completion_certificate,
    current_documents,
    get_envelope,
    record_view,
    send_envelope,
)
from core.errors import RecordError
from core.intake import get_award
from core.model import Award
from core.states import EnvelopeState
from gateway import intake
from gateway.runtime import Gateway, access_code_policy
from gateway.settings import FolderSourceSettings, ReadLockSettings, Settings
from schedules.sync import SyncResult, sync_source

JST = ZoneInfo("Asia/Tokyo")
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
    syncs: list[SyncResult]


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


def sample_documents(buyer: str) -> list[DocumentInput]:
    """The two demo PDFs: a two-page contract and a one-page 請書."""
    contract = _pdf(
        "工事請負契約書",
        [
            [
                f"発注者 {buyer}(以下「甲」という。)と受注者 株式会社髙橋建設(以下「乙」という。)は、",
                "次のとおり工事請負契約を締結する。",
                "1 工事名  市道１号線舗装補修工事",
                "2 工事場所  開発市中央町地内",
                "3 工期  契約締結の日の翌日から令和8年3月19日まで",
                "4 請負代金額  金31,389,000円(うち取引に係る消費税及び地方消費税の額 金2,853,545円)",
                "5 契約保証金  免除(電子保証による)",
            ],
            [
                "この契約の締結を証するため、本契約書の電磁的記録を作成し、",
                "甲及び乙が合意の後電子署名を行い、各自その電磁的記録を保管する。",
                "甲  開発市長  (電子署名)",
                "乙  株式会社髙橋建設 代表取締役 髙橋 一郎 (電子署名)",
            ],
        ],
    )
    ukesho = _pdf(
        "請書",
        [
            [
                "下記のとおり請け負います。",
                "件名  市道１号線舗装補修工事に係る測量業務",
                "金額  金1,980,000円",
                "納期  令和8年1月30日",
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
    contract, ukesho = sample_documents(buyer)
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
            read_lock=ReadLockSettings(mode="none"),  # written whole before the sync starts
            documents_dir=folder,
        )
        for name, mapping, inbox in SOURCES
    }
    return settings.model_copy(update={"sources": sources})


def _next_award_id(gateway: Gateway, day: dt.date) -> str:
    with gateway.sessions() as session:
        count = session.scalar(select(func.count()).where(Award.source == AWARDS[0])) or 0
    return f"R{day.year - 2018}-{count + 1:03d}"


def sync_sample(gateway: Gateway, folder: Path) -> list[SyncResult]:
    """Sync the demo's sources through the intake path `keiyaku sync` uses."""
    settings = gateway.settings
    sampled = _settings_with_sources(settings, folder)
    policy = intake.policy(settings, access_codes=access_code_policy(settings))
    return [
        sync_source(
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


def run_demo(gateway: Gateway, *, output: Path) -> DemoResult:
    """Take a sample award export in, send its envelope, have every party approve; copy the
    signed PDFs and certificate to ``output``."""
    runtime = gateway.runtime
    settings = gateway.settings
    staff = f"{settings.buyer.name} {settings.buyer.department}"
    day = dt.datetime.now(JST).date()
    folder = settings.path(INPUT)
    award_id = _next_award_id(gateway, day)
    write_sample(folder, buyer=settings.buyer.name, award_id=award_id, day=day)
    syncs = sync_sample(gateway, folder)
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
        envelope = get_envelope(session=session, envelope_id=award.envelope_id)
        if envelope.state is EnvelopeState.DRAFT:
            send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor=staff)
            session.commit()
        # Each party acts in turn, as the signing pages make them: open, fill, complete.
        for party in list(envelope.parties):
            record_view(session=session, envelope_id=envelope.id, party_id=party.id, ip="127.0.0.1")
            session.commit()
            values = {f.id: _field_value(f.label, day, party.name) for f in party.fields}
            contractor = party.company == envelope.counterparty
            approve(
                session=session,
                runtime=runtime,
                envelope_id=envelope.id,
                party_id=party.id,
                values=values,
                auth_method="email+access_code" if contractor else "staff_login",
                ip="127.0.0.1",
            )
        session.refresh(envelope)
        assert envelope.state is EnvelopeState.COMPLETED
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
