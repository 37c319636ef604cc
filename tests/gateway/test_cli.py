"""The newcomer's path: `keiyaku init`, `demo`, `verify`, checked independently with poppler and qpdf."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_demo_signs_two_documents_with_three_signatures_and_a_timestamp(
    demo_run: tuple[Path, list[Path], Path],
) -> None:
    _, signed, certificate = demo_run
    assert [p.name for p in signed] == ["工事請負契約書.pdf", "請書.pdf"]
    for path in signed:
        pdfsig = subprocess.run(["pdfsig", str(path)], capture_output=True, text=True)
        # Three approvals valid; poppler cannot check the fourth, the document timestamp
        # (notes/signing.md), which `keiyaku verify` and the signing tests check instead.
        assert pdfsig.stdout.count("Signature #") == 4, pdfsig.stdout
        assert pdfsig.stdout.count("Signature is Valid.") == 3, pdfsig.stdout
        assert pdfsig.stdout.count("Signature Type: ETSI.CAdES.detached") == 3, pdfsig.stdout
        assert "Signature Field Name: kg_doc_timestamp" in pdfsig.stdout
        qpdf = subprocess.run(["qpdf", "--check", str(path)], capture_output=True, text=True)
        assert qpdf.returncode == 0, qpdf.stdout + qpdf.stderr
        assert "No syntax or stream encoding errors found" in qpdf.stdout
    text = subprocess.run(
        ["pdftotext", str(certificate), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "締結証明書" in text and "髙橋 一郎" in text


def test_verify_accepts_the_demo_and_rejects_a_flipped_byte(
    demo_run: tuple[Path, list[Path], Path], tmp_path: Path
) -> None:
    config, signed, _ = demo_run
    ok = _run("--config", str(config), "verify", "--json", str(signed[0]))
    report = json.loads(ok.stdout)
    assert report["ok"] is True
    kinds = [s["kind"] for s in report["signatures"]]
    assert kinds.count("approval") == 3 and kinds.count("document_timestamp") == 1
    assert all(s["intact"] and s["trusted"] for s in report["signatures"])
    assert "JSTに承認しました" in report["signatures"][0]["reason"]

    text = _run("--config", str(config), "verify", str(signed[0])).stdout
    assert text.splitlines()[0].endswith(": OK")
    assert text.count("approval kg_sig_") == 3 and "document_timestamp" in text
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
    assert pdfsig.stdout.count("Digest Mismatch.") == 3, pdfsig.stdout
    assert "Signature is Valid." not in pdfsig.stdout


def test_config_errors_are_listed(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text((ROOT / "config.example.yaml").read_text())
    result = _run("--config", str(tmp_path / "config.yaml"), "demo", check=False)
    assert result.returncode == 2
    assert "KEIYAKU_MASTER_KEY" in result.stderr and "KEIYAKU_SIGNING_PASSPHRASE" in result.stderr
