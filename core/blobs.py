"""Documents at rest: a local folder, each blob encrypted with its own AES-256-GCM key.

A blob file is ``MAGIC | key fingerprint (8) | wrapped data key (40) | nonce (12) | ciphertext+tag``.
The data key is wrapped with the master key (RFC 3394 AES key wrap); the blob id and the header are
authenticated as associated data, so a changed byte, a truncated file or a file copied over another
blob's name all fail with ``blob.tampered``. The fingerprint only tells a wrong master key apart
from tampering; it is not a secret.

With a mirror folder (the backup folder's ``blobs/``, ``backup.mirror_documents``), each blob is
also written there as soon as it is stored, so a lost disk loses no signed document taken since
the last daily backup (札幌市仕様 8(4)ア: 電子契約データは随時取得). A failed mirror write is
logged and counted, never fails the store: the daily backup copies whatever the mirror lacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from core.errors import BlobError, ConfigError, storage_error

__all__ = ["BlobStore", "blob_path", "fsync_folder"]

MAGIC = b"KGB1"
_FINGERPRINT_LEN = 8
_WRAPPED_LEN = 40
_NONCE_LEN = 12
_TAG_LEN = 16
_UPDATE_SLACK = 15  # update_into() wants room for one AES block more than it is given
_CHUNK = 1 << 20  # what a put encrypts, and a mirror copies, at a time
_HEADER_LEN = len(MAGIC) + _FINGERPRINT_LEN + _WRAPPED_LEN + _NONCE_LEN
_BLOB_ID = re.compile(r"^[0-9a-f]{32}$")

log = logging.getLogger(__name__)


def _fingerprint(master_key: bytes) -> bytes:
    return hashlib.sha256(b"keiyaku-blob-master\x00" + master_key).digest()[:_FINGERPRINT_LEN]


def fsync_folder(folder: Path) -> None:
    """Make a folder's entries (a rename, an unlink) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(
    path: Path, write: Callable[[BinaryIO], None], *, durable: bool = True, tmp: Path | None = None
) -> None:
    """Write ``path`` whole or not at all: ``write`` fills a temporary name, then fsync, rename,
    fsync the folder (the database will reference the name right after, so a crash must not be
    able to lose it). Without ``durable``: no fsync (the bytes are durable elsewhere, see
    :meth:`BlobStore.write_sealed`), and a file already at ``path`` is kept: it may be the
    durable copy a flush wrote meanwhile, which a copy not yet on disk must never replace."""
    tmp = tmp or path.with_name(f".{path.name}.tmp")
    new_entries: list[Path] = []
    try:
        try:
            fh = open(tmp, "w+b")  # readable too: the mirror copies the store's file
        except FileNotFoundError:  # the first blob of its 256 folders: one mkdir, not one a put
            new_entries = _make_folders(path.parent)
            fh = open(tmp, "w+b")
        with fh:
            write(fh)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        if durable:
            os.replace(tmp, path)
        else:
            _place_unless_there(tmp, path)
    except BaseException:
        # A partial temporary file (disk full, killed) must not keep the disk full.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if not durable:
        return
    fsync_folder(path.parent)
    # A folder made for this blob is itself an entry of its parent: unless that entry is
    # durable too, a crash can lose the folder with the blob the database now references.
    for parent in new_entries:
        fsync_folder(parent)


def _place_unless_there(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path`` unless ``path`` exists, atomically (a hard link fails on an
    existing name, where a rename would replace it); ``tmp`` is gone either way."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: the small window is accepted there
        if not path.exists():
            os.replace(tmp, path)
            return
    tmp.unlink()


def _tmp_name(path: Path, token: str) -> Path:
    """A temporary name beside ``path`` for one writer (the sweep removes what a killed one
    left: every dot file)."""
    return path.with_name(f".{path.name}.{token}.tmp")


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the folders that gained an entry,
    innermost first (each one to fsync)."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    folder.mkdir(parents=True, exist_ok=True)
    return [made.parent for made in missing]


class _MirrorPool:
    """Runs mirror writes beside the store's own write (or inline without a mirror)."""

    def __init__(self, *, enabled: bool) -> None:
        self.pid = os.getpid()
        self._executor = (
            # threads that mostly wait in fsync: enough for every request's blobs at once
            ThreadPoolExecutor(max_workers=16, thread_name_prefix="blob-mirror")
            if enabled
            else None
        )

    def submit(self, fn: Callable[..., None], *args: object) -> Future[None]:
        if self._executor is None:
            done: Future[None] = Future()
            fn(*args)
            done.set_result(None)
            return done
        return self._executor.submit(fn, *args)


def blob_path(root: Path, blob_id: str) -> Path:
    """Where the blob ``blob_id`` lives under ``root`` (a store, or a backup's copy of one)."""
    if not _BLOB_ID.match(blob_id):
        raise BlobError(
            "blob.bad_id", f"not a blob id: {blob_id!r}", "文書IDの形式が正しくありません。"
        )
    return root / blob_id[:2] / blob_id


class BlobStore:
    """Encrypted blobs in one folder (shared by every node in a multi-node setup)."""

    def __init__(self, root: Path, master_key: bytes, *, mirror: Path | None = None) -> None:
        if len(master_key) != 32:
            raise ConfigError(
                "config.master_key_length",
                "the blob master key must be 32 bytes (64 hex characters)",
                "文書暗号化のマスター鍵は32バイト(16進64文字)である必要があります。",
            )
        self.root = Path(root)
        if mirror is not None and Path(mirror).resolve() == self.root.resolve():
            raise ConfigError(
                "config.blob_mirror_is_store",
                f"the document mirror {mirror} is the blob store itself",
                "文書の複製先が文書保管領域そのものです。バックアップ先を別の場所にしてください。",
            )
        self.mirror = Path(mirror) if mirror is not None else None
        self._master_key = master_key
        self._fingerprint = _fingerprint(master_key)
        self._lock = threading.Lock()
        self._mirror_failures = 0
        self._pool: _MirrorPool | None = None
        self._batch: ThreadPoolExecutor | None = None
        self._batch_pid = 0
        # Where a blob committed to the database but perhaps not yet durable in this folder is
        # read from (its file lost in a crash, or never written: core.staged_blobs); set by the
        # gateway once its database is open.
        self.fallback: Callable[[str], bytes | None] | None = None

    @property
    def mirror_failures(self) -> int:
        """Mirror writes that failed in this process (each one left to the daily backup)."""
        return self._mirror_failures

    def _path(self, blob_id: str) -> Path:
        return blob_path(self.root, blob_id)

    def _new_header(self, blob_id: str) -> tuple[bytes, bytes, bytes]:
        """A fresh data key and nonce for ``blob_id``: (header, data key, nonce)."""
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(_NONCE_LEN)
        header = MAGIC + self._fingerprint + aes_key_wrap(self._master_key, data_key) + nonce
        return header, data_key, nonce

    def seal(self, data: bytes) -> tuple[str, bytes]:
        """Encrypt ``data`` under a new random id without storing it: (id, the blob file's
        bytes), for :meth:`write_sealed` once something durable holds them."""
        blob_id = secrets.token_hex(16)
        header, data_key, nonce = self._new_header(blob_id)
        sealed = AESGCM(data_key).encrypt(nonce, data, header + blob_id.encode())
        return blob_id, header + sealed

    def write_sealed(self, blob_id: str, content: bytes, *, durable: bool) -> None:
        """Write a blob :meth:`seal` made into the store and the mirror. Not ``durable``: no
        fsync, for a blob the database already holds durably (readers fall back to it)."""

        def write(fh: BinaryIO) -> None:
            fh.write(content)

        # A temporary name of its own for each writer: the write after the commit and a flush
        # of the same blob (another thread or node) may overlap.
        token = secrets.token_hex(4)
        path = self._path(blob_id)
        try:
            _write_durably(path, write, durable=durable, tmp=_tmp_name(path, token))
        except OSError as exc:
            fault = storage_error(exc, str(self.root))
            if fault is not None:
                raise fault from exc
            raise
        self._mirror_put(blob_id, write, durable=durable, token=token)

    def put(self, data: bytes) -> str:
        """Encrypt and store ``data`` under a new random id, durably; return the id."""
        mirrored: list[Future[None]] = []
        write: Callable[[BinaryIO], None]
        if len(data) <= _CHUNK:
            # Small (a seal, a certificate): encrypted whole, and the mirror written from the
            # same bytes in a second thread from the start, so its write and fsync run beside
            # the store's (the two fsyncs overlap: one journal commit when both are on one
            # disk). put() still returns only once both are durable.
            blob_id, content = self.seal(data)

            def write(fh: BinaryIO) -> None:
                fh.write(content)

            if self.mirror is not None:
                mirrored.append(self._mirror_pool().submit(self._mirror_put, blob_id, write))
        else:
            # Large: encrypted a chunk at a time straight into the file (the layout
            # AESGCM.encrypt gives: ciphertext, then the tag), no whole ciphertext beside the
            # document in memory; the mirror copies this very file once it is written, in a
            # second thread while this one fsyncs the store's.
            blob_id = secrets.token_hex(16)
            header, data_key, nonce = self._new_header(blob_id)
            encryptor = Cipher(algorithms.AES(data_key), modes.GCM(nonce)).encryptor()
            encryptor.authenticate_additional_data(header + blob_id.encode())

            def write(fh: BinaryIO) -> None:
                fh.write(header)
                view = memoryview(data)
                for start in range(0, len(view), _CHUNK):
                    fh.write(encryptor.update(view[start : start + _CHUNK]))
                fh.write(encryptor.finalize())
                fh.write(encryptor.tag)
                fh.flush()
                if self.mirror is not None:
                    mirrored.append(self._mirror_from(blob_id, fh))

        try:
            _write_durably(self._path(blob_id), write)
        except OSError as exc:
            self._unmirror(blob_id, mirrored)  # no copy of a blob the store never held
            fault = storage_error(exc, str(self.root))
            if fault is not None:
                raise fault from exc
            raise
        except BaseException:
            self._unmirror(blob_id, mirrored)
            raise
        for future in mirrored:
            future.result()
        return blob_id

    def put_many(self, items: Sequence[bytes]) -> list[str]:
        """:meth:`put` each of ``items`` at once (their fsyncs overlap instead of adding up);
        returns their ids in order once every one is durable. When one fails, none is kept."""
        if len(items) < 2:
            return [self.put(data) for data in items]
        futures = [self._batch_pool().submit(self.put, data) for data in items]
        wait(futures)
        failed = [f.exception() for f in futures if f.exception() is not None]
        if failed:
            for future in futures:
                if future.exception() is None:
                    self.discard(future.result())
            raise failed[0]  # type: ignore[misc]
        return [future.result() for future in futures]

    def _batch_pool(self) -> ThreadPoolExecutor:
        # One per process, like the mirror's; put() itself submits only to the mirror's pool,
        # so a batch never waits on a pool its own threads fill.
        pool = self._batch
        if pool is None or self._batch_pid != os.getpid():
            with self._lock:
                if self._batch is None or self._batch_pid != os.getpid():
                    self._batch = ThreadPoolExecutor(max_workers=16, thread_name_prefix="blob-put")
                    self._batch_pid = os.getpid()
                pool = self._batch
        return pool

    def _mirror_pool(self) -> _MirrorPool:
        # One small pool per process (a forked worker must not share its parent's threads).
        pool = self._pool
        if pool is None or pool.pid != os.getpid():
            with self._lock:
                pool = self._pool
                if pool is None or pool.pid != os.getpid():
                    pool = self._pool = _MirrorPool(enabled=self.mirror is not None)
        return pool

    def _mirror_from(self, blob_id: str, fh: BinaryIO) -> Future[None]:
        """Start copying the store's just-written file ``fh`` to the mirror (read through its
        own descriptor, so the store may rename or remove the file meanwhile)."""
        fd = os.dup(fh.fileno())

        def copy(out: BinaryIO) -> None:
            offset = 0
            while chunk := os.pread(fd, _CHUNK, offset):
                out.write(chunk)
                offset += len(chunk)

        def copy_and_close() -> None:
            try:
                self._mirror_put(blob_id, copy)
            finally:
                os.close(fd)

        try:
            return self._mirror_pool().submit(copy_and_close)
        except BaseException:
            os.close(fd)
            raise

    def _mirror_put(
        self,
        blob_id: str,
        write: Callable[[BinaryIO], None],
        *,
        durable: bool = True,
        token: str | None = None,
    ) -> None:
        if self.mirror is None:
            return
        path = blob_path(self.mirror, blob_id)
        try:
            tmp = _tmp_name(path, token) if token is not None else None
            _write_durably(path, write, durable=durable, tmp=tmp)
        except OSError as exc:  # the backup disk is away: the daily backup copies it
            with self._lock:
                self._mirror_failures += 1
            log.warning("document %s not mirrored to %s: %s", blob_id, self.mirror, exc)

    def _unmirror(self, blob_id: str, mirrored: Sequence[Future[None]]) -> None:
        """After a failed store write: wait for the mirror copy, if one was started, and
        remove it."""
        for future in mirrored:
            future.result()
        self._drop_mirror_copy(blob_id)

    def _drop_mirror_copy(self, blob_id: str) -> None:
        if self.mirror is not None:
            with contextlib.suppress(OSError):
                blob_path(self.mirror, blob_id).unlink(missing_ok=True)

    def get(self, blob_id: str) -> bytes:
        """Read, authenticate and decrypt one blob; ``blob.tampered`` if any byte changed."""
        path = self._path(blob_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            staged = self._staged(blob_id)
            if staged is not None:
                return self._decrypt(blob_id, staged)
            raise self._missing(blob_id) from exc
        try:
            return self._decrypt(blob_id, raw)
        except BlobError as exc:
            staged = self._staged(blob_id) if exc.code == "blob.tampered" else None
            if staged is None:
                raise
            return self._decrypt(blob_id, staged)

    def _staged(self, blob_id: str) -> bytes | None:
        """The blob file's bytes as the database holds them until they are durable here
        (a write after the commit lost in a crash, or not yet done); None when it holds none."""
        if self.fallback is None:
            return None
        content = self.fallback(blob_id)
        if content is not None:
            log.warning("blob %s read from its staged copy in the database", blob_id)
        return content

    def _missing(self, blob_id: str) -> BlobError:
        return BlobError(
            "blob.missing",
            f"blob {blob_id} is missing from {self.root}",
            "保存された文書が見つかりません。",
        )

    def _decrypt(self, blob_id: str, raw: bytes) -> bytes:
        # A memoryview slice: no second copy of a large ciphertext.
        header, ciphertext = raw[:_HEADER_LEN], memoryview(raw)[_HEADER_LEN:]
        if len(header) < _HEADER_LEN or not header.startswith(MAGIC):
            raise self._tampered(blob_id)
        fp_end = len(MAGIC) + _FINGERPRINT_LEN
        if header[len(MAGIC) : fp_end] != self._fingerprint:
            raise BlobError(
                "blob.wrong_master_key",
                f"blob {blob_id} was encrypted under a different master key",
                "文書が別のマスター鍵で暗号化されています。",
            )
        wrapped = header[fp_end : fp_end + _WRAPPED_LEN]
        nonce = header[fp_end + _WRAPPED_LEN :]
        try:
            data_key = aes_key_unwrap(self._master_key, wrapped)
            return AESGCM(data_key).decrypt(nonce, ciphertext, header + blob_id.encode())
        except (InvalidTag, InvalidUnwrap) as exc:
            raise self._tampered(blob_id) from exc

    def read_into(self, blob_id: str, out: BinaryIO, *, chunk_size: int = 1 << 16) -> int:
        """Decrypt one blob into ``out`` at its position a chunk at a time (no whole-file copy of
        the ciphertext, no second copy of the plaintext); returns how many bytes were written.

        ``blob.tampered`` if any byte changed: the tag is checked after the last chunk, so on
        that error ``out`` holds unauthenticated bytes and the caller must drop it.
        """
        start = out.tell()
        try:
            return self._read_into(blob_id, out, chunk_size)
        except BlobError as exc:
            staged = (
                self._staged(blob_id) if exc.code in ("blob.missing", "blob.tampered") else None
            )
            if staged is None:
                raise
            # what the damaged file left in ``out`` is overwritten (and the caller truncates)
            data = self._decrypt(blob_id, staged)
            out.seek(start)
            out.write(data)
            return len(data)

    def _read_into(self, blob_id: str, out: BinaryIO, chunk_size: int) -> int:
        path = self._path(blob_id)
        try:
            fh = open(path, "rb")  # closed by the with below, after the last chunk
        except FileNotFoundError as exc:
            raise self._missing(blob_id) from exc
        with fh:
            header = fh.read(_HEADER_LEN)
            size = os.fstat(fh.fileno()).st_size - _HEADER_LEN - _TAG_LEN
            if len(header) < _HEADER_LEN or not header.startswith(MAGIC) or size < 0:
                raise self._tampered(blob_id)
            data_key, nonce = self._unwrap(blob_id, header)
            fh.seek(_HEADER_LEN + size)
            tag = fh.read(_TAG_LEN)
            fh.seek(_HEADER_LEN)
            decryptor = Cipher(algorithms.AES(data_key), modes.GCM(nonce, tag)).decryptor()
            decryptor.authenticate_additional_data(header + blob_id.encode())
            # Two small buffers reused for every chunk: update() would allocate a new object
            # per chunk, and with 1 MB chunks a 1 MB document's read held three copies of it.
            ciphertext = memoryview(bytearray(min(chunk_size, size)))
            plaintext = memoryview(bytearray(len(ciphertext) + _UPDATE_SLACK))
            left = size
            while left:
                got = fh.readinto(ciphertext[: min(len(ciphertext), left)])
                if not got:
                    raise self._tampered(blob_id)
                done = decryptor.update_into(ciphertext[:got], plaintext)
                out.write(plaintext[:done])
                left -= got
        try:
            out.write(decryptor.finalize())
        except InvalidTag as exc:
            raise self._tampered(blob_id) from exc
        return size

    def _unwrap(self, blob_id: str, header: bytes) -> tuple[bytes, bytes]:
        fp_end = len(MAGIC) + _FINGERPRINT_LEN
        if header[len(MAGIC) : fp_end] != self._fingerprint:
            raise BlobError(
                "blob.wrong_master_key",
                f"blob {blob_id} was encrypted under a different master key",
                "文書が別のマスター鍵で暗号化されています。",
            )
        try:
            data_key = aes_key_unwrap(self._master_key, header[fp_end : fp_end + _WRAPPED_LEN])
        except InvalidUnwrap as exc:
            raise self._tampered(blob_id) from exc
        return data_key, header[fp_end + _WRAPPED_LEN :]

    def derive_key(self, purpose: str) -> bytes:
        """A 32-byte key for one other purpose (e.g. secrets kept in database rows), derived
        from the master key with HKDF-SHA256, so one backed-up master key covers everything."""
        return HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"keiyaku-gateway/" + purpose.encode(),
        ).derive(self._master_key)

    def exists(self, blob_id: str) -> bool:
        """True when a blob with this id is stored."""
        return self._path(blob_id).exists()

    def delete(self, blob_id: str) -> bool:
        """Remove one blob for good, durably; False when it was already gone (so deleting
        twice, e.g. a retention run repeated after a crash, is harmless)."""
        path = self._path(blob_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # Like put: the removal is only durable once the folder entry is, or a crash could
        # bring back a document whose deletion the database already records.
        fsync_folder(path.parent)
        return True

    def discard(self, blob_id: str) -> None:
        """Remove a blob that no row ever came to reference (a refused or failed create), and
        its copy in the mirror folder: nothing of a refused request is kept anywhere."""
        self.delete(blob_id)
        if self.mirror is not None:
            try:
                blob_path(self.mirror, blob_id).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("mirror copy of %s not removed: %s", blob_id, exc)

    @staticmethod
    def _tampered(blob_id: str) -> BlobError:
        return BlobError(
            "blob.tampered",
            f"blob {blob_id} failed its integrity check (modified or truncated)",
            "保存された文書が改ざんされているか、破損しています。",
        )
