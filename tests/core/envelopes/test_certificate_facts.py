"""What the completion certificate states comes from what was recorded and verified: the
creation method recorded with the event, and a status line computed from verifying the files."""

from __future__ import annotations

import datetime as dt
import subprocess
from decimal import Decimal
from pathlib import Path

from sqlalchemy.orm import Session

from core.envelopes.certificate_facts import check_document, operation_via, status_line
from core.envelopes.creation import DocumentInput, PartyInput, create_envelope
from core.envelopes.documents import current_documents
from core.envelopes.lifecycle import get_envelope, send_envelope
from core.envelopes.sealing import completion_certificate
from core.records.audit import list_events
from core.runtime import Runtime
from core.states import PartyRole
from tests.fixtures.envelopes import (
    complete_parties,
    ensure_staff,
    give_access_codes,
    one_signer_envelope,
)
from tests.fixtures.pdfs import make_pdf

AT = dt.datetime(2026, 4, 1, 1, 2, 3, tzinfo=dt.UTC)


def test_the_creation_method_is_recorded_from_the_surface(session: Session) -> None:
    ensure_staff(session, "kakari@city.example.jp", name="契約 係員")
    session.commit()
    assert operation_via(session=session, actor="api:e-bid") == {"method": "api", "client": "e-bid"}
    assert operation_via(session=session, actor="KAKARI@city.example.jp") == {
        "method": "staff",
        "staff_name": "契約 係員",
        "staff_email": "kakari@city.example.jp",
    }
    assert operation_via(session=session, actor="intake", source="portal") == {
        "method": "intake",
        "source": "portal",
    }
    assert operation_via(session=session, actor="誰か")["method"] == "other"


def test_the_status_line_is_what_verifying_the_files_found(
    session: Session, dev_runtime: Runtime
) -> None:
    envelope = one_signer_envelope(session, dev_runtime, "物品売買契約")
    send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="api:e-bid")
    session.commit()
    complete_parties(session, dev_runtime, envelope.id)
    envelope = get_envelope(session=session, envelope_id=envelope.id)
    created, sent = [
        e.detail["via"]
        for e in list_events(session=session, envelope_id=envelope.id)
        if e.action in ("envelope.created", "envelope.sent")
    ]
    assert sent == {"method": "api", "client": "e-bid"}
    assert created == {"method": "other", "actor": "開発市 契約課"}

    ((name, data),) = current_documents(runtime=dev_runtime, envelope=envelope)
    good = check_document(dev_runtime.signing, name=name, data=data)
    assert good.report.ok and good.signatures == 1
    line = status_line([good], AT)
    assert line.startswith("2026/04/01 10:02:03 (JST)に全1文書の電子署名1件")
    assert "すべて有効" in line

    # One byte changed inside the signed range: the same computation says so.
    at = data.index(b"/MediaBox")
    tampered = data[:at] + b"/MediaBoy" + data[at + len(b"/MediaBox") :]
    bad = check_document(dev_runtime.signing, name=name, data=tampered)
    assert not bad.report.ok
    line = status_line([good, bad], AT)
    assert "有効と確認できませんでした: 契約書.pdf" in line and "すべて有効" not in line


def test_the_certificate_names_the_staff_member_and_the_api_client(
    session: Session, dev_runtime: Runtime, tmp_path: Path
) -> None:
    ensure_staff(session, "kakari@city.example.jp", name="契約 係員")
    envelope = create_envelope(
        session=session,
        runtime=dev_runtime,
        title="物品売買契約",
        creator="開発市 契約課",
        documents=[DocumentInput("契約書.pdf", make_pdf(pages=1))],
        parties=[PartyInput(PartyRole.SIGNER, "署名者 一郎", "s1@example.jp", "株式会社一")],
        actor="kakari@city.example.jp",
        amount=Decimal(1200000),
    )
    give_access_codes(session, envelope)
    send_envelope(session=session, runtime=dev_runtime, envelope_id=envelope.id, actor="api:e-bid")
    session.commit()
    complete_parties(session, dev_runtime, envelope.id)
    envelope = get_envelope(session=session, envelope_id=envelope.id)
    path = tmp_path / "certificate.pdf"
    path.write_bytes(completion_certificate(runtime=dev_runtime, envelope=envelope))
    text = subprocess.run(
        ["pdftotext", str(path), "-"], capture_output=True, text=True, check=True
    ).stdout
    flat = "".join(text.split())
    assert "職員ログイン(契約係員)" in flat and "kakari@city.example.jp" in flat
    assert "API連携(クライアント:e-bid)" in flat
    assert "その他" not in flat
