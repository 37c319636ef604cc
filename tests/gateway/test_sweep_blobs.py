"""`keiyaku sweep-blobs`: stored documents no row refers to (a killed request, a refused create)
are reported, then deleted once older than the grace period; every referenced one stays."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.blobs import BlobStore
from gateway.cli import main


@pytest.fixture
def home(site_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for line in (site_home / "secrets.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            name, value = line.split("=", 1)
            monkeypatch.setenv(name, value)
    return site_home


def _run(home: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(home / "config.yaml"), *args])
    return result.exit_code, result.output


def test_orphans_are_reported_then_swept_and_referenced_documents_stay(home: Path) -> None:
    code, out = _run(home, "demo")
    assert code == 0, out
    signed = [Path(p) for p in re.findall(r"^signed: (.+)$", out, re.M)]
    store_root = home / "blobs"
    referenced = {p.name for p in store_root.glob("??/*")}
    key = bytes.fromhex(os.environ["KEIYAKU_MASTER_KEY"])
    store = BlobStore(store_root, key)
    old_orphan = store.put(b"%PDF-1.7 left by a killed request")
    young_orphan = store.put(b"%PDF-1.7 its row is about to commit")
    leftover = store_root / old_orphan[:2] / f".{'ab' * 16}.tmp"
    leftover.write_bytes(b"half a blob")
    two_days_ago = time.time() - 2 * 86400
    for path in (store_root / old_orphan[:2] / old_orphan, leftover):
        os.utime(path, (two_days_ago, two_days_ago))

    code, out = _run(home, "sweep-blobs", "--dry-run", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert sorted(o["name"] for o in report["orphans"]) == sorted([old_orphan, leftover.name])
    assert report["deleted"] == 0 and report["kept_young"] == 1
    assert (store_root / old_orphan[:2] / old_orphan).exists()  # a dry run deletes nothing

    code, out = _run(home, "sweep-blobs")
    assert code == 0, out
    assert f"deleted: {old_orphan}" in out and "orphans: 2, deleted: 2" in out
    left = {p.name for p in store_root.glob("??/*")}
    assert left == referenced | {young_orphan}
    mirror = home / "backups" / "blobs"
    assert not (mirror / old_orphan[:2] / old_orphan).exists()  # the backup copy too
    for path in signed:
        code, out = _run(home, "verify", str(path))
        assert code == 0, out
    code, out = _run(home, "audit", "verify")
    assert code == 0, out
