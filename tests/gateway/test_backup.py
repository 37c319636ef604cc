"""Backups: `keiyaku backup` then a lost disk then `keiyaku restore`, and every document still
verifies; generations are pruned to the configured number; PostgreSQL through pg_dump."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from core.blobs import BlobStore
from core.errors import BackupError
from core.model import Base
from core.records.backup import backup, list_backups, plan_restore, restore
from core.storage import create_database_engine, known_revisions, migrate, schema_revisions
from tests.fixtures.pushback import make_completed_envelopes

KEIYAKU = [sys.executable, "-m", "gateway.cli"]
ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEIYAKU_")}
    return subprocess.run(
        [*KEIYAKU, *args], capture_output=True, text=True, check=check, cwd=ROOT, env=env,
        timeout=300,
    )  # fmt: skip


def test_backup_destroy_restore_verifies_every_document(tmp_path: Path) -> None:
    home = tmp_path / "home"
    _run("init", str(home))
    config = home / "config.yaml"
    demo = _run("--config", str(config), "demo").stdout
    signed = Path(re.findall(r"^signed: (.+)$", demo, re.M)[0])
    # `verify --at`: valid a day later (a date-time with its zone, whatever the hour here); not
    # after the development TSA certificate lapsed (10 years); and a moment before the signing
    # fails for exactly that reason
    now = dt.datetime.now(dt.UTC)
    tomorrow = (now + dt.timedelta(days=1)).isoformat(timespec="seconds")
    assert _run("--config", str(config), "verify", str(signed), "--at", tomorrow).returncode == 0
    yesterday = (now - dt.timedelta(days=1)).isoformat(timespec="seconds")
    early = _run("--config", str(config), "verify", str(signed), "--at", yesterday, check=False)
    assert early.returncode == 1 and "precedes this signature's time" in early.stdout
    assert "does not chain" not in early.stdout
    naive = _run(
        "--config", str(config), "verify", str(signed), "--at", "2030-01-01T00:00", check=False
    )
    assert naive.returncode == 2 and "has no time zone" in naive.stderr
    late = _run("--config", str(config), "verify", str(signed), "--at", "2040-01-01", check=False)
    assert late.returncode == 1 and "FAILED" in late.stdout
    database, blobs = home / "keiyaku.db", home / "blobs"
    assert database.exists() and any(blobs.rglob("*"))
    # each document was copied to the backup folder as it was stored (随時取得)
    stored = sorted(p.relative_to(blobs) for p in blobs.rglob("*") if p.is_file())
    mirrored = home / "backups" / "blobs"
    assert sorted(p.relative_to(mirrored) for p in mirrored.rglob("*") if p.is_file()) == stored
    (mirrored / stored[0]).unlink()  # one copy lost: the daily backup puts it back

    out = _run("--config", str(config), "backup").stdout
    (written,) = re.findall(r"^database: (.+)$", out, re.M)
    assert Path(written).parent == home / "backups" / "db"
    assert f"documents: 1 copied, {len(stored)} in the store" in out
    assert (mirrored / stored[0]).read_bytes() == (blobs / stored[0]).read_bytes()
    manifest = json.loads(Path(written).with_suffix(".json").read_text())
    assert manifest["kind"] == "sqlite" and manifest["blobs_total"] == len(stored)
    # a second backup copies no document again (incremental by name)
    again = _run("--config", str(config), "backup").stdout
    assert "documents: 0 copied" in again
    # the scheduled job does the same, guarded per fire time
    job = _run("--config", str(config), "jobs", "run", "backup").stdout
    assert job.strip().endswith(": succeeded")
    assert len(list_backups(home / "backups")) == 3

    # the disk is lost: database and every document
    database.unlink()
    for extra in home.glob("keiyaku.db-*"):
        extra.unlink()
    shutil.rmtree(blobs)

    restored = _run("--config", str(config), "restore", str(home / "backups"), check=False)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    match = re.search(r"check: (\d+) envelopes, (\d+)/(\d+) documents verify", restored.stdout)
    assert match is not None, restored.stdout
    envelopes, ok, total = map(int, match.groups())
    assert envelopes >= 1 and total >= 2 and ok == total
    assert "audit chain ok" in restored.stdout and "database ok" in restored.stdout

    # restoring over a live database needs --force; a dry run says so and changes nothing
    before = database.read_bytes()
    dry = _run("--config", str(config), "restore", str(home / "backups"), "--dry-run", check=False)
    assert dry.returncode == 2 and "would: refuse without --force" in dry.stdout
    assert f"target: {envelopes} envelopes now" in dry.stdout
    assert "documents decrypted with this site's key: " in dry.stdout
    assert database.read_bytes() == before
    refused = _run("--config", str(config), "restore", str(home / "backups"), check=False)
    assert refused.returncode == 2 and "--force" in refused.stderr
    # a damaged backup file is refused before anything is touched
    newest = list_backups(home / "backups")[-1]
    newest.write_bytes(newest.read_bytes()[:-10] + b"0123456789")
    damaged = _run(
        "--config", str(config), "restore", str(newest), "--force", "--json", check=False
    )
    assert damaged.returncode == 2 and "backup.corrupt" in damaged.stderr


def test_generations_are_pruned(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'keiyaku.db'}"
    engine = create_database_engine(url)
    migrate(engine)
    engine.dispose()
    start = dt.datetime(2026, 11, 1, 16, 30, tzinfo=dt.UTC)
    for day in range(10):
        result = backup(
            database_url=url,
            blob_root=tmp_path / "blobs",
            directory=tmp_path / "backups",
            generations=8,
            now=start + dt.timedelta(days=day),
        )
    kept = list_backups(tmp_path / "backups")
    assert len(kept) == 8
    assert kept[0].name == "keiyaku-20261103T163000.000000Z.sqlite3"
    assert result.pruned and result.pruned[0].name == "keiyaku-20261102T163000.000000Z.sqlite3"
    assert not (tmp_path / "backups" / "db" / "keiyaku-20261101T163000.000000Z.json").exists()


@pytest.mark.postgres
def test_postgresql_backup_and_restore_with_pg_dump(postgres_url: str, tmp_path: Path) -> None:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump/pg_restore not installed")
    engine = create_database_engine(postgres_url)
    migrate(engine)
    try:
        with engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
            conn.execute(
                text(
                    "INSERT INTO contractors (id, name, created_at) "
                    "VALUES ('c1', '株式会社テスト', now())"
                )
            )
        result = backup(
            database_url=postgres_url,
            blob_root=tmp_path / "blobs",
            directory=tmp_path / "bk",
            schema_revisions=schema_revisions(engine),
        )
        assert result.database_file.suffix == ".pgdump"
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM contractors"))
        restore(
            backup_file=result.database_file,
            database_url=postgres_url,
            blob_root=tmp_path / "b",
            master_key=KEY_A,
            known_revisions=known_revisions(engine),
        )
        with engine.connect() as conn:
            names = conn.execute(text("SELECT name FROM contractors")).scalars().all()
        assert names == ["株式会社テスト"]
        with pytest.raises(BackupError) as info:
            restore(
                backup_file=result.database_file.with_suffix(".sqlite3"),
                database_url=postgres_url,
                blob_root=tmp_path / "b",
                master_key=KEY_A,
                known_revisions=known_revisions(engine),
            )
        assert info.value.code == "backup.not_found"
    finally:
        with engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
        engine.dispose()


KEY_A, KEY_B = b"a" * 32, b"b" * 32


@pytest.mark.postgres
def test_a_restore_into_the_wrong_site_leaves_it_untouched(
    postgres_url: str, tmp_path: Path
) -> None:
    """A backup of another site (its documents under another master key) is refused before
    pg_restore runs, even with --force; this site's own backup over its live data needs --force;
    a backup of a schema this version does not know is refused too."""
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump/pg_restore not installed")
    engine = create_database_engine(postgres_url)
    migrate(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)

    def truncate() -> None:
        with engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))

    def envelopes() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM envelopes")).scalar_one())

    try:
        truncate()
        with sessions() as session:  # the other site: two envelopes under key A
            make_completed_envelopes(session, BlobStore(tmp_path / "a", KEY_A), 2, prefix="KG-A")
        other = backup(
            database_url=postgres_url,
            blob_root=tmp_path / "a",
            directory=tmp_path / "bk-a",
            schema_revisions=schema_revisions(engine),
        )
        truncate()
        with sessions() as session:  # this site: three envelopes under key B
            make_completed_envelopes(session, BlobStore(tmp_path / "b", KEY_B), 3, prefix="KG-B")
        known = known_revisions(engine)
        for force in (False, True):
            with pytest.raises(BackupError) as info:
                restore(
                    backup_file=other.database_file,
                    database_url=postgres_url,
                    blob_root=tmp_path / "b",
                    master_key=KEY_B,
                    known_revisions=known,
                    force=force,
                )
            assert info.value.code == "backup.refused"
            assert "master key" in info.value.message_en
            assert envelopes() == 3  # untouched
        plan = plan_restore(
            backup_file=other.database_file,
            database_url=postgres_url,
            master_key=KEY_B,
            known_revisions=known,
        )
        assert plan.problems and plan.target_envelopes == 3 and plan.keys_checked == 0

        # A schema from a newer version is refused too.
        manifest = other.database_file.with_suffix(".json")
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**data, "schema_revisions": ["9999"]}))
        with pytest.raises(BackupError, match="newer than this version knows"):
            restore(
                backup_file=other.database_file,
                database_url=postgres_url,
                blob_root=tmp_path / "a2",
                master_key=KEY_A,
                known_revisions=known,
                force=True,
            )
        manifest.write_text(json.dumps(data))

        # With the right key: refused over live data without force, done with it.
        with pytest.raises(BackupError) as info:
            restore(
                backup_file=other.database_file,
                database_url=postgres_url,
                blob_root=tmp_path / "a2",
                master_key=KEY_A,
                known_revisions=known,
            )
        assert info.value.code == "backup.target_not_empty" and envelopes() == 3
        restore(
            backup_file=other.database_file,
            database_url=postgres_url,
            blob_root=tmp_path / "a2",
            master_key=KEY_A,
            known_revisions=known,
            force=True,
        )
        assert envelopes() == 2
    finally:
        truncate()
        engine.dispose()
