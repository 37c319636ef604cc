"""Verification in bounded time and memory: :func:`verify_pdf` in a child process.

pyHanko's difference analysis can take minutes and gigabytes on some large forms; a verifier that
hangs is worse than one that says it could not finish. The child is started once (``spawn``: no
threads or event loops inherited from the caller) and reused for the next document; a document
that overruns its time budget, or its memory budget (``RLIMIT_AS`` in the child), gets a report
that says so, and the child is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import resource
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from multiprocessing.connection import Connection
from typing import Any

from asn1crypto import x509

from ._verify import VerificationReport, verify_pdf

__all__ = ["BoundedVerifier", "VerifyBudget"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyBudget:
    """What one document's verification may use: wall-clock seconds and address space."""

    seconds: float = 300.0
    memory_bytes: int = 2 * 1024 * 1024 * 1024


def _serve(conn: Connection, roots_der: list[bytes], memory_bytes: int) -> None:
    """The child: verify each document it is sent, within the address-space limit."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    roots = [x509.Certificate.load(der) for der in roots_der]
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        if request is None:
            return
        data, moment = request
        try:
            report = verify_pdf(data, trust_roots=roots, moment=moment)
        except MemoryError:
            report = _unfinished("its memory budget was exhausted")
        conn.send(_plain(report))


def _plain(report: VerificationReport) -> VerificationReport:
    """``report`` with plain ``str`` values only: pyHanko's string subclasses carry references
    into the document that cannot cross the process boundary."""

    def text(value: str | None) -> str | None:
        return None if value is None else str.__str__(value)

    return replace(
        report,
        error=text(report.error),
        problems=tuple(str.__str__(p) for p in report.problems),
        signatures=tuple(
            replace(
                sig,
                field_name=str.__str__(sig.field_name),
                signer=text(sig.signer),
                reason=text(sig.reason),
                modification_level=text(sig.modification_level),
                problems=tuple(str.__str__(p) for p in sig.problems),
            )
            for sig in report.signatures
        ),
    )


def _unfinished(why: str) -> VerificationReport:
    return VerificationReport(error=f"could not finish: {why}", unfinished=True)


class BoundedVerifier:
    """Verifies documents one at a time in a child process, each within ``budget``."""

    def __init__(
        self, *, trust_roots: Sequence[x509.Certificate], budget: VerifyBudget | None = None
    ) -> None:
        self.budget = budget or VerifyBudget()
        self._roots = [cert.dump() for cert in trust_roots]
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: Connection | None = None

    def __enter__(self) -> BoundedVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> Connection:
        if self._conn is None:
            parent, child = self._context.Pipe()
            self._process = self._context.Process(
                target=_serve,
                args=(child, self._roots, self.budget.memory_bytes),
                daemon=True,
                name="keiyaku-verify",
            )
            self._process.start()
            child.close()
            self._conn = parent
        return self._conn

    def _stop(self, *, kill: bool) -> None:
        if self._process is not None:
            if kill:
                self._process.kill()
            elif self._conn is not None:
                try:
                    self._conn.send(None)
                except OSError:
                    pass
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        if self._conn is not None:
            self._conn.close()
        self._process = None
        self._conn = None

    def close(self) -> None:
        """Stop the child process."""
        self._stop(kill=False)

    def verify(self, data: bytes, *, moment: datetime | None = None) -> VerificationReport:
        """``verify_pdf(data)`` within the budget; an ``unfinished`` report when it overran."""
        conn = self._start()
        try:
            conn.send((data, moment))
            if conn.poll(self.budget.seconds):
                report: VerificationReport = conn.recv()
                return report
        except (EOFError, OSError):
            # the child died: the kernel refused it memory beyond the budget, or killed it
            log.warning("verification child died; starting a new one")
            self._stop(kill=True)
            return _unfinished(
                f"verification stopped (memory budget {self.budget.memory_bytes // 2**20} MB)"
            )
        log.warning("verification overran %.0f s; stopping it", self.budget.seconds)
        self._stop(kill=True)
        return _unfinished(f"verification did not finish within {self.budget.seconds:g} s")
