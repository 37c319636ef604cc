"""The signing engine against a real PKI: certomancer TSA/OCSP/CRL on loopback, pdfsig, qpdf."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from io import BytesIO
from pathlib import Path

import pytest
from asn1crypto import cms
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import PdfFileWriter
from pyhanko.sign.validation import DocumentSecurityStore, validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from core.errors import DocumentError, SigningError
from core.signing import (
    FieldBox,
    PageArea,
    PdfInfo,
    SigningEngine,
    TimestampService,
    approval_reason,
    load_pkcs11_signer,
    verify_pdf,
)
from tests.fixtures.pdfs import IPAEX_GOTHIC, make_pdf, with_page_box
from tests.fixtures.pki import LivePki, closed_port_url
from tests.fixtures.pki_plugin import SoftHsmToken

CERT_ID = "0123456789abcdef0123456789abcdef"
FIELDS = [
    FieldBox(name="kg_f_date1", page=1, rect=(320, 700, 520, 720)),
    FieldBox(name="kg_f_date2", page=1, rect=(320, 670, 520, 690)),
    FieldBox(name="kg_f_name3", page=2, rect=(320, 640, 520, 660)),
]
VALUES = [
    {"kg_f_date1": "令和7年10月1日"},
    {"kg_f_date2": "令和7年10月2日"},
    {"kg_f_name3": "株式会社テスト建設 代表取締役 山田太郎"},
]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False, timeout=120)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _reason(i: int) -> str:
    return approval_reason(
        name=f"山田 太郎{i}",
        email=f"taro{i}@example.jp",
        at=datetime(2025, 10, i, 1, 2, 3, tzinfo=UTC),
    )


@pytest.fixture(scope="module")
def flow(live_engine: SigningEngine) -> dict[str, bytes]:
    """prepare -> 3 approvals -> seal on the live test PKI, every stage kept."""
    original = make_pdf(pages=2)
    prepared = live_engine.prepare(original, certificate_id=CERT_ID, fields=FIELDS)
    stages = {"original": original, "prepared": prepared}
    doc = prepared
    for i, values in enumerate(VALUES, start=1):
        doc = live_engine.sign_approval(
            doc, signature_field=f"kg_sig_{i}", reason=_reason(i), values=values
        )
        stages[f"approval{i}"] = doc
    stages["sealed"] = live_engine.seal(doc)
    return stages


# -- reason ----------------------------------------------------------------------------------


def test_approval_reason_is_exact_and_in_jst() -> None:
    at = datetime(2025, 9, 30, 15, 4, 5, tzinfo=UTC)  # = 2025-10-01 00:04:05 JST
    assert (
        approval_reason(name="山田 太郎", email="taro@example.jp", at=at)
        == "山田 太郎 様 taro@example.jp が 2025-10-01 00:04:05 +09:00 JSTに承認しました"
    )
    other_zone = datetime(2025, 10, 1, 0, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
    assert "2025-10-01 14:04:05 +09:00 JST" in approval_reason(name="a", email="b", at=other_zone)


def test_approval_reason_refuses_naive_time() -> None:
    with pytest.raises(ValueError):
        approval_reason(name="a", email="b", at=datetime(2025, 10, 1))  # noqa: DTZ001 (naive on purpose)


# -- inspect ---------------------------------------------------------------------------------


def test_inspect_accepts_a_plain_pdf(live_engine: SigningEngine) -> None:
    data = make_pdf(pages=3)
    a4 = PageArea(0.0, 0.0, pytest.approx(595.2756), pytest.approx(841.8898), 0)  # type: ignore[arg-type]
    assert live_engine.inspect(data) == PdfInfo(page_count=3, size=len(data), pages=(a4,) * 3)
    # Page 1 cropped and turned: its displayed area and rotation, what text boxes are held to.
    turned = live_engine.inspect(with_page_box(data, crop=(50, 60, 400, 500), rotate=90))
    assert turned.pages[0] == PageArea(50, 60, 400, 500, 90) and turned.pages[1] == a4


def _encrypted(tmp_path: Path) -> bytes:
    qpdf = _tool("qpdf")
    src = _write(tmp_path, "plain.pdf", make_pdf())
    out = tmp_path / "enc.pdf"
    result = _run(qpdf, "--encrypt", "user-pw", "owner-pw", "256", "--", str(src), str(out))
    assert result.returncode == 0, result.stderr
    return out.read_bytes()


def _zero_pages() -> bytes:
    buf = BytesIO()
    PdfFileWriter().write(buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("not_pdf", "document.not_pdf"),
        ("truncated", "document.damaged"),
        ("garbage_xref", "document.damaged"),
        ("encrypted", "document.encrypted"),
        ("zero_pages", "document.empty"),
    ],
)
def test_inspect_refuses_bad_input(
    live_engine: SigningEngine, tmp_path: Path, case: str, code: str
) -> None:
    good = make_pdf()
    data = {
        "not_pdf": lambda: "これはPDFではありません".encode() * 10,
        "truncated": lambda: good[: len(good) // 2],
        "garbage_xref": lambda: good[:-200] + b"\nstartxref\n999999999\n%%EOF\n",
        "encrypted": lambda: _encrypted(tmp_path),
        "zero_pages": _zero_pages,
    }[case]()
    with pytest.raises(DocumentError) as info:
        live_engine.inspect(data)
    err = info.value
    assert err.code == code
    assert err.message_ja and err.message_en
    assert not err.retriable


def test_inspect_refuses_already_signed(live_engine: SigningEngine, flow: dict[str, bytes]) -> None:
    with pytest.raises(DocumentError) as info:
        live_engine.inspect(flow["approval1"])
    assert info.value.code == "document.already_signed"
    assert "署名" in info.value.message_ja
    with pytest.raises(DocumentError):
        live_engine.prepare(flow["approval1"], certificate_id=CERT_ID, fields=[])


# -- prepare ---------------------------------------------------------------------------------


def test_prepare_stamps_id_and_creates_empty_text_fields(
    flow: dict[str, bytes], tmp_path: Path
) -> None:
    prepared = flow["prepared"]
    path = _write(tmp_path, "prepared.pdf", prepared)
    check = _run(_tool("qpdf"), "--check", str(path))
    assert check.returncode == 0, check.stdout + check.stderr
    text = _run(_tool("pdftotext"), "-f", "1", "-l", "1", str(path), "-").stdout
    assert f"ID: {CERT_ID}" in text
    # the original bytes are kept: prepare is an incremental revision
    assert prepared.startswith(flow["original"])
    reader = PdfFileReader(BytesIO(prepared))
    fields = {
        str(f.get_object()["/T"]): f.get_object() for f in reader.root["/AcroForm"]["/Fields"]
    }
    assert set(fields) == {f.name for f in FIELDS}
    for box in FIELDS:
        field = fields[box.name]
        assert field["/FT"] == "/Tx"
        assert str(field["/V"]) == ""
        assert int(field["/F"]) & 4  # printable
        assert [float(v) for v in field["/Rect"]] == list(box.rect)
    kids = reader.root["/Pages"].raw_get("/Kids")
    page2_ref = kids.raw_get(1) if hasattr(kids, "raw_get") else kids[1]
    page2 = page2_ref.get_object()
    assert fields["kg_f_name3"].raw_get("/P").reference == page2_ref.reference
    assert len(page2["/Annots"]) == 1


def test_prepare_id_is_bottom_left(live_engine: SigningEngine, tmp_path: Path) -> None:
    prepared = live_engine.prepare(make_pdf(pages=1), certificate_id=CERT_ID, fields=[])
    path = _write(tmp_path, "p.pdf", prepared)
    bbox = _run(_tool("pdftotext"), "-bbox", str(path), "-").stdout
    match = re.search(
        r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="[\d.]+" yMax="([\d.]+)">ID:', bbox
    )
    assert match, bbox[:500]
    x_min, _y_min, y_max = (float(v) for v in match.groups())
    page_height = 841.89
    assert 10 <= x_min <= 15
    assert 8 <= page_height - y_max <= 15  # pdftotext measures y from the top


@pytest.mark.parametrize(
    ("certificate_id", "fields", "code"),
    [
        ("XYZ", [], "signing.certificate_id_invalid"),
        (CERT_ID, [FieldBox(name="a", page=3, rect=(0, 0, 10, 10))], "signing.field_invalid"),
        (CERT_ID, [FieldBox(name="日本", page=1, rect=(0, 0, 10, 10))], "signing.field_invalid"),
        (
            CERT_ID,
            [FieldBox(name="a", page=1, rect=(0, 0, 10, 10))] * 2,
            "signing.field_invalid",
        ),
    ],
)
def test_prepare_refuses_bad_arguments(
    live_engine: SigningEngine, certificate_id: str, fields: list[FieldBox], code: str
) -> None:
    with pytest.raises(SigningError) as info:
        live_engine.prepare(make_pdf(), certificate_id=certificate_id, fields=fields)
    assert info.value.code == code


# -- approvals and seal ----------------------------------------------------------------------


def _pyhanko_statuses(data: bytes, pki: LivePki) -> list[object]:
    reader = PdfFileReader(BytesIO(data))
    statuses = []
    for sig in reader.embedded_regular_signatures:
        vc = ValidationContext(trust_roots=[pki.root], allow_fetching=True)
        statuses.append(validate_pdf_signature(sig, vc))
    return statuses


def test_three_approvals_keep_every_signature_valid(
    flow: dict[str, bytes], test_pki: LivePki
) -> None:
    statuses = _pyhanko_statuses(flow["approval3"], test_pki)
    assert len(statuses) == 3
    for status in statuses:
        assert status.bottom_line, status.pretty_print_details()  # type: ignore[attr-defined]
        assert status.docmdp_ok  # type: ignore[attr-defined]
        assert status.timestamp_validity is not None  # type: ignore[attr-defined]
    # earlier signatures see only form filling after them
    levels = [s.modification_level.name for s in statuses[:2]]  # type: ignore[attr-defined]
    assert levels == ["FORM_FILLING", "FORM_FILLING"]


def test_signatures_are_invisible_pades_with_japanese_reason(flow: dict[str, bytes]) -> None:
    reader = PdfFileReader(BytesIO(flow["approval3"]))
    sigs = reader.embedded_regular_signatures
    assert [s.field_name for s in sigs] == ["kg_sig_1", "kg_sig_2", "kg_sig_3"]
    for i, sig in enumerate(sigs, start=1):
        assert sig.sig_object["/SubFilter"] == "/ETSI.CAdES.detached"
        assert str(sig.sig_object["/Reason"]) == _reason(i)
        assert str(sig.sig_object["/Location"]) == "日本"
        rect = [float(v) for v in sig.sig_field["/Rect"]]
        assert rect == [0, 0, 0, 0]


def test_reserved_signature_space_fits_with_margin(flow: dict[str, bytes]) -> None:
    reader = PdfFileReader(BytesIO(flow["approval3"]))
    for sig in reader.embedded_regular_signatures:
        reserved = len(sig.pkcs7_content)  # the decoded /Contents, zero padding included
        used = len(cms.ContentInfo.load(sig.pkcs7_content).dump())
        assert used * 1.1 < reserved, (used, reserved)
        assert reserved < used * 4, "reservation is wastefully large"


def test_reservation_overflow_is_retried_with_a_measured_size(
    live_engine: SigningEngine, flow: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_engine, "bytes_reserved", lambda: 2048)
    before = live_engine.reservation_overflows
    signed = live_engine.sign_approval(
        flow["prepared"], signature_field="kg_sig_o", reason="r", values=VALUES[0]
    )
    assert live_engine.reservation_overflows == before + 1
    reader = PdfFileReader(BytesIO(signed))
    (sig,) = reader.embedded_regular_signatures
    assert str(sig.sig_field["/T"]) == "kg_sig_o"


def test_async_api_from_another_event_loop(
    live_engine: SigningEngine, flow: dict[str, bytes]
) -> None:
    import asyncio

    async def main() -> tuple[bytes, bytes]:
        # two approvals in flight at once: their TSA round trips overlap on the engine's loop
        return await asyncio.gather(
            live_engine.async_sign_approval(
                flow["prepared"], signature_field="kg_sig_a1", reason="r", values={}
            ),
            live_engine.async_sign_approval(
                flow["prepared"], signature_field="kg_sig_a2", reason="r", values={}
            ),
        )

    first, second = asyncio.run(main())
    assert first != second
    sealed = asyncio.run(live_engine.async_seal(first))
    assert len(PdfFileReader(BytesIO(sealed)).embedded_timestamp_signatures) == 1


def test_filled_values_are_read_only_and_extractable(
    flow: dict[str, bytes], tmp_path: Path
) -> None:
    reader = PdfFileReader(BytesIO(flow["approval3"]))
    fields = {
        str(f.get_object()["/T"]): f.get_object() for f in reader.root["/AcroForm"]["/Fields"]
    }
    for values in VALUES:
        for name, value in values.items():
            assert str(fields[name]["/V"]) == value
            assert int(fields[name]["/Ff"]) & 1
    path = _write(tmp_path, "signed.pdf", flow["sealed"])
    text = _run(_tool("pdftotext"), str(path), "-").stdout
    for values in VALUES:
        for value in values.values():
            assert value in text, text


def test_refilling_or_unknown_fields_is_refused(
    live_engine: SigningEngine, flow: dict[str, bytes]
) -> None:
    with pytest.raises(SigningError) as locked:
        live_engine.sign_approval(
            flow["approval1"], signature_field="kg_sig_x", reason="r", values=VALUES[0]
        )
    assert locked.value.code == "signing.field_locked"
    with pytest.raises(SigningError) as unknown:
        live_engine.sign_approval(
            flow["approval1"], signature_field="kg_sig_x", reason="r", values={"nope": "x"}
        )
    assert unknown.value.code == "signing.unknown_field"
    with pytest.raises(SigningError) as exists:
        live_engine.sign_approval(
            flow["approval1"], signature_field="kg_sig_1", reason="r", values={}
        )
    assert exists.value.code == "signing.field_exists"


def test_sealed_document_passes_pyhanko_qpdf_pdfsig_and_openssl(
    flow: dict[str, bytes], test_pki: LivePki, tmp_path: Path
) -> None:
    sealed = flow["sealed"]
    for status in _pyhanko_statuses(sealed, test_pki):
        assert status.bottom_line  # type: ignore[attr-defined]
        assert status.docmdp_ok  # type: ignore[attr-defined]
    path = _write(tmp_path, "sealed.pdf", sealed)
    check = _run(_tool("qpdf"), "--check", str(path))
    assert check.returncode == 0 and "No syntax or stream encoding errors" in check.stdout

    pdfsig = _run(_tool("pdfsig"), "-nocert", str(path)).stdout
    assert pdfsig.count("Signature #") == 4, pdfsig
    assert pdfsig.count("Signature Validation: Signature is Valid.") == 3, pdfsig
    assert "kg_doc_timestamp_1" in pdfsig
    assert pdfsig.rstrip().splitlines()[-2].strip() == "- Total document signed" or (
        "Total document signed" in pdfsig.split("Signature #4")[1]
    )

    # poppler cannot verify RFC 3161 document timestamps: check that one with openssl ts
    reader = PdfFileReader(BytesIO(sealed))
    doc_ts = reader.embedded_timestamp_signatures[0]
    start1, len1, start2, len2 = (int(v) for v in doc_ts.sig_object["/ByteRange"])
    covered = sealed[start1 : start1 + len1] + sealed[start2 : start2 + len2]
    data_file = _write(tmp_path, "covered.bin", covered)
    token_file = _write(tmp_path, "token.der", doc_ts.pkcs7_content)
    ca_file = test_pki.pem_path("root")
    result = _run(
        _tool("openssl"),
        "ts",
        "-verify",
        "-token_in",
        "-in",
        str(token_file),
        "-data",
        str(data_file),
        "-CAfile",
        str(ca_file),
    )
    assert "Verification: OK" in result.stdout, result.stdout + result.stderr


def test_verify_pdf_reports_a_sealed_document_ok(flow: dict[str, bytes], test_pki: LivePki) -> None:
    report = verify_pdf(flow["sealed"], trust_roots=[test_pki.root])
    assert report.ok, report.as_dict()
    kinds = [s.kind for s in report.signatures]
    assert kinds == ["approval", "approval", "approval", "document_timestamp"]
    first = report.signatures[0]
    assert first.signer == "テスト市 契約担当 (test signer)"
    assert first.reason == _reason(1)
    assert first.signing_time is not None and first.signing_time.utcoffset() == timedelta(hours=9)
    assert first.ltv and first.timestamp_valid and first.docmdp_ok
    as_json = report.as_dict()
    assert as_json["ok"] is True and len(as_json["signatures"]) == 4


def test_verify_pdf_before_seal_is_not_ltv(flow: dict[str, bytes], test_pki: LivePki) -> None:
    report = verify_pdf(flow["approval3"], trust_roots=[test_pki.root])
    assert not report.ok
    assert all(s.intact and s.trusted and s.timestamp_valid for s in report.signatures)
    assert not any(s.ltv for s in report.signatures)


def test_verify_pdf_with_wrong_root_is_not_trusted(
    flow: dict[str, bytes], test_pki: LivePki
) -> None:
    report = verify_pdf(flow["sealed"], trust_roots=[test_pki.cert("interm-ocsp")])
    assert not report.ok
    assert not any(s.trusted for s in report.signatures)


def test_a_flipped_byte_breaks_every_check(
    flow: dict[str, bytes], test_pki: LivePki, tmp_path: Path
) -> None:
    sealed = flow["sealed"]
    # a byte inside reportlab's header comment: covered by every signature, harmless to parsers
    offset = sealed.index(b"ReportLab Generated") + 3
    tampered = sealed[:offset] + bytes([sealed[offset] ^ 0x01]) + sealed[offset + 1 :]
    report = verify_pdf(tampered, trust_roots=[test_pki.root])
    assert not report.ok
    assert not any(s.intact for s in report.signatures)
    path = _write(tmp_path, "tampered.pdf", tampered)
    pdfsig = _run(_tool("pdfsig"), "-nocert", str(path)).stdout
    assert "Signature is Valid." not in pdfsig, pdfsig
    assert "Signature Validation:" in pdfsig


@pytest.mark.parametrize("cut", [0.3, 0.9, 0.999])
def test_verify_pdf_never_raises_on_damage(
    flow: dict[str, bytes], test_pki: LivePki, cut: float
) -> None:
    sealed = flow["sealed"]
    damaged = sealed[: int(len(sealed) * cut)]
    report = verify_pdf(damaged, trust_roots=[test_pki.root])
    assert not report.ok
    assert report.as_dict()["ok"] is False


def test_verify_pdf_of_garbage_and_unsigned(test_pki: LivePki) -> None:
    garbage = verify_pdf(b"not a pdf at all", trust_roots=[test_pki.root])
    assert not garbage.ok and garbage.error
    unsigned = verify_pdf(make_pdf(), trust_roots=[test_pki.root])
    assert not unsigned.ok and unsigned.signatures == ()


# -- TSA failover ------------------------------------------------------------------------------


@pytest.fixture
def engine_factory(pkcs12_key: object, test_pki: LivePki) -> Iterator[object]:
    made: list[SigningEngine] = []

    def make(urls: list[str], *, attempts: int = 3) -> SigningEngine:
        engine = SigningEngine(
            key=pkcs12_key,  # type: ignore[arg-type]
            timestamps=TimestampService.from_urls(urls, timeout=2, attempts=attempts, backoff=0.01),
            trust_roots=[test_pki.root],
            font_path=IPAEX_GOTHIC,
        )
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def test_tsa_failover_to_second_url(
    engine_factory: object, test_pki: LivePki, flow: dict[str, bytes]
) -> None:
    engine = engine_factory([closed_port_url(), test_pki.tsa_url])  # type: ignore[operator]
    signed = engine.sign_approval(
        flow["prepared"], signature_field="kg_sig_f", reason="r", values={}
    )
    (status,) = _pyhanko_statuses(signed, test_pki)
    assert status.bottom_line  # type: ignore[attr-defined]


def test_all_tsas_down_is_retriable_and_leaves_input_untouched(
    engine_factory: object, flow: dict[str, bytes]
) -> None:
    engine = engine_factory([closed_port_url(), closed_port_url()], attempts=2)  # type: ignore[operator]
    data = flow["prepared"]
    before = bytes(data)
    for operation in (
        lambda: engine.sign_approval(data, signature_field="kg_sig_d", reason="r", values={}),
        lambda: engine.seal(flow["approval1"]),
    ):
        with pytest.raises(SigningError) as info:
            operation()
        err = info.value
        assert err.code == "signing.tsa_unreachable"
        assert err.retriable
        assert err.__cause__ is not None
        assert err.details["attempts"] == 2
    assert data == before


def test_tsa_down_then_up_succeeds_on_retry(
    engine_factory: object, test_pki: LivePki, flow: dict[str, bytes]
) -> None:
    engine = engine_factory([test_pki.flaky_tsa_url], attempts=3)  # type: ignore[operator]
    test_pki.flaky.calls = 0
    test_pki.flaky.fail_next(2)
    signed = engine.sign_approval(
        flow["prepared"], signature_field="kg_sig_r", reason="r", values={}
    )
    assert test_pki.flaky.calls == 3
    (status,) = _pyhanko_statuses(signed, test_pki)
    assert status.bottom_line  # type: ignore[attr-defined]


# -- signing in place (the approval path: only the new revision comes back) --------------------


def test_an_increment_signed_in_place_is_the_same_revision_appended(
    live_engine: SigningEngine, flow: dict[str, bytes], test_pki: LivePki
) -> None:
    prepared = flow["prepared"]
    document = BytesIO(prepared)
    increment = live_engine.sign_approval_increment(
        document, signature_field="kg_sig_i", reason=_reason(1), values=VALUES[0]
    )
    signed = document.getvalue()
    assert signed == prepared + increment
    (status,) = _pyhanko_statuses(signed, test_pki)
    assert status.bottom_line  # type: ignore[attr-defined]
    fields = PdfFileReader(BytesIO(signed)).root["/AcroForm"]["/Fields"]
    assert any(str(f.get_object().get("/V")) == "令和7年10月1日" for f in fields)


def test_an_overflowed_increment_is_retried_and_still_only_appended(
    live_engine: SigningEngine, flow: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live_engine, "bytes_reserved", lambda: 2048)
    before = live_engine.reservation_overflows
    document = BytesIO(flow["prepared"])
    increment = live_engine.sign_approval_increment(
        document, signature_field="kg_sig_o2", reason="r", values=VALUES[0]
    )
    assert live_engine.reservation_overflows == before + 1
    assert document.getvalue() == flow["prepared"] + increment
    (sig,) = PdfFileReader(BytesIO(document.getvalue())).embedded_regular_signatures
    assert str(sig.sig_field["/T"]) == "kg_sig_o2"


def test_a_failed_increment_leaves_the_document_as_it_was(
    engine_factory: object, live_engine: SigningEngine, flow: dict[str, bytes]
) -> None:
    engine = engine_factory([closed_port_url()], attempts=1)  # type: ignore[operator]
    document = BytesIO(flow["prepared"])
    with pytest.raises(SigningError) as info:
        engine.sign_approval_increment(document, signature_field="kg_sig_d2", reason="r", values={})
    assert info.value.code == "signing.tsa_unreachable"
    assert document.getvalue() == flow["prepared"]
    with pytest.raises(SigningError, match="signing.field_exists"):
        live_engine.sign_approval_increment(
            BytesIO(flow["approval1"]), signature_field="kg_sig_1", reason="r", values={}
        )


# -- sealing in place (the completion path: only the appended revisions come back) -------------


def test_a_seal_in_place_appends_the_same_b_lta_revisions(
    live_engine: SigningEngine, flow: dict[str, bytes], test_pki: LivePki
) -> None:
    signed = flow["approval3"]
    room = live_engine.seal_size_hint()
    document = BytesIO()
    document.write(b"\0" * (len(signed) + room))  # the caller's buffer, sized by the hint
    document.seek(0)
    document.write(signed)
    document.truncate()
    allocated = sys.getsizeof(document)
    increment = live_engine.seal_increment(document)
    assert sys.getsizeof(document) == allocated  # appended into the room, not reallocated
    sealed = document.getvalue()
    assert sealed == signed + increment
    # PAdES B-LTA as before: the DSS, and one document timestamp under the gateway's name
    reader = PdfFileReader(BytesIO(sealed))
    assert "/DSS" in reader.root
    (stamp,) = reader.embedded_timestamp_signatures
    assert stamp.field_name == "kg_doc_timestamp_1"
    report = verify_pdf(sealed, trust_roots=[test_pki.root])
    assert report.ok, report.as_dict()
    assert [s.kind for s in report.signatures][-1] == "document_timestamp"


def test_a_failed_seal_leaves_the_document_as_it_was(
    engine_factory: object, live_engine: SigningEngine, flow: dict[str, bytes]
) -> None:
    engine = engine_factory([closed_port_url()], attempts=1)  # type: ignore[operator]
    document = BytesIO(flow["approval1"])
    with pytest.raises(SigningError) as info:
        engine.seal_increment(document)
    assert info.value.code == "signing.tsa_unreachable" and info.value.retriable
    assert document.getvalue() == flow["approval1"]
    with pytest.raises(SigningError, match="signing.document_unreadable"):
        live_engine.seal_increment(BytesIO(b"%PDF-1.7 not really"))


def test_a_seal_failing_after_its_revision_was_written_cuts_it_off(
    live_engine: SigningEngine, flow: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unwritable(cls: object, **kwargs: object) -> None:
        raise OSError("disk full")

    # the TSA's validation data is added after the timestamped revision was appended in place
    monkeypatch.setattr(DocumentSecurityStore, "add_dss", classmethod(unwritable))
    document = BytesIO(flow["approval1"])
    with pytest.raises(SigningError, match="signing.failed"):
        live_engine.seal_increment(document)
    assert document.getvalue() == flow["approval1"]


# -- PKCS#11 -----------------------------------------------------------------------------------


@pytest.mark.softhsm
def test_pkcs11_softhsm_signing(softhsm_token: SoftHsmToken, test_pki: LivePki) -> None:
    key = load_pkcs11_signer(
        module_path=softhsm_token.module_path,
        token_label=softhsm_token.token_label,
        pin=softhsm_token.pin,
        key_label=softhsm_token.key_label,
        other_certs=softhsm_token.chain,
    )
    engine = SigningEngine(
        key=key,
        timestamps=TimestampService.from_urls([test_pki.tsa_url]),
        trust_roots=[test_pki.root],
        font_path=IPAEX_GOTHIC,
    )
    try:
        assert key.subject_cn == "テスト市 契約担当 (test signer)"
        doc = engine.prepare(make_pdf(), certificate_id=CERT_ID, fields=FIELDS[:1])
        doc = engine.sign_approval(
            doc, signature_field="kg_sig_hsm", reason=_reason(1), values=VALUES[0]
        )
        doc = engine.seal(doc)
    finally:
        engine.close()
    report = verify_pdf(doc, trust_roots=[test_pki.root])
    assert report.ok, report.as_dict()


@pytest.mark.softhsm
def test_pkcs11_wrong_pin_is_a_signing_error(softhsm_token: SoftHsmToken) -> None:
    with pytest.raises(SigningError) as info:
        load_pkcs11_signer(
            module_path=softhsm_token.module_path,
            token_label=softhsm_token.token_label,
            pin="0000",
            key_label=softhsm_token.key_label,
        )
    assert info.value.code == "signing.key_unavailable"


def test_pkcs12_wrong_passphrase_is_a_signing_error(test_pki: LivePki) -> None:
    from core.signing import load_pkcs12_signer

    with pytest.raises(SigningError) as info:
        load_pkcs12_signer(test_pki.signer_p12(), b"wrong")
    assert info.value.code == "signing.key_unavailable"


@pytest.mark.parametrize("inspected_first", [True, False])
def test_preparing_leaves_neither_upload_nor_output_to_the_garbage_collector(
    inspected_first: bool,
) -> None:
    # pyHanko's readers are reference cycles: unless preparing drops what they hold, a
    # server keeps each create's upload, its parsed streams and the output until a full
    # collection (about 60 MB resident for each 20 MB create, several creates deep).
    import gc
    import sys

    from core.signing import FieldBox
    from core.signing._documents import inspect_upload, prepare_document

    data = make_pdf(pages=2, size_target=200_000)
    gc.disable()
    try:
        before = sys.getrefcount(data)
        inspected = inspect_upload(data) if inspected_first else None
        written = prepare_document(
            data,
            certificate_id="0123456789abcdef" * 2,
            fields=[FieldBox(name="kg_text_1", page=2, rect=(72, 72, 272, 92))],
            inspected=inspected,
        )
        del inspected
        assert sys.getrefcount(data) == before
        assert sys.getrefcount(written) == 2  # this name, and getrefcount's own argument
    finally:
        gc.enable()
    assert written.startswith(data) and PdfFileReader(BytesIO(written)).xrefs.total_revisions == 2


def test_signing_a_certificate_leaves_neither_input_nor_output_to_the_garbage_collector(
    devpki_engine: SigningEngine,
) -> None:
    # pyHanko's readers and writers are reference cycles: unless signing drops what they hold,
    # each certificate's rendered PDF and its signed file wait for a full collection.
    import gc

    data = make_pdf(pages=1)
    gc.disable()
    try:
        before = sys.getrefcount(data)
        signed = devpki_engine.sign_certificate(data, reason="電子契約締結証明書の発行")
        assert sys.getrefcount(data) == before
        assert sys.getrefcount(signed) == 2  # this name, and getrefcount's own argument
    finally:
        gc.enable()
    report = devpki_engine.verify(signed)
    assert report.ok, report.as_dict()
    assert [s.kind for s in report.signatures] == ["approval", "document_timestamp"]
