"""Guarantee references (電子保証): validation, the secret key at rest, and notice PDFs."""

from __future__ import annotations

import io
import logging
from dataclasses import replace

import pytest
from pypdf import PdfReader, PdfWriter
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from core.blobs import BlobStore
from core.envelopes.guarantees import (
    GuaranteeInput,
    add_guarantee,
    authentication_key,
    import_notice,
    list_guarantees,
    masked_key,
    parse_kind,
    read_notice,
    remove_guarantee,
)
from core.errors import GuaranteeError, NotFoundError
from core.model import Amendment, Envelope, GuaranteeKind, GuaranteeReference
from core.records.audit import list_events
from core.runtime import Runtime
from tests.fixtures.envelopes import one_signer_envelope
from tests.fixtures.notices import make_notice
from tests.fixtures.pdfs import make_pdf

KEY = "Q7xK2mP9aZ"
ISSUER = "西日本建設業保証株式会社"


def _envelope(session: Session, runtime: Runtime, title: str = "〇〇道路改良工事") -> Envelope:
    return one_signer_envelope(session, runtime, title)


def _ref(**overrides: object) -> GuaranteeInput:
    values: dict[str, object] = {
        "kind": "前払金保証",
        "contract_number": "2070004426",
        "authentication_key": KEY,
        "issuer": ISSUER,
    }
    values.update(overrides)
    return GuaranteeInput(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("layout", ["table", "stacked", "inline"])
@pytest.mark.parametrize(
    ("printed", "kind"),
    [
        ("前払金保証", GuaranteeKind.ADVANCE),
        ("中間前払金保証", GuaranteeKind.INTERIM_ADVANCE),
        ("契約保証", GuaranteeKind.CONTRACT),
    ],
)
def test_a_notice_yields_kind_number_key_project_and_buyer(
    layout: str, printed: str, kind: GuaranteeKind
) -> None:
    notice = read_notice(
        make_notice(kind=printed, contract_number="２０７０００４４２６", layout=layout)
    )
    assert notice.kind is kind
    assert notice.contract_number == "2070004426"  # full-width digits normalised
    assert notice.authentication_key == KEY
    assert notice.project_name == "〇〇道路改良工事"
    assert notice.buyer == "開発市長"
    assert notice.issuer == ISSUER
    assert KEY not in repr(notice)


def test_other_pdfs_are_not_notices(tmp_path: object) -> None:
    with pytest.raises(GuaranteeError) as info:
        read_notice(make_pdf(pages=1))  # a contract, not a notice
    assert info.value.code == "guarantee.not_a_notice"
    assert "電子証書閲覧用「認証キー」等のお知らせ" in info.value.message_ja
    with pytest.raises(GuaranteeError, match="guarantee.not_a_notice"):
        read_notice(b"PK\x03\x04 a zip file")
    with pytest.raises(GuaranteeError, match="guarantee.notice_unreadable"):
        read_notice(b"%PDF-1.7\n garbage without objects")
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_notice())))
    writer.encrypt("secret")
    encrypted = io.BytesIO()
    writer.write(encrypted)
    with pytest.raises(GuaranteeError, match="encrypted"):
        read_notice(encrypted.getvalue())


def test_a_notice_missing_a_row_says_which() -> None:
    with pytest.raises(GuaranteeError) as info:
        read_notice(make_notice(omit="認証キー"))
    assert info.value.code == "guarantee.notice_incomplete"
    assert info.value.details["missing"] == ["authentication_key"]
    assert "認証キー" in info.value.message_ja


def test_kinds_by_code_or_japanese_name() -> None:
    assert parse_kind("advance") is GuaranteeKind.ADVANCE
    assert parse_kind("前払") is GuaranteeKind.ADVANCE
    assert parse_kind("中間前払金保証") is GuaranteeKind.INTERIM_ADVANCE
    assert parse_kind("契約保証") is GuaranteeKind.CONTRACT
    with pytest.raises(GuaranteeError, match="guarantee.bad_kind"):
        parse_kind("入札保証")


def test_added_references_are_validated_and_the_key_is_encrypted(
    session: Session, dev_runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    envelope = _envelope(session, dev_runtime)
    with caplog.at_level(logging.DEBUG):
        ref = add_guarantee(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            reference=_ref(project_name="〇〇道路改良工事", buyer="開発市長"),
            actor="staff@city.example.jp",
        )
        session.commit()
    assert KEY not in caplog.text
    raw = session.execute(
        text("SELECT * FROM guarantee_references WHERE id = :id"), {"id": ref.id}
    ).one()
    assert KEY not in " ".join(str(v) for v in raw)  # not in any column, in clear
    assert masked_key(ref) == "********" + KEY[-2:]
    assert authentication_key(runtime=dev_runtime, reference=ref) == KEY
    (event,) = [
        e for e in list_events(session=session, envelope_id=envelope.id) if "guarantee" in e.action
    ]
    assert event.detail["contract_number"] == "2070004426" and KEY not in str(event.detail)
    assert [r.id for r in list_guarantees(session=session, envelope_id=envelope.id)] == [ref.id]

    # Another master key, or the ciphertext moved onto another row, does not open.
    other = replace(dev_runtime, blobs=BlobStore(dev_runtime.blobs.root, b"\x01" * 32))
    with pytest.raises(GuaranteeError, match="guarantee.key_unreadable"):
        authentication_key(runtime=other, reference=ref)
    second = add_guarantee(
        session=session,
        runtime=dev_runtime,
        envelope_id=envelope.id,
        reference=_ref(
            kind="契約保証", contract_number="2070202096", authentication_key="Zz9Yy8Xx7W"
        ),
        actor="staff",
    )
    session.commit()
    session.execute(
        update(GuaranteeReference)
        .where(GuaranteeReference.id == second.id)
        .values(key_ciphertext=ref.key_ciphertext)
    )
    session.commit()
    session.refresh(second)
    with pytest.raises(GuaranteeError, match="guarantee.key_unreadable"):
        authentication_key(runtime=dev_runtime, reference=second)


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"contract_number": "20-7"}, "guarantee.bad_number"),
        ({"authentication_key": "ab c"}, "guarantee.bad_key"),
        ({"authentication_key": "キー"}, "guarantee.bad_key"),
        ({"kind": "入札保証"}, "guarantee.bad_kind"),
        ({"issuer": " "}, "guarantee.bad_issuer"),
        ({"project_name": "△△トンネル工事"}, "guarantee.project_mismatch"),
        ({"buyer": "佐賀県知事"}, "guarantee.buyer_mismatch"),
    ],
)
def test_bad_references_are_refused(
    session: Session, dev_runtime: Runtime, overrides: dict[str, object], code: str
) -> None:
    envelope = _envelope(session, dev_runtime)
    with pytest.raises(GuaranteeError) as info:
        add_guarantee(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            reference=_ref(**overrides),
            actor="staff",
        )
    assert info.value.code == code
    if code == "guarantee.bad_key":
        assert "ab c" not in str(info.value.as_dict())  # a mistyped key is still a secret
    session.rollback()
    assert list_guarantees(session=session, envelope_id=envelope.id) == []


def test_duplicates_and_reuse_across_envelopes(session: Session, dev_runtime: Runtime) -> None:
    first = _envelope(session, dev_runtime)
    second = _envelope(session, dev_runtime)
    add = lambda envelope, **kw: add_guarantee(  # noqa: E731
        session=session,
        runtime=dev_runtime,
        envelope_id=envelope.id,
        reference=_ref(),
        actor="s",
        **kw,
    )
    add(first)
    session.commit()
    with pytest.raises(GuaranteeError, match="guarantee.duplicate"):
        add(first)
    session.rollback()
    with pytest.raises(GuaranteeError) as info:
        add(second)
    assert info.value.code == "guarantee.number_in_use"
    assert info.value.details["envelopes"] == [first.id]
    session.rollback()
    add(second, allow_reuse=True)
    session.commit()
    # An amendment (変更契約) shares its original's guarantee without being told.
    third = _envelope(session, dev_runtime)
    session.add(Amendment(envelope_id=third.id, original_id=first.id))
    session.commit()
    with pytest.raises(GuaranteeError, match="guarantee.number_in_use"):
        add(third)  # second holds it too, and second is not related
    session.rollback()
    only_first = _ref(contract_number="2070009999")
    for envelope in (first, third):
        add_guarantee(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            reference=only_first,
            actor="s",
        )
    session.commit()


def test_a_notice_imports_after_matching_the_envelope(
    session: Session, dev_runtime: Runtime
) -> None:
    envelope = _envelope(session, dev_runtime, title="〇〇道路改良工事（第２工区）")
    with pytest.raises(GuaranteeError, match="guarantee.project_mismatch"):
        import_notice(
            session=session,
            runtime=dev_runtime,
            envelope_id=envelope.id,
            data=make_notice(project_name="△△トンネル工事"),
            actor="staff",
        )
    session.rollback()
    blobs_before = sum(1 for p in dev_runtime.blobs.root.rglob("*") if p.is_file())
    ref = import_notice(
        session=session,
        runtime=dev_runtime,
        envelope_id=envelope.id,
        data=make_notice(project_name="〇〇道路改良工事"),  # NFKC: （第２工区） ⊃ the project
        actor="staff",
    )
    session.commit()
    assert ref.source == "notice" and ref.kind is GuaranteeKind.ADVANCE
    assert ref.notice_blob_id and dev_runtime.blobs.get(ref.notice_blob_id)[:5] == b"%PDF-"
    assert sum(1 for p in dev_runtime.blobs.root.rglob("*") if p.is_file()) == blobs_before + 1
    assert authentication_key(runtime=dev_runtime, reference=ref) == KEY


def test_removal_needs_a_reason_and_is_audited(session: Session, dev_runtime: Runtime) -> None:
    envelope = _envelope(session, dev_runtime)
    ref = add_guarantee(
        session=session, runtime=dev_runtime, envelope_id=envelope.id, reference=_ref(), actor="s"
    )
    session.commit()
    with pytest.raises(GuaranteeError, match="reason_required"):
        remove_guarantee(
            session=session, envelope_id=envelope.id, guarantee_id=ref.id, actor="s", reason=" "
        )
    with pytest.raises(NotFoundError):
        remove_guarantee(
            session=session, envelope_id="other", guarantee_id=ref.id, actor="s", reason="誤登録"
        )
    remove_guarantee(
        session=session, envelope_id=envelope.id, guarantee_id=ref.id, actor="s", reason="誤登録"
    )
    session.commit()
    assert session.scalar(select(GuaranteeReference)) is None
    actions = [e.action for e in list_events(session=session, envelope_id=envelope.id)]
    assert actions[-2:] == ["guarantee.added", "guarantee.removed"]
