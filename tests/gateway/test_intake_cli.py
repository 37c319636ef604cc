"""`keiyaku mapping check` and `keiyaku sync` as an admin runs them, on a fresh `keiyaku init`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_site
from tests.fixtures.pdfs import make_pdf

KEIYAKU = [sys.executable, "-m", "gateway.cli"]
ROOT = Path(__file__).resolve().parents[2]

PORTAL = (
    '"0000000000000000001","令和7年度 庁舎清掃業務","2025-10-01","31389000.00","S1","8002010",'
    '"株式会社テスト","7000012050002"\r\n'
    '"0000000000000000002","未確定の案件","2025-10-01","","S1","8002010","株式会社テスト",""\r\n'
    '"0000000000000000003","法人番号の誤り","2025-10-02","1000","S8","8002010","株式会社誤り",'
    '"7000012050003"\r\n'
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEIYAKU_")}
    return subprocess.run(
        [*KEIYAKU, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, initialised_site: Path) -> Path:
    # no database yet: `mapping check` must not create one
    home = copy_site(initialised_site, None, tmp_path_factory.mktemp("intake") / "home")
    config = home / "config.yaml"
    # Tests drop whole files at once: no need to wait for them to settle.
    config.write_text(
        config.read_text(encoding="utf-8").replace("mode: stable", "mode: none"), encoding="utf-8"
    )
    return home


def test_init_writes_the_sample_mappings(home: Path) -> None:
    names = sorted(p.name for p in (home / "mappings").iterdir())
    assert names == ["municipal.yaml", "portal.yaml", "registry.yaml", "usage_requests.yaml"]
    assert (home / "inbox").is_dir()


def test_mapping_check_prints_drafts_skips_and_line_errors(home: Path, tmp_path: Path) -> None:
    sample = tmp_path / "rakusatsu.csv"
    sample.write_bytes(b"\xef\xbb\xbf" + PORTAL.encode("utf-8"))
    config = str(home / "config.yaml")
    out = _run("--config", config, "mapping", "check", "inbox", "--sample", str(sample))
    assert out.returncode == 1, out.stderr
    assert "line 1: " in out.stdout and '"award_id": "0000000000000000001"' in out.stdout
    assert "line 2: skipped: 落札価格が空欄(契約額未確定)" in out.stdout
    assert "error: rakusatsu.csv:3: contractor.corporate_number:" in out.stdout
    assert "(mapping line 27)" in out.stdout  # corporate_number: in portal.yaml
    assert "3 records: 1 drafts, 1 skipped, 1 errors" in out.stdout
    as_json = json.loads(
        _run(
            "--config", config, "mapping", "check", "inbox", "--sample", str(sample), "--json"
        ).stdout
    )
    assert as_json["drafts"][0]["draft"]["amount"] == "31389000"
    assert as_json["drafts"][0]["draft"]["parties"][2]["name"] == "開発市長 開発 太郎"
    assert as_json["errors"][0]["code"] == "mapping.bad_corporate_number"
    assert not (home / "keiyaku.db").exists()  # nothing touched the database


def test_mapping_check_names_the_yaml_line_of_a_wrong_mapping(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("award:\n  id: '{番号}'\n  title: x\n  amont: '{金額}'\n", encoding="utf-8")
    sample = tmp_path / "s.csv"
    sample.write_text("番号\n1\n", encoding="utf-8")
    out = _run("--config", str(home / "config.yaml"), "mapping", "check", "--mapping", str(bad),
               "--sample", str(sample))  # fmt: skip
    assert out.returncode == 2
    assert f"{bad}:4: award: unknown key 'amont'" in out.stderr


def test_sync_and_runs(home: Path) -> None:
    (home / "inbox" / "pdf").mkdir(exist_ok=True)
    (home / "inbox" / "pdf" / "0000000000000000001.pdf").write_bytes(make_pdf(pages=1))
    (home / "inbox" / "rakusatsu.csv").write_bytes(b"\xef\xbb\xbf" + PORTAL.encode("utf-8"))
    config = str(home / "config.yaml")
    out = _run("--config", config, "sync")
    assert out.returncode == 3, out.stderr  # the run went through, but one line failed
    assert "inbox: run #1 succeeded: 3 records, 1 created" in out.stdout
    assert "1 skipped, 1 waiting, 0 envelopes, 0 conflicts, 1 errors" in out.stdout
    assert "mapping.bad_corporate_number" in out.stdout
    again = _run("--config", config, "sync", "inbox")
    assert "run #2 succeeded: 0 records" in again.stdout  # the file was moved aside
    runs = _run("--config", config, "sync", "--runs")
    assert runs.stdout.splitlines()[0].startswith("#2 ")
    assert "inbox cli succeeded: 3 records" in runs.stdout
    errors = _run("--config", config, "sync", "--errors", "1")
    assert "inbox:rakusatsu.csv:3: contractor.corporate_number:" in errors.stdout
    unknown = _run("--config", config, "sync", "nope")
    assert unknown.returncode == 1 and "config.unknown_source" in unknown.stderr


def test_awards_list_says_why_each_waits_and_staff_release_or_dismiss(home: Path) -> None:
    config = str(home / "config.yaml")
    jv = (
        '"0000000000000000004","共同企業体の工事","2025-10-03","5000000.00","S8","8002010",'
        '"山田・鈴木特定建設工事共同企業体",""\r\n'
    )
    (home / "inbox" / "pdf" / "0000000000000000004.pdf").write_bytes(make_pdf(pages=1))
    (home / "inbox" / "jv.csv").write_bytes(b"\xef\xbb\xbf" + jv.encode("utf-8"))
    assert _run("--config", config, "sync", "inbox").returncode == 0
    out = _run("--config", config, "awards", "list", "--state", "waiting", "--source", "inbox",
               "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    waiting = {a["award_id"]: a for a in json.loads(out.stdout)}
    assert set(waiting) == {"0000000000000000001", "0000000000000000004"}
    consent = waiting["0000000000000000001"]["waiting"]
    assert consent["code"] == "no_usage_request" and "利用申出書" in consent["release_ja"]
    jv_row = waiting["0000000000000000004"]
    assert jv_row["state"] == "waiting_contractor" and jv_row["contractor_id"] is None
    assert jv_row["waiting"]["code"] == "no_contractor_match"
    text = _run("--config", config, "awards", "list").stdout
    assert "inbox:0000000000000000004 waiting_contractor" in text and "2 awards" in text

    # Staff cannot release it without naming the contractor; dismissing is audited.
    refused = _run("--config", config, "awards", "release", "inbox", "0000000000000000004")
    assert refused.returncode == 2 and "state.award_contractor_unknown" in refused.stderr
    dismissed = _run("--config", config, "awards", "dismiss", "inbox", "0000000000000000004",
                     "--reason", "紙で契約済み")  # fmt: skip
    assert dismissed.returncode == 0 and "dismissed" in dismissed.stdout
    left = json.loads(_run("--config", config, "awards", "list", "--json").stdout)
    assert [a["award_id"] for a in left] == ["0000000000000000001"]
    audit = _run(
        "--config", config, "audit", "export", "--from", "2000-01-01", "--to", "2100-12-31"
    )
    assert (
        audit.returncode == 0
        and "award.dismissed" in audit.stdout
        and "紙で契約済み" in audit.stdout
    )


def test_a_file_in_the_wrong_encoding_fails_the_run_and_stays(home: Path) -> None:
    config = str(home / "config.yaml")
    inbox = home / "inbox"
    # The portal export saved by Excel as CP932: the mapping declares UTF-8.
    (inbox / "excel.csv").write_bytes(PORTAL.replace('"",', '"1",').encode("cp932"))
    check = _run(
        "--config", config, "mapping", "check", "inbox", "--sample", str(inbox / "excel.csv")
    )
    assert (
        check.returncode == 1
        and "hint: every record failed; the file looks like cp932" in check.stdout
    )
    out = _run("--config", config, "sync", "inbox")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "failed: 3 records" in out.stdout
    assert "excel.csv: all 3 records failed" in out.stderr
    assert "look like CP932" in out.stderr and "format.encoding: cp932" in out.stderr
    assert (inbox / "excel.csv").exists()  # not moved aside: nothing of it was taken in
    runs = json.loads(_run("--config", config, "sync", "--runs", "--json").stdout)
    assert runs[0]["status"] == "failed" and "excel.csv" in runs[0]["message"]
    # Read again on the next run (still failing, still there) until someone fixes it.
    again = _run("--config", config, "sync", "inbox")
    assert again.returncode == 1 and "excel.csv: all 3 records failed" in again.stderr
    (inbox / "excel.csv").unlink()
    assert _run("--config", config, "sync", "inbox").returncode == 0


def test_a_column_beyond_the_declared_ones_is_one_error_at_its_yaml_line(
    home: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "format: {header: false, columns: [番号, 件名]}\n"
        "award:\n  id: '{番号}'\n  title: {column: 9}\n"
        "contractor:\n  name: '{商号}'\n",
        encoding="utf-8",
    )
    sample = tmp_path / "s.csv"
    sample.write_text("".join(f"{i},件名{i}\n" for i in range(40)), encoding="utf-8")
    out = _run("--config", str(home / "config.yaml"), "mapping", "check", "--mapping", str(bad),
               "--sample", str(sample))  # fmt: skip
    assert out.returncode == 2
    problems = [
        x for x in out.stderr.splitlines() if x.startswith("  - ") and "format.columns" in x
    ]
    assert problems == [
        f"  - {bad}:4: column 9 is out of range: format.columns declares 2",
        f"  - {bad}:6: no column '商号' among format.columns",
    ]


def test_sync_replay_and_reset_cursor(home: Path) -> None:
    config = str(home / "config.yaml")
    # The line error of the first run (a corporate number with a wrong check digit) fails
    # again when replayed: a new dead letter, exit 3; the old ones are marked replayed.
    replay = _run("--config", config, "sync", "replay", "inbox")
    assert replay.returncode == 3, replay.stdout + replay.stderr
    assert "inbox: replayed 1 dead letters as run #" in replay.stdout
    assert "mapping.bad_corporate_number" in replay.stdout
    again = _run("--config", config, "sync", "replay", "inbox", "--run", "1")
    assert "replayed 0 dead letters" in again.stdout and again.returncode == 0
    reset = _run("--config", config, "sync", "reset-cursor", "inbox", "--to", "start")
    assert reset.returncode == 0 and "-> {}" in reset.stdout
    unknown = _run("--config", config, "sync", "reset-cursor", "nope", "--to", "start")
    assert unknown.returncode == 2 and "config.unknown_source" in unknown.stderr
    assert "replay" in _run("--config", config, "sync", "--help").stdout


def test_consent_and_conflict_commands(home: Path) -> None:
    config = str(home / "config.yaml")
    listed = _run("--config", config, "consent", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    missing = _run("--config", config, "consent", "withdraw", "nope", "--reason", "x")
    assert missing.returncode == 2 and "not_found.consent" in missing.stderr
    conflicts = _run("--config", config, "contractors", "conflicts", "--json")
    assert conflicts.returncode == 0 and isinstance(json.loads(conflicts.stdout), list)
