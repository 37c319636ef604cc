"""The encrypted blob store: round trip, per-blob keys, tamper and swap detection."""

from __future__ import annotations

import io
import secrets
import tracemalloc
from pathlib import Path

import pytest

from core.blobs import BlobStore, blob_path
from core.errors import BlobError, ConfigError, GatewayError


def _file(store: BlobStore, blob_id: str) -> Path:
    return store.root / blob_id[:2] / blob_id


def test_round_trip_and_ciphertext_is_not_plaintext(blobs: BlobStore) -> None:
    data = b"%PDF-1.7\n" + "工事請負契約書".encode() * 1000
    blob_id = blobs.put(data)
    assert blobs.get(blob_id) == data
    raw = _file(blobs, blob_id).read_bytes()
    assert b"%PDF" not in raw
    assert "工事請負契約書".encode() not in raw


def test_each_blob_has_its_own_key(blobs: BlobStore) -> None:
    a, b = blobs.put(b"same"), blobs.put(b"same")
    assert a != b
    # Wrapped data keys (bytes 12..52) differ, so one leaked data key opens one blob only.
    assert _file(blobs, a).read_bytes()[12:52] != _file(blobs, b).read_bytes()[12:52]


@pytest.mark.parametrize("offset", [0, 5, 20, 60, -1])
def test_any_flipped_byte_is_detected(blobs: BlobStore, offset: int) -> None:
    blob_id = blobs.put(b"x" * 4096)
    path = _file(blobs, blob_id)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(BlobError) as info:
        blobs.get(blob_id)
    assert info.value.code in {"blob.tampered", "blob.wrong_master_key"}


def test_truncation_and_swapping_are_detected(blobs: BlobStore) -> None:
    a, b = blobs.put(b"contract A" * 100), blobs.put(b"contract B" * 100)
    _file(blobs, a).write_bytes(_file(blobs, b).read_bytes())  # B's file under A's name
    with pytest.raises(BlobError, match="blob.tampered"):
        blobs.get(a)
    _file(blobs, b).write_bytes(_file(blobs, b).read_bytes()[:30])
    with pytest.raises(BlobError, match="blob.tampered"):
        blobs.get(b)


def test_wrong_master_key_is_told_apart(tmp_path: Path) -> None:
    store = BlobStore(tmp_path, secrets.token_bytes(32))
    blob_id = store.put(b"data")
    with pytest.raises(BlobError) as info:
        BlobStore(tmp_path, secrets.token_bytes(32)).get(blob_id)
    assert info.value.code == "blob.wrong_master_key"


def test_missing_and_malformed_ids(blobs: BlobStore) -> None:
    with pytest.raises(BlobError, match="blob.missing"):
        blobs.get("0" * 32)
    with pytest.raises(BlobError, match="blob.bad_id"):
        blobs.get("../../etc/passwd")


def test_master_key_must_be_32_bytes(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        BlobStore(tmp_path, b"short")


def test_each_blob_is_mirrored_as_it_is_stored(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    store = BlobStore(tmp_path / "blobs", key, mirror=tmp_path / "backups" / "blobs")
    blob_id = store.put(b"%PDF signed")
    primary = tmp_path / "blobs" / blob_id[:2] / blob_id
    copy = tmp_path / "backups" / "blobs" / blob_id[:2] / blob_id
    assert copy.read_bytes() == primary.read_bytes()  # the same encrypted file
    assert BlobStore(tmp_path / "backups" / "blobs", key).get(blob_id) == b"%PDF signed"
    assert not list((tmp_path / "backups").rglob(".*.tmp"))
    assert store.mirror_failures == 0


def test_a_failed_mirror_write_never_fails_the_store(tmp_path: Path) -> None:
    (tmp_path / "backups").write_text("the backup disk is not mounted here")
    store = BlobStore(tmp_path / "blobs", secrets.token_bytes(32), mirror=tmp_path / "backups")
    first, second = store.put(b"one"), store.put(b"two")
    assert (store.get(first), store.get(second)) == (b"one", b"two")
    assert store.mirror_failures == 2


def test_a_failed_store_write_leaves_no_mirror_copy(tmp_path: Path) -> None:
    """The mirror copy is written beside the store's (in parallel): when the store's write
    fails, the copy of a blob that was never stored is removed again."""
    (tmp_path / "blobs").write_text("not a folder: every store write fails")
    store = BlobStore(tmp_path / "blobs", secrets.token_bytes(32), mirror=tmp_path / "mirror")
    for _ in range(5):
        with pytest.raises(OSError):
            store.put(b"x" * 100_000)
    assert [p for p in (tmp_path / "mirror").rglob("*") if p.is_file()] == []


def test_parallel_puts_are_each_stored_and_mirrored(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    key = secrets.token_bytes(32)
    store = BlobStore(tmp_path / "blobs", key, mirror=tmp_path / "mirror")
    payloads = [secrets.token_bytes(1000 + i) for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(store.put, payloads))
    copy = BlobStore(tmp_path / "mirror", key)
    for blob_id, data in zip(ids, payloads, strict=True):
        assert store.get(blob_id) == copy.get(blob_id) == data


def test_the_mirror_cannot_be_the_store_itself(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mirror"):
        BlobStore(
            tmp_path / "blobs", secrets.token_bytes(32), mirror=tmp_path / "x" / ".." / "blobs"
        )


def _streamed(store: BlobStore, blob_id: str, chunk_size: int = 1 << 20) -> bytes:
    out = io.BytesIO(b"prefix:")
    out.seek(0, io.SEEK_END)
    written = store.read_into(blob_id, out, chunk_size=chunk_size)
    data = out.getvalue()
    assert data.startswith(b"prefix:") and written == len(data) - len(b"prefix:")
    return data[len(b"prefix:") :]


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4095, 4096, 4097, 3 * 4096 + 5])
def test_streamed_read_appends_the_same_bytes(blobs: BlobStore, size: int) -> None:
    data = secrets.token_bytes(size)
    blob_id = blobs.put(data)
    assert _streamed(blobs, blob_id, chunk_size=4096) == data == blobs.get(blob_id)


@pytest.mark.parametrize("offset", [0, 5, 20, 60, 70, 5000, -17, -1])
def test_streamed_read_detects_any_flipped_byte(blobs: BlobStore, offset: int) -> None:
    blob_id = blobs.put(b"x" * 8192)
    path = _file(blobs, blob_id)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(BlobError) as info:
        _streamed(blobs, blob_id, chunk_size=1000)
    assert info.value.code in {"blob.tampered", "blob.wrong_master_key"}


def test_streamed_read_detects_truncation_swapping_and_absence(blobs: BlobStore) -> None:
    a, b = blobs.put(b"contract A" * 100), blobs.put(b"contract B" * 100)
    _file(blobs, a).write_bytes(_file(blobs, b).read_bytes())
    with pytest.raises(BlobError, match="blob.tampered"):
        _streamed(blobs, a)
    for keep in (30, 80, 90):
        _file(blobs, b).write_bytes(_file(blobs, a).read_bytes()[:keep])
        with pytest.raises(BlobError, match="blob.tampered"):
            _streamed(blobs, b)
    with pytest.raises(BlobError, match="blob.missing"):
        _streamed(blobs, "0" * 32)


def test_a_new_folder_is_made_durable_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The database references a blob right after put() returns, so every directory entry on
    # its path that put() created must have been fsynced: the fan-out folder's entry in the
    # store root (and the root's own, for a store that did not exist yet), not only the file's.
    import core.blobs

    synced: list[Path] = []
    real = core.blobs.fsync_folder

    def recording(folder: Path) -> None:
        synced.append(Path(folder))
        real(folder)

    monkeypatch.setattr(core.blobs, "fsync_folder", recording)
    root = tmp_path / "new-store"
    store = BlobStore(root, secrets.token_bytes(32), mirror=tmp_path / "new-mirror")
    blob_id = store.put(b"%PDF-1.7 first")
    for base in (root, tmp_path / "new-mirror"):
        fan_out = base / blob_id[:2]
        assert fan_out in synced  # the file's own entry
        assert base in synced  # the fan-out folder's entry
        assert tmp_path in synced  # the store root's entry, made by this put
    synced.clear()
    second = next(i for i in (secrets.token_hex(16) for _ in range(10_000)) if i[:2] == blob_id[:2])
    monkeypatch.setattr(core.blobs.secrets, "token_hex", lambda _n: second)
    assert store.put(b"%PDF-1.7 second") == second
    # an existing folder gained no entry in its parent: only the file's folder is synced
    assert root not in synced and (root / blob_id[:2]) in synced
    assert store.get(second) == b"%PDF-1.7 second"


def test_streamed_read_allocates_nothing_per_chunk(blobs: BlobStore) -> None:
    # A 1 MB read used to allocate a 1 MB read buffer plus a new 1 MB object per decrypted
    # chunk; now its own allocations are two small buffers whatever the blob's size.
    data = secrets.token_bytes(1 << 20)
    blob_id = blobs.put(data)
    out = io.BytesIO(bytes(len(data)))
    out.write(b"")  # unshare the initial bytes now, outside the traced read
    tracemalloc.start()
    try:
        blobs.read_into(blob_id, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.getvalue() == data
    assert peak < 256 * 1024


def test_streamed_read_of_a_tampered_blob_fails_after_writing_every_byte(
    blobs: BlobStore,
) -> None:
    # The tag is checked after the last chunk: the error comes with ``out`` full of
    # unauthenticated bytes, which is why callers must drop it (read_into's contract).
    data = secrets.token_bytes(300_000)
    blob_id = blobs.put(data)
    path = _file(blobs, blob_id)
    raw = bytearray(path.read_bytes())
    raw[100_000] ^= 0x01
    path.write_bytes(bytes(raw))
    out = io.BytesIO()
    with pytest.raises(BlobError, match="blob.tampered"):
        blobs.read_into(blob_id, out)
    assert len(out.getvalue()) == len(data) and out.getvalue() != data


# A put encrypts a chunk at a time straight into the file: these sizes cross its chunks.
_CHUNKED_SIZES = [0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 2 * (1 << 20) + 12345]


@pytest.mark.parametrize("size", _CHUNKED_SIZES)
def test_a_chunked_put_is_the_one_layout_both_readers_take(tmp_path: Path, size: int) -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.keywrap import aes_key_unwrap

    key = secrets.token_bytes(32)
    store = BlobStore(tmp_path / "blobs", key, mirror=tmp_path / "mirror")
    data = secrets.token_bytes(size)
    blob_id = store.put(data)
    raw = _file(store, blob_id).read_bytes()
    # MAGIC | fingerprint | wrapped key | nonce | ciphertext | tag, as AESGCM.encrypt wrote it
    assert len(raw) == 4 + 8 + 40 + 12 + size + 16
    header, body = raw[:64], raw[64:]
    data_key = aes_key_unwrap(key, header[12:52])
    assert AESGCM(data_key).encrypt(header[52:], data, header + blob_id.encode()) == body
    assert store.get(blob_id) == data
    assert _streamed(store, blob_id, chunk_size=65536) == data
    assert (tmp_path / "mirror" / blob_id[:2] / blob_id).read_bytes() == raw
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.parametrize("offset", [64, 64 + (1 << 20) - 1, 64 + (1 << 20), -17, -1])
def test_a_flipped_byte_of_a_chunked_put_is_tampering(blobs: BlobStore, offset: int) -> None:
    blob_id = blobs.put(b"%PDF" + secrets.token_bytes(2 * (1 << 20) + 100))
    path = _file(blobs, blob_id)
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(BlobError, match="blob.tampered"):
        blobs.get(blob_id)
    with pytest.raises(BlobError, match="blob.tampered"):
        _streamed(blobs, blob_id)


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_store_write_failing_after_the_mirror_began_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The mirror copies the store's file once it is written: when the store's fsync or rename
    then fails, neither the store nor the mirror keeps a file (not even a temporary one)."""
    import errno
    import os

    import core.blobs

    store_root = tmp_path / "blobs"
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        if failing == "fsync" and os.readlink(f"/proc/self/fd/{fd}").startswith(str(store_root)):
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    def replace(src: object, dst: object) -> None:
        if failing == "replace" and str(dst).startswith(str(store_root)):
            raise OSError(errno.EIO, "I/O error")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(core.blobs.os, "fsync", fsync)
    monkeypatch.setattr(core.blobs.os, "replace", replace)
    store = BlobStore(store_root, secrets.token_bytes(32), mirror=tmp_path / "mirror")
    with pytest.raises(GatewayError, match="storage.io_error"):
        store.put(secrets.token_bytes(3 * (1 << 20)))
    with pytest.raises(GatewayError, match="storage.io_error"):
        store.put_many([b"%PDF one", b"%PDF two"])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert store.mirror_failures == 0


def test_a_copy_not_yet_durable_never_replaces_the_durable_one(tmp_path: Path) -> None:
    """A staged blob is written twice: without fsync right after its commit, and durably by
    the signing worker's flush (core.staged_blobs). Should the flush come first, the late
    write must leave the durable file (and its mirror copy) in place: the flush deletes the
    row, so a replaced file whose bytes never reached the disk would be lost in a crash."""
    store = BlobStore(tmp_path / "blobs", secrets.token_bytes(32), mirror=tmp_path / "mirror")
    assert store.mirror is not None
    roots = (store.root, store.mirror)

    def inodes(blob_id: str) -> list[int]:
        return [blob_path(root, blob_id).stat().st_ino for root in roots]

    first, content = store.seal(b"%PDF signature")
    store.write_sealed(first, content, durable=True)  # the flush came first
    durable = inodes(first)
    store.write_sealed(first, content, durable=False)  # the write after the commit, late
    assert inodes(first) == durable
    assert store.get(first) == b"%PDF signature"

    # in the usual order the flush's durable file replaces the quick one
    second, content = store.seal(b"%PDF another")
    store.write_sealed(second, content, durable=False)
    quick = inodes(second)
    store.write_sealed(second, content, durable=True)
    assert all(a != b for a, b in zip(inodes(second), quick, strict=True))
    assert store.get(second) == b"%PDF another"
    # no temporary file is left behind by either writer
    assert [p for root in roots for p in root.rglob(".*")] == []
