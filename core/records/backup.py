"""Backups: the database as dated generations, the documents as an incremental copy.

Layout of a backup folder::

    db/keiyaku-20261122T013000.000000Z.sqlite3  SQLite online backup (``Connection.backup``)
    db/keiyaku-20261122T013000.000000Z.pgdump   or PostgreSQL ``pg_dump --format=custom``
    db/keiyaku-20261122T013000.000000Z.json     manifest: when, what, SHA-256, blob count
    blobs/ab/ab12...                        every blob, copied once by name

Database backups are written under a temporary name and renamed, so a crash never leaves a
half-written generation; the oldest beyond ``generations`` are deleted afterwards. Blobs are
immutable files named by a random id (a changed document is a new blob), so copying the names
the backup lacks is a complete incremental backup; blobs are not deleted from the backup
(but see below).
They stay encrypted: the master key is *not* in the backup and must be kept apart from it.

The one exception is the retention purge (:mod:`core.records.retention`): documents deleted at the end
of their retention must not live on in the backup either. Once every kept generation was taken
after an envelope's purge, no restore can need its blobs, and the backup deletes its copies of
them (``blobs/.purged-through`` remembers how far it got). Until then a generation from before
the purge may be restored, so its documents stay, at most ``generations`` backups long.

Restore is the reverse: the chosen generation into the database (the SQLite backup API into
the file; ``pg_restore --clean`` for PostgreSQL), then every blob the store lacks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from core.blobs import blob_path, fsync_folder
from core.errors import BackupError

__all__ = [
    "BackupResult",
    "PurgedBlobs",
    "RestorePlan",
    "RestoreResult",
    "backup",
    "copy_blobs",
    "delete_purged_copies",
    "generation_time",
    "latest_backup",
    "list_backups",
    "plan_restore",
    "restore",
]

_SUFFIXES = (".sqlite3", ".pgdump")
_STEM_TIME = "keiyaku-%Y%m%dT%H%M%S.%fZ"
# A purge is stamped with the time its node began it and commits a moment later, so a
# generation taken just after that stamp may not show it yet: its blobs wait this much longer.
_PURGE_SLACK = dt.timedelta(hours=1)
_PURGED_MARK = ".purged-through"

# The blob ids of the envelopes whose documents were purged in [since, before) (since None: from
# the first purge on); core.records.retention.purged_blob_ids over a session.
PurgedBlobs = Callable[[dt.datetime | None, dt.datetime], Iterable[str]]


@dataclass(frozen=True)
class BackupResult:
    """One backup run: the database file written, blobs copied now, generations deleted, and
    copies of purged documents deleted from the backup."""

    database_file: Path
    blobs_copied: int
    blobs_total: int
    pruned: tuple[Path, ...]
    # None: not looked for (see gateway.ops.run_backup)
    purged_blobs_deleted: int | None = None


@dataclass(frozen=True)
class RestoreResult:
    """One restore: which generation, how many blobs were put back."""

    database_file: Path
    blobs_restored: int


def _sqlite_path(database_url: str) -> Path | None:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:":
        raise BackupError(
            "backup.unsupported_database",
            "an in-memory SQLite database cannot be backed up",
            "メモリ上のSQLiteデータベースはバックアップできません。",
        )
    return Path(url.database)


def _libpq(database_url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password, and the environment carrying it (not on argv)."""
    url = make_url(database_url).set(drivername="postgresql")
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
        url = url.set(password=None)
    return url.render_as_string(hide_password=False), env


def _run_tool(args: list[str], env: dict[str, str], what: str) -> None:
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
    except FileNotFoundError as exc:
        raise BackupError(
            "backup.tool_missing",
            f"{args[0]} is not installed or not on PATH",
            f"{args[0]} が見つかりません。",
        ) from exc
    if done.returncode != 0:
        raise BackupError(
            "backup.tool_failed",
            f"{what} failed ({done.returncode}): {done.stderr.strip()[:500]}",
            f"{what} に失敗しました。",
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def copy_blobs(source: Path, target: Path) -> tuple[int, int]:
    """Copy every blob file of ``source`` that ``target`` lacks (by relative name); returns
    (copied, total). Temporary files of an upload in progress are skipped."""
    copied = total = 0
    if not source.exists():
        return 0, 0
    for path in sorted(source.rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        total += 1
        dest = target / path.relative_to(source)
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        try:
            shutil.copyfile(path, tmp)
        except FileNotFoundError:  # deleted meanwhile by the retention purge
            total -= 1
            continue
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        copied += 1
    return copied, total


def list_backups(directory: Path) -> list[Path]:
    """Database generations in ``directory``, oldest first."""
    folder = directory / "db"
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in _SUFFIXES)


def latest_backup(directory: Path) -> Path:
    """The newest database generation in ``directory``."""
    found = list_backups(directory)
    if not found:
        raise BackupError(
            "backup.none_found",
            f"no database backup in {directory / 'db'}",
            f"{directory / 'db'} にバックアップがありません。",
        )
    return found[-1]


def backup(
    *,
    database_url: str,
    blob_root: Path,
    directory: Path,
    generations: int = 8,
    pg_dump: str = "pg_dump",
    now: dt.datetime | None = None,
    schema_revisions: Iterable[str] = (),
) -> BackupResult:
    """Write one database generation and copy new blobs into ``directory``; keep the newest
    ``generations`` database files."""
    if generations < 1:
        raise ValueError("generations must be >= 1")
    moment = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    folder = directory / "db"
    folder.mkdir(parents=True, exist_ok=True)
    # microseconds: two backups in one second (a manual run beside the job) never collide
    stem = f"keiyaku-{moment:%Y%m%dT%H%M%S.%fZ}"
    sqlite_path = _sqlite_path(database_url)
    if sqlite_path is not None:
        final = folder / f"{stem}.sqlite3"
        tmp = folder / f".{stem}.sqlite3.tmp"
        tmp.unlink(missing_ok=True)
        if not sqlite_path.exists():
            raise BackupError(
                "backup.database_missing",
                f"the SQLite database {sqlite_path} does not exist",
                f"データベース {sqlite_path} がありません。",
            )
        # the online backup API copies a consistent snapshot while the gateway keeps writing
        src = sqlite3.connect(f"file:{sqlite_path}?mode=ro", uri=True)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        kind = "sqlite"
    else:
        final = folder / f"{stem}.pgdump"
        tmp = folder / f".{stem}.pgdump.tmp"
        url, env = _libpq(database_url)
        _run_tool(
            [pg_dump, "--format=custom", "--no-owner", f"--file={tmp}", f"--dbname={url}"],
            env,
            "pg_dump",
        )
        kind = "postgresql"
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    copied, total = copy_blobs(blob_root, directory / "blobs")
    manifest = {
        "created_at": moment.isoformat(),
        "kind": kind,
        "database_file": final.name,
        "sha256": _sha256(final),
        "blobs_total": total,
        "schema_revisions": sorted(schema_revisions),
    }
    final.with_suffix(".json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    fsync_folder(folder)
    pruned: list[Path] = []
    for old in list_backups(directory)[:-generations]:
        old.unlink()
        old.with_suffix(".json").unlink(missing_ok=True)
        pruned.append(old)
    return BackupResult(final, copied, total, tuple(pruned))


def generation_time(path: Path) -> dt.datetime:
    """When the database generation ``path`` was taken (UTC), from its name."""
    try:
        return dt.datetime.strptime(path.stem, _STEM_TIME).replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise BackupError(
            "backup.bad_name",
            f"not a backup generation name: {path.name}",
            f"バックアップのファイル名ではありません: {path.name}",
        ) from exc


def delete_purged_copies(directory: Path, purged: PurgedBlobs) -> int:
    """Delete the backup's copies of the blobs purged before every generation it keeps was
    taken; the number deleted. Run after :func:`backup`."""
    kept = list_backups(directory)
    if not kept:
        return 0
    before = generation_time(kept[0]) - _PURGE_SLACK
    mark = directory / "blobs" / _PURGED_MARK
    since = dt.datetime.fromisoformat(mark.read_text(encoding="ascii")) if mark.exists() else None
    if since is not None and since >= before:
        return 0
    deleted = 0
    folders: set[Path] = set()
    for blob_id in purged(since, before):
        path = blob_path(directory / "blobs", blob_id)
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        deleted += 1
        folders.add(path.parent)
    for folder in folders:
        fsync_folder(folder)
    mark.parent.mkdir(parents=True, exist_ok=True)
    tmp = mark.with_name(f"{_PURGED_MARK}.tmp")
    tmp.write_text(before.isoformat(), encoding="ascii")
    os.replace(tmp, mark)  # only after the deletions: a crash repeats them, harmlessly
    fsync_folder(mark.parent)
    return deleted


@dataclass(frozen=True)
class RestorePlan:
    """What a restore would do, checked before anything is touched."""

    backup_file: Path
    kind: str  # sqlite or postgresql
    target_envelopes: int  # envelopes the target database holds now (0: empty or no schema)
    keys_checked: int  # backup documents decrypted with the configured master key
    schema_revisions: tuple[str, ...]  # the backup's migration heads, when its manifest says
    problems: tuple[str, ...]  # each one refuses the restore, whatever --force says

    @property
    def target_has_data(self) -> bool:
        """Whether the restore would replace a site's envelopes (only with ``force``)."""
        return self.target_envelopes > 0


_KEY_SAMPLE = 5


def _target_envelopes(database_url: str) -> int:
    """Envelopes in the target database; 0 when it does not exist or has no schema yet."""
    from sqlalchemy import create_engine, inspect, text

    sqlite_path = _sqlite_path(database_url)
    if sqlite_path is not None and not sqlite_path.exists():
        return 0
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("envelopes"):
                return 0
            return int(conn.execute(text("SELECT count(*) FROM envelopes")).scalar_one())
    finally:
        engine.dispose()


def plan_restore(
    *,
    backup_file: Path,
    database_url: str,
    master_key: bytes,
    known_revisions: Iterable[str],
) -> RestorePlan:
    """Check a restore before it destroys anything: the backup is whole (its manifest's
    SHA-256), of the target's kind, its documents decrypt with this site's master key (a backup
    of another site does not), its schema is one this version knows, and how many envelopes
    the target would lose."""
    from core.blobs import BlobStore

    problems: list[str] = []
    if not backup_file.is_file():
        raise BackupError(
            "backup.not_found",
            f"backup file {backup_file} does not exist",
            f"バックアップファイル {backup_file} がありません。",
        )
    manifest_path = backup_file.with_suffix(".json")
    manifest = (
        json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.exists() else {}
    )
    if manifest.get("sha256") and manifest["sha256"] != _sha256(backup_file):
        raise BackupError(
            "backup.corrupt",
            f"backup file {backup_file} does not match its manifest's SHA-256",
            f"バックアップファイル {backup_file} が破損しています。",
        )
    sqlite = _sqlite_path(database_url) is not None
    wanted = ".sqlite3" if sqlite else ".pgdump"
    if backup_file.suffix != wanted:
        problems.append(
            f"{backup_file.name} is not a {'SQLite' if sqlite else 'pg_dump'} backup, "
            "as the configured database needs"
        )
    revisions = tuple(manifest.get("schema_revisions") or ())
    unknown = sorted(set(revisions) - set(known_revisions))
    if unknown:
        problems.append(
            f"the backup's schema ({', '.join(unknown)}) is newer than this version knows: "
            "restore with the version that made it"
        )
    folder = backup_file.parent.parent / "blobs"
    sample = sorted(p.name for p in folder.glob("??/*") if p.is_file())[:_KEY_SAMPLE]
    checked = 0
    if sample:
        store = BlobStore(folder, master_key)
        for blob_id in sample:
            try:
                store.get(blob_id)
            except BackupError:
                raise
            except Exception as exc:  # wrong key, tampered copy: either way, refuse
                code = getattr(exc, "code", type(exc).__name__)
                problems.append(
                    f"backup document {blob_id} does not decrypt with this site's master key "
                    f"({code}): a backup of another site, or another key"
                )
                break
            checked += 1
    return RestorePlan(
        backup_file=backup_file,
        kind="sqlite" if sqlite else "postgresql",
        target_envelopes=_target_envelopes(database_url),
        keys_checked=checked,
        schema_revisions=revisions,
        problems=tuple(problems),
    )


def restore(
    *,
    backup_file: Path,
    database_url: str,
    blob_root: Path,
    master_key: bytes,
    known_revisions: Iterable[str],
    force: bool = False,
    pg_restore: str = "pg_restore",
) -> RestoreResult:
    """Put the database generation ``backup_file`` back into ``database_url`` and copy back
    every blob of its backup folder that ``blob_root`` lacks. Stop the gateway first.

    Refuses, before touching anything, what :func:`plan_restore` finds wrong, and a target that
    holds envelopes unless ``force``.
    """
    plan = plan_restore(
        backup_file=backup_file,
        database_url=database_url,
        master_key=master_key,
        known_revisions=known_revisions,
    )
    if plan.problems:
        raise BackupError(
            "backup.refused",
            "restore refused: " + "; ".join(plan.problems),
            "このバックアップは復元できません(別のサイトのバックアップ、鍵の違い、種類の違いなど)。",
            details={"problems": list(plan.problems)},
        )
    if plan.target_has_data and not force:
        raise BackupError(
            "backup.target_not_empty",
            f"the target database holds {plan.target_envelopes} envelopes; pass --force to "
            "replace them",
            f"復元先のデータベースに封筒が{plan.target_envelopes}件あります。上書きするには "
            "--force を指定してください。",
        )
    sqlite_path = _sqlite_path(database_url)
    if sqlite_path is not None:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        src = sqlite3.connect(f"file:{backup_file}?mode=ro", uri=True)
        dst = sqlite3.connect(sqlite_path)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
    else:
        url, env = _libpq(database_url)
        _run_tool(
            [
                pg_restore,
                "--clean",
                "--if-exists",
                "--no-owner",
                "--single-transaction",
                f"--dbname={url}",
                str(backup_file),
            ],
            env,
            "pg_restore",
        )
    restored, _total = copy_blobs(backup_file.parent.parent / "blobs", blob_root)
    return RestoreResult(backup_file, restored)
