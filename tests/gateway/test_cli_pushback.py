"""`keiyaku guarantee ...` and `keiyaku outbox ...` on a `keiyaku init` home."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import sessionmaker

from core.blobs import BlobStore
from core.model import Envelope
from core.pushback.deliveries import PushbackObserver, Subscription
from core.storage import create_database_engine, migrate
from gateway.cli import main
from gateway.demo import guarantee_number
from tests.fixtures.notices import make_notice
from tests.fixtures.pushback import make_completed_envelopes

ROOT = Path(__file__).resolve().parents[2]
KEY = "Q7xK2mP9aZ"


@pytest.fixture
def home(site_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("KEIYAKU_MASTER_KEY", "KEIYAKU_SIGNING_PASSPHRASE", "KEIYAKU_SESSION_KEY"):
        monkeypatch.delenv(name, raising=False)
    return site_home


def _envelopes(home: Path, titles: list[str]) -> list[str]:
    secrets = dict(
        line.split("=", 1)
        for line in (home / "secrets.env").read_text().splitlines()
        if "=" in line
    )
    blobs = BlobStore(home / "blobs", bytes.fromhex(secrets["KEIYAKU_MASTER_KEY"]))
    engine = create_database_engine(f"sqlite:///{home / 'keiyaku.db'}")
    migrate(engine)
    numbers = []
    with sessionmaker(engine, expire_on_commit=False)() as session:
        for index, title in enumerate(titles):
            (envelope_id,) = make_completed_envelopes(
                session, blobs, 1, title=title, prefix=f"KG-CLI{index}"
            )
            envelope = session.get_one(Envelope, envelope_id)
            # What seal_envelope's notify does with the configured sinks.
            PushbackObserver([Subscription("documents"), Subscription("finance")]).envelope_event(
                session=session, envelope=envelope, event="envelope.completed", party=None
            )
            session.commit()
            numbers.append(envelope.management_number)
    engine.dispose()
    return numbers


def _run(home: Path, *args: str, input: str | None = None, code: int = 0) -> str:
    result = CliRunner().invoke(main, ["--config", str(home / "config.yaml"), *args], input=input)
    assert result.exit_code == code, result.output + str(result.exception)
    return result.output


def test_guarantees_then_push_back_to_the_finance_folder(home: Path, tmp_path: Path) -> None:
    good, bad = _envelopes(home, ["〇〇道路改良工事", "𠮷田地区排水路工事"])
    notice = tmp_path / "notice.pdf"
    notice.write_bytes(make_notice(kind="前払金保証"))
    out = _run(home, "guarantee", "import-notice", good, str(notice))
    assert "前払金保証  2070004426  key ********aZ" in out and KEY not in out
    out = _run(
        home,
        "guarantee",
        "add",
        good,
        "--kind",
        "契約保証",
        "--number",
        "2070202096",
        "--issuer",
        "西日本建設業保証株式会社",
        "--key-stdin",
        input="Zz9Yy8Xx7W\n",
    )
    assert "契約保証  2070202096" in out and "Zz9Yy8Xx7W" not in out
    listed = _run(home, "guarantee", "list", good)
    assert listed.count("key ********") == 2 and KEY not in listed
    refused = _run(
        home,
        "guarantee",
        "add",
        good,
        "--kind",
        "前払金保証",
        "--number",
        "2070004426",
        "--issuer",
        "x",
        "--key-stdin",
        input="Abcdef123\n",
        code=2,
    )
    assert "guarantee.duplicate" in refused
    other = tmp_path / "other.pdf"
    other.write_bytes(make_notice(project_name="△△トンネル工事", contract_number="2070004427"))
    assert "guarantee.project_mismatch" in _run(
        home, "guarantee", "import-notice", good, str(other), code=2
    )

    out = _run(home, "outbox", "dispatch")
    assert "delivered: 3  retrying: 0  dead: 1" in out
    csv = (home / "pushback" / "finance" / f"{good}.csv").read_bytes().decode("cp932")
    assert "2070202096" in csv and "Zz9Yy8Xx7W" in csv and KEY in csv  # finance gets the keys
    assert (home / "pushback" / "documents" / good / f"{good}_締結証明書.pdf").exists()

    dead = _run(home, "outbox", "list", "--state", "dead")
    (dead_id,) = re.findall(r"^\s+(\d+)\s+dead\s+finance", dead, re.M)
    shown = _run(home, "outbox", "show", dead_id)
    assert "outbound.unencodable" in shown and "U+20BB7" in shown
    assert "idempotency_key: finance:" in shown and "JST" in shown
    assert "due now" in _run(home, "outbox", "retry", dead_id)
    assert "dead: 1" in _run(home, "outbox", "dispatch", "--sink", "finance")
    assert "outbox.not_dead" in _run(home, "outbox", "retry", "1", code=2)
    assert "config.unknown_sink" in _run(home, "outbox", "dispatch", "--sink", "nope", code=2)
    assert bad


def test_the_demo_ends_with_the_finance_record_in_a_folder_sink(home: Path) -> None:
    out = _run(home, "demo")
    (number,) = re.findall(r"^envelope: \w+ \((.+)\)$", out, re.M)
    assert f"pushed: finance: {home / 'pushback' / 'finance'}" in out
    csv = (home / "pushback" / "finance" / f"{number}.csv").read_bytes().decode("cp932")
    assert number in csv and "前払金保証_保証契約番号" in csv and guarantee_number(number) in csv
    signed = home / "pushback" / "documents" / number
    award = number.split("-", 1)[1]  # the mapping names the documents after 案件番号
    assert sorted(p.name for p in signed.iterdir()) == sorted(
        [
            f"{number}_工事請負契約書_{award}.pdf",
            f"{number}_請書_{award}.pdf",
            f"{number}_締結証明書.pdf",
        ]
    )
    assert "delivered: 0" in _run(home, "outbox", "dispatch", "--sink", "documents")
