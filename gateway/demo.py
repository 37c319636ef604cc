"""`keiyaku demo`: one envelope from start to signed PDFs on the embedded defaults.

Two documents (a construction contract and its 請書), three parties in routing order: the
contract section's internal pre-approval, the contractor's signer (who fills two text boxes), and
the official who signs for the buyer. Each acts the way the signing pages will make them act.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from reportlab.lib.pagesizes import A4
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas

from core.certificate import find_cjk_font
from core.envelopes import (
    DocumentInput,
    FieldInput,
    PartyInput,
    approve,
    completion_certificate,
    create_envelope,
    current_documents,
    record_view,
    send_envelope,
)
from core.states import EnvelopeState, PartyRole
from gateway.runtime import Gateway


@dataclass(frozen=True)
class DemoResult:
    """Where the demo left its results."""

    envelope_id: str
    management_number: str
    signed: list[Path]
    certificate: Path


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
                "現場代理人氏名:",
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
                "記入日:",
            ]
        ],
    )
    return [
        DocumentInput(name="工事請負契約書.pdf", data=contract),
        DocumentInput(name="請書.pdf", data=ukesho),
    ]


def run_demo(gateway: Gateway, *, output: Path) -> DemoResult:
    """Create, send and complete one envelope; copy its signed PDFs and certificate to ``output``."""
    runtime = gateway.runtime
    settings = gateway.settings
    department = f"{settings.buyer.name} {settings.buyer.department}"
    parties = [
        PartyInput(PartyRole.APPROVER, "契約 花子", "keiyaku-kacho@city.example.jp", department),
        PartyInput(
            PartyRole.SIGNER,
            "髙橋 一郎",
            "ichiro@takahashi-kensetsu.example.co.jp",
            "株式会社髙橋建設",
        ),
        PartyInput(
            PartyRole.SIGNER, "開発 太郎", "shicho@city.example.jp", f"{settings.buyer.name}長"
        ),
    ]
    fields = [
        FieldInput(
            document=0, party=1, label="現場代理人氏名", page=1, rect=(160.0, 568.0, 360.0, 586.0)
        ),
        FieldInput(document=1, party=1, label="記入日", page=1, rect=(110.0, 628.0, 300.0, 646.0)),
    ]
    with gateway.sessions() as session:
        envelope = create_envelope(
            session=session,
            runtime=runtime,
            title="市道１号線舗装補修工事",
            creator=department,
            creator_email="keiyaku@city.example.jp",
            documents=sample_documents(settings.buyer.name),
            parties=parties,
            fields=fields,
            counterparty="株式会社髙橋建設",
            amount=Decimal("31389000"),
            actor="demo",
        )
        session.commit()
        send_envelope(session=session, runtime=runtime, envelope_id=envelope.id, actor=department)
        session.commit()
        # Each party acts in turn, as the signing pages will: open, fill, complete.
        for party in list(envelope.parties):
            record_view(session=session, envelope_id=envelope.id, party_id=party.id, ip="127.0.0.1")
            session.commit()
            values = {
                f.id: ("令和7年10月1日" if f.label == "記入日" else "鈴木 次郎")
                for f in party.fields
            }
            method = "email+access_code" if party.company == "株式会社髙橋建設" else "staff_login"
            approve(
                session=session,
                runtime=runtime,
                envelope_id=envelope.id,
                party_id=party.id,
                values=values,
                auth_method=method,
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
            target = output / name
            target.write_bytes(data)
            signed.append(target)
        certificate = output / "締結証明書.pdf"
        certificate.write_bytes(completion_certificate(runtime=runtime, envelope=envelope))
        return DemoResult(envelope.id, envelope.management_number, signed, certificate)
