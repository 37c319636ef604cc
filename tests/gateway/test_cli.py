"""The newcomer's path: `keiyaku init`, `demo`, `verify`, checked independently with poppler and qpdf."""

from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import io
import json
import mailbox
import os
import re
import stat
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from sqlalchemy import select

from core.envelopes.guarantees import list_guarantees
from core.intake.contractors import contractor_emails
from core.model import Award, ContractorEmail, ContractorIdentity, Delivery, Envelope, SyncRun
from core.records.audit import list_events
from core.states import DeliveryState
from gateway.demo import guarantee_number
from gateway.runtime import open_gateway
from gateway.settings import load_settings

KEIYAKU = [sys.executable, "-m", "gateway.cli"]
ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEIYAKU_")}
    return subprocess.run(
        [*KEIYAKU, *args],
        capture_output=True,
        text=True,
        check=check,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], Path]:
    home = tmp_path_factory.mktemp("home")
    init = _run("init", str(home))
    assert f"config: {home / 'config.yaml'}" in init.stdout
    config = home / "config.yaml"
    out = _run("--config", str(config), "demo")
    signed = [Path(p) for p in re.findall(r"^signed: (.+)$", out.stdout, re.M)]
    (certificate,) = re.findall(r"^certificate: (.+)$", out.stdout, re.M)
    return config, signed, Path(certificate)


def test_init_writes_secrets_privately_and_marks_the_pki(
    demo_run: tuple[Path, list[Path], Path],
) -> None:
    config, _, _ = demo_run
    home = config.parent
    secrets_env = (home / "secrets.env").read_text()
    assert re.search(r"^KEIYAKU_MASTER_KEY=[0-9a-f]{64}$", secrets_env, re.M)
    assert stat.S_IMODE((home / "secrets.env").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "pki" / "signer.p12").stat().st_mode) == 0o600
    assert "${KEIYAKU_MASTER_KEY}" in config.read_text()  # the config holds references only
    # The secrets file init writes is read back by the settings' dotenv reader, value for value.
    written = dict(line.split("=", 1) for line in secrets_env.splitlines() if "=" in line)
    settings = load_settings(config, environ={})
    assert settings.blobs.master_key.get_secret_value() == written["KEIYAKU_MASTER_KEY"]
    assert settings.server.session_key is not None
    assert settings.server.session_key.get_secret_value() == written["KEIYAKU_SESSION_KEY"]
    passphrase = written["KEIYAKU_SIGNING_PASSPHRASE"]
    assert settings.signing.key.passphrase.get_secret_value() == passphrase  # type: ignore[union-attr]
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(home / "pki" / "root.crt"), "-noout", "-subject"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DEVELOPMENT" in subject.upper()
    again = _run("init", str(home))  # a second init keeps what is there
    assert "exists" in again.stdout + again.stderr
    assert (home / "secrets.env").read_text() == secrets_env


def test_demo_signs_two_documents_with_two_signatures_and_a_timestamp(
    demo_run: tuple[Path, list[Path], Path],
) -> None:
    _, signed, certificate = demo_run
    award = signed[0].parent.name.split("-", 1)[1]  # R20251001-R7-001 → R7-001
    assert [p.name for p in signed] == [f"工事請負契約書_{award}.pdf", f"請書_{award}.pdf"]
    for path in signed:
        pdfsig = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True)
        # The contractor's and the official's approvals valid; poppler cannot check the third,
        # the document timestamp (notes/signing.md), which `keiyaku verify` and the signing
        # tests check instead.
        assert pdfsig.stdout.count("Signature #") == 3, pdfsig.stdout
        assert pdfsig.stdout.count("Signature is Valid.") == 2, pdfsig.stdout
        assert pdfsig.stdout.count("Signature Type: ETSI.CAdES.detached") == 2, pdfsig.stdout
        assert "Signature Field Name: kg_doc_timestamp" in pdfsig.stdout
        qpdf = subprocess.run(["qpdf", "--check", str(path)], capture_output=True, text=True)
        assert qpdf.returncode == 0, qpdf.stdout + qpdf.stderr
        assert "No syntax or stream encoding errors found" in qpdf.stdout
    text = subprocess.run(
        ["pdftotext", str(certificate), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "締結証明書" in text and "髙橋 一郎" in text


def test_the_demo_certificate_is_itself_signed_and_verifies(
    demo_run: tuple[Path, list[Path], Path],
) -> None:
    config, _, certificate = demo_run
    pdfsig = subprocess.run(["pdfsig", str(certificate)], capture_output=True, text=True)
    assert "Signature Field Name: kg_certificate" in pdfsig.stdout, pdfsig.stdout
    assert "Signature is Valid." in pdfsig.stdout, pdfsig.stdout
    ok = _run("--config", str(config), "verify", "--json", str(certificate))
    report = json.loads(ok.stdout)
    assert report["ok"] is True
    assert [s["kind"] for s in report["signatures"]] == ["approval", "document_timestamp"]
    text = subprocess.run(
        ["pdftotext", str(certificate), "-"], capture_output=True, text=True, check=True
    ).stdout
    flat = "".join(text.split())
    # made by intake from the demo's award source, not by a person
    assert re.search(r"落札情報の取込\(連携元:[^)]*awards", flat), flat


def test_verify_accepts_the_demo_and_rejects_a_flipped_byte(
    demo_run: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    config, signed, _ = demo_run
    ok = _run("--config", str(config), "verify", "--json", str(signed[0]))
    report = json.loads(ok.stdout)
    assert report["ok"] is True
    kinds = [s["kind"] for s in report["signatures"]]
    assert kinds.count("approval") == 2 and kinds.count("document_timestamp") == 1
    assert all(s["intact"] and s["trusted"] for s in report["signatures"])
    assert "JSTに承認しました" in report["signatures"][0]["reason"]

    text = _run("--config", str(config), "verify", str(signed[0])).stdout
    assert text.splitlines()[0].endswith(": OK")
    assert text.count("approval kg_sig_") == 2 and "document_timestamp" in text
    assert " JST" in text and "ltv=yes" in text and "NO" not in text

    data = bytearray(signed[0].read_bytes())
    # A byte inside the first signed range: in the page content of the original document.
    index = data.index(b"stream") + 20
    data[index] ^= 0x01
    tampered = tmp_path / "tampered.pdf"
    tampered.write_bytes(bytes(data))
    bad = _run("--config", str(config), "verify", str(tampered), check=False)
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[0].endswith(": FAILED") and "intact=NO" in bad.stdout
    pdfsig = subprocess.run(["pdfsig", str(tampered)], capture_output=True, text=True)
    assert pdfsig.stdout.count("Digest Mismatch.") == 2, pdfsig.stdout
    assert "Signature is Valid." not in pdfsig.stdout

    # Bytes appended after the final document timestamp: every signature still holds, but the
    # file is not what was signed (pdfsig: "Not total document signed").
    appended = tmp_path / "appended.pdf"
    appended.write_bytes(signed[0].read_bytes() + b"\n% appended later\n")
    extra = _run("--config", str(config), "verify", "--json", str(appended), check=False)
    assert extra.returncode == 1
    verdict = json.loads(extra.stdout)
    assert verdict["ok"] is False and verdict["unsigned_bytes"] == len(b"\n% appended later\n")
    assert all(s["ok"] for s in verdict["signatures"])
    text = _run("--config", str(config), "verify", str(appended), check=False).stdout
    assert "bytes after the last signed revision" in text
    pdfsig = subprocess.run(["pdfsig", str(appended)], capture_output=True, text=True)
    assert "Not total document signed" in pdfsig.stdout


def _era_date(text: str) -> dt.date:
    """An independent reading of 令和N年M月D日 (full-width digits allowed)."""
    match = re.fullmatch(r"令和(\d+)年(\d+)月(\d+)日", unicodedata.normalize("NFKC", text))
    assert match, text
    return dt.date(2018 + int(match[1]), int(match[2]), int(match[3]))


def test_the_demo_documents_describe_one_contract_running_after_it_is_signed(
    demo_run: tuple[Path, list[Path], Path],
) -> None:
    """The signed contract and 請書 (as pdftotext reads them) name the same work and amount, and
    a 工期 that ends after the day the demo signed them (JST)."""
    _, signed, _ = demo_run
    texts = {
        path.name.split("_")[0]: subprocess.run(
            ["pdftotext", str(path), "-"], capture_output=True, text=True, check=True
        ).stdout
        for path in signed
    }
    contract, ukesho = texts["工事請負契約書"], texts["請書"]
    # the day the demo took the award in and signed: the management number's date (JST)
    stamp = signed[0].parent.name[1:9]
    signed_on = dt.date(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:]))
    for text in (contract, ukesho):
        assert "市道１号線舗装補修工事" in text and "金31,389,000円" in text, text
        period = re.search(r"翌日から(令和\d+年\d+月\d+日)まで", text)
        assert period is not None, text
        assert _era_date(period[1]) > signed_on, text


def test_the_demo_envelope_came_from_the_award_export(
    demo_run: tuple[Path, list[Path], Path],
) -> None:
    config, signed, _ = demo_run
    number = signed[0].parent.name  # R20251001-R7-001: 開札日 and 案件番号
    processed = config.parent / "demo-input" / "awards" / "processed"
    (export,) = processed.glob(f"*_落札一覧_{number.split('-', 1)[1]}.csv")
    rows = list(csv.DictReader(io.StringIO(export.read_bytes().decode("cp932"))))
    assert [r["電子契約"] for r in rows] == ["希望", "不要"]  # the second is left to paper
    assert re.fullmatch(r"令和[０-９]+年[０-９]+月[０-９]+日", rows[0]["開札日"])
    gateway = open_gateway(load_settings(config, environ={}))
    try:
        with gateway.sessions() as session:
            envelope = session.scalars(
                select(Envelope).where(Envelope.management_number == number)
            ).one()
            award = session.scalars(select(Award).where(Award.envelope_id == envelope.id)).one()
            assert (award.source, award.file) == ("demo-awards", export.name.split("_", 1)[1])
            assert award.award_id == unicodedata.normalize("NFKC", rows[0]["案件番号"])
            assert award.award_date == award.transaction_date == _era_date(rows[0]["開札日"])
            assert envelope.transaction_date == award.award_date
            assert award.signing_due is not None and award.signing_due > award.award_date
            assert envelope.deadline == award.signing_due
            # The contractor was matched by its 業者番号 and its address came from the registry.
            contractor = award.contractor
            assert contractor is not None and contractor.email is not None
            codes = session.scalars(
                select(ContractorIdentity.value).where(
                    ContractorIdentity.contractor_id == contractor.id,
                    ContractorIdentity.kind == "registry_code",
                )
            ).all()
            assert codes == [unicodedata.normalize("NFKC", rows[0]["業者番号"])]
            registered = session.scalars(
                select(ContractorEmail).where(ContractorEmail.contractor_id == contractor.id)
            ).all()
            assert {e.source for e in registered} == {"demo-registry"}
            assert len(contractor_emails(session=session, contractor_id=contractor.id)) == 2
            by_contractor, by_buyer = envelope.parties
            assert by_contractor.email == contractor.email
            assert by_contractor.company == award.counterparty == rows[0]["落札業者名"]
            assert contractor.name == "株式会社髙橋建設"  # as the registry spells it
            # Above the delegated 5,000,000 yen, the register names the head of the buyer.
            assert (by_buyer.name, by_buyer.email) == (
                "開発市長 開発 太郎",
                "shicho@city.example.lg.jp",
            )
            run = session.get(SyncRun, award.last_run_id)
            assert run is not None
            assert (run.source, run.trigger, run.status) == ("demo-awards", "demo", "succeeded")
            assert (run.records, run.created, run.skipped, run.released, run.errors) == (
                2, 1, 1, 1, 0,
            )  # fmt: skip
            sources = session.scalars(select(SyncRun.source).where(SyncRun.id < run.id)).all()
            assert sorted(sources) == ["demo-registry", "demo-usage-requests"]
    finally:
        gateway.close()


def test_the_demo_acts_through_the_pages_and_the_mails(
    demo_run: tuple[Path, list[Path], Path],
) -> None:
    """Every person of the demo used a real surface: the clerk sent from the staff pages, the
    contractor opened its mailed link and typed the usage request's code, the official logged in
    and typed the password again; the mails are in the demo's maildir."""
    config, signed, _ = demo_run
    number = signed[0].parent.name
    gateway = open_gateway(load_settings(config, environ={}))
    try:
        with gateway.sessions() as session:
            envelope = session.scalars(
                select(Envelope).where(Envelope.management_number == number)
            ).one()
            contractor, official = envelope.parties
            assert (contractor.staff_id, contractor.auth_method) == (None, "email+access_code")
            assert official.staff_id is not None and official.auth_method == "staff_login"
            events = list_events(session=session, envelope_id=envelope.id)
            by_action = {(e.action, e.actor) for e in events}
            assert ("envelope.sent", "demo-clerk@keiyaku-demo.invalid") in by_action
            assert ("party.authenticated", contractor.email) in by_action  # link + code
            assert ("party.authenticated", official.email) in by_action  # re-authentication
            viewed = [e for e in events if e.action == "documents.viewed"]
            assert len(viewed) == 2 and {e.ip for e in viewed} == {"127.0.0.1"}
            # The contractor registered its 前払金保証 on the signing pages, before signing.
            (added,) = [e for e in events if e.action == "guarantee.added"]
            assert added.actor == f"{contractor.name} <{contractor.email}>"
            assert added.detail["source"] == "signing_page" and added.detail["kind"] == "advance"
            assert added.at < contractor.completed_at  # type: ignore[operator]
            (reference,) = list_guarantees(session=session, envelope_id=envelope.id)
            assert reference.contract_number == guarantee_number(number)
            undelivered = session.scalars(
                select(Delivery.idempotency_key).where(
                    Delivery.envelope_id == envelope.id, Delivery.state != DeliveryState.DELIVERED
                )
            ).all()
    finally:
        gateway.close()
    # The finance sink (a folder in the init config) got the record with that guarantee.
    finance = (config.parent / "pushback" / "finance" / f"{number}.csv").read_bytes()
    (row,) = csv.DictReader(io.StringIO(finance.decode("cp932")))
    assert row["前払金保証_保証契約番号"] == guarantee_number(number)
    assert re.fullmatch(r"[0-9A-F]{10}", row["前払金保証_認証キー"])
    assert row["保証機関"] == "西日本建設業保証株式会社(デモ)"
    box = mailbox.Maildir(str(config.parent / "demo-input" / "mail"), create=False)
    mails = [email.message_from_bytes(bytes(m), policy=email.policy.default) for m in box]
    subjects = {(m["To"].addresses[0].addr_spec, str(m["Subject"])) for m in mails}
    assert any(to == contractor.email and "署名依頼" in subject for to, subject in subjects)
    assert any(to == official.email and "署名依頼" in subject for to, subject in subjects)
    # The demo ends with 電子署名完了のお知らせ delivered to each party, in the demo's maildir:
    # nothing of the envelope is left queued for the config's own transport.
    for address in (contractor.email, official.email):
        assert (address, "電子署名完了のお知らせ") in subjects, (address, subjects)
    assert undelivered == []
    own = config.parent / "mail"
    assert not own.exists() or not list(mailbox.Maildir(str(own), create=False).keys())
    source = (ROOT / "gateway" / "demo.py").read_text(encoding="utf-8")
    for service in ("approve(", "record_approval(", "send_envelope(", "record_view(",
                    "add_guarantee("):  # fmt: skip
        assert service not in source, service


def test_the_demo_runs_again_on_a_new_award_number(
    demo_run: tuple[Path, list[Path], Path],
) -> None:
    config, signed, _ = demo_run
    first = signed[0].parent.name
    out = _run("--config", str(config), "demo").stdout
    (second,) = re.findall(r"^envelope: \w+ \((.+)\)$", out, re.M)
    assert second != first and second.endswith("-002") and first.endswith("-001")
    assert re.search(
        r"^sync: demo-registry: run #\d+ succeeded: 1 records, 0 created, 1 unchanged", out, re.M
    ), out
    assert re.search(
        r"^sync: demo-awards: run #\d+ succeeded: 2 records, 1 created, 0 unchanged, "
        r"1 skipped, 1 envelopes, 0 line errors$",
        out,
        re.M,
    ), out
    assert f"signed: {config.parent / 'demo-output' / second}" in out


def test_config_errors_are_listed(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text((ROOT / "config.example.yaml").read_text())
    result = _run("--config", str(tmp_path / "config.yaml"), "demo", check=False)
    assert result.returncode == 2
    assert "KEIYAKU_MASTER_KEY" in result.stderr and "KEIYAKU_SIGNING_PASSPHRASE" in result.stderr
