"""Background threads of `keiyaku serve` that claim outbox rows as leases (mail, push-back, the
signing worker).

Stopping it lets the work in flight finish, then gives back what it claimed and did not do, so
another node takes it at once instead of after the lease expires. A thread still busy after 30 s
is left alone: its leases expire on their own rather than risk doing the work twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from core.pushback.outbox import release_leases
from core.runtime import Runtime
from core.signing.worker import process_until_idle

log = logging.getLogger(__name__)

STOP_WAIT_SECONDS = 30


class LeasingThread:
    """Subclasses implement :meth:`_loop`, which returns once :attr:`_stop` is set."""

    name = "leasing"

    def __init__(self, sessions: sessionmaker[Session], worker: str) -> None:
        self.sessions = sessions
        self.worker = worker  # the lease owner written on every row this thread claims
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        raise NotImplementedError

    def _interrupt(self) -> None:
        """Wake the loop if it is waiting (called once :attr:`_stop` is set)."""

    def start(self) -> None:
        """Start the background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop after the work in flight; give back what was claimed and not done."""
        self._stop.set()
        self._interrupt()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_SECONDS)
            if self._thread.is_alive():
                log.warning(
                    "%s did not stop within %d s; leases left to expire",
                    self.name,
                    STOP_WAIT_SECONDS,
                )
                return
            self._thread = None
        try:
            with self.sessions() as session:
                release_leases(session=session, worker=self.worker)
        except Exception:  # shutting down: the leases expire anyway
            log.exception("%s could not give back its leases at shutdown", self.name)


class PollingThread(LeasingThread):
    """A leasing thread that runs :meth:`_pass` (work until nothing is due) every ``interval``
    seconds, or at once after :meth:`wake`; an exception is logged and the loop goes on."""

    def __init__(self, sessions: sessionmaker[Session], worker: str, interval: float) -> None:
        super().__init__(sessions, worker)
        self.interval = interval
        self._wake = threading.Event()

    def _pass(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._pass()
            except Exception:  # the worker must outlive a database or disk hiccup
                log.exception("%s pass failed; trying again later", self.name)
            self._wake.wait(self.interval)
            self._wake.clear()

    def _interrupt(self) -> None:
        self._wake.set()

    def wake(self) -> None:
        """Look for due work now."""
        self._wake.set()


class SigningWorker(PollingThread):
    """Applies the queued signatures and seals (:mod:`core.signing.worker`) in a background
    thread: every ``interval`` seconds, or at once after :meth:`wake` (an approval was just
    committed on this node)."""

    name = "signing-worker"

    def __init__(
        self,
        sessions: sessionmaker[Session],
        runtime: Runtime,
        interval: float,
        lease: dt.timedelta,
    ) -> None:
        super().__init__(sessions, f"{socket.gethostname()}:{os.getpid()}:signing", interval)
        self.runtime = runtime
        self.lease = lease
        # Called after a pass applied something (committed): a seal queues the sinks'
        # deliveries, and the push-back dispatcher should not wait for its next poll.
        self.on_applied: Callable[[], None] | None = None

    def _pass(self) -> None:
        result = process_until_idle(
            sessions=self.sessions,
            runtime=self.runtime,
            worker=self.worker,
            lease=self.lease,
            stop=self._stop.is_set,
        )
        if result.delivered and self.on_applied is not None:
            self.on_applied()
