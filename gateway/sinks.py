"""Sinks from settings: the push-back observer, and each configured sink with what it is sent."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from connectors.outbound import check_spec
from core.pushback.deliveries import PushbackObserver, Subscription
from core.pushback.outbox import RetryPolicy
from gateway.background import LeasingThread
from gateway.settings import FolderSinkSettings, Settings
from schedules.pushback import Target

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)


def pushback_observer(settings: Settings) -> PushbackObserver:
    """The observer that enqueues one delivery per sink subscribed to an envelope event."""
    return PushbackObserver(
        Subscription(
            target=name,
            events=frozenset(sink.events),
            renewals=sink.takes_renewals,
            guarantee_updates=sink.takes_guarantee_updates,
        )
        for name, sink in settings.sinks.items()
    )


def retry_policy(settings: Settings) -> RetryPolicy:
    """The outbox's backoff and bound from settings."""
    outbox = settings.outbox
    return RetryPolicy(
        max_attempts=outbox.max_attempts,
        base_delay=outbox.base_delay_seconds,
        max_delay=outbox.max_delay_seconds,
    )


def lease(settings: Settings) -> dt.timedelta:
    """How long a dispatcher holds a claimed delivery."""
    return dt.timedelta(seconds=settings.outbox.lease_seconds)


def build_targets(settings: Settings, names: list[str] | None = None) -> dict[str, Target]:
    """Every configured sink (or those in ``names``), ready to push. Close with
    :func:`close_targets`."""
    targets: dict[str, Target] = {}
    for name, sink in settings.sinks.items():
        if names is not None and name not in names:
            continue
        content = sink.content.spec(settings.path)
        check_spec(content)  # loads the XSD now, so a broken one stops the start, not a delivery
        targets[name] = Target(sink.open(name=name, resolve=settings.path), content)
    return targets


def close_targets(targets: Mapping[str, Target]) -> None:
    """Close every sink's connections."""
    for target in targets.values():
        target.sink.close()


def push_demo(gateway: Gateway, envelope_id: str) -> list[tuple[str, Path]]:
    """For `keiyaku demo`: push the demo envelope (with the guarantee its contractor registered
    on the signing pages) to every folder sink. Returns (sink name, folder) of each."""
    from schedules.pushback import run_until_idle

    del envelope_id  # every due delivery is pushed; the demo's are among them
    settings = gateway.settings
    folders = [
        name for name, sink in settings.sinks.items() if isinstance(sink, FolderSinkSettings)
    ]
    targets = build_targets(settings, folders)
    try:
        run_until_idle(
            sessions=gateway.sessions,
            runtime=gateway.runtime,
            targets=targets,
            policy=retry_policy(settings),
            lease=lease(settings),
            department=settings.buyer.department,
        )
    finally:
        close_targets(targets)
    return [
        (name, settings.path(sink.path))
        for name, sink in settings.sinks.items()
        if isinstance(sink, FolderSinkSettings)
    ]


class PushbackWorker(LeasingThread):
    """Pushes due deliveries to the configured sinks from a background thread of
    `keiyaku serve`, as `keiyaku outbox dispatch --loop` does from its own process. Every node
    may run one: each delivery is claimed by one node at a time (a lease), and a node killed
    mid-push leaves its leases to expire and the others to push."""

    name = "pushback"

    def __init__(self, gateway: Gateway) -> None:
        from schedules.pushback import default_worker

        super().__init__(gateway.sessions, f"{default_worker()}:pushback")
        self.gateway = gateway
        self._wake = threading.Event()

    def wake(self) -> None:
        """Look for due deliveries now (an envelope event was just committed on this node),
        not at the next ``outbox.poll_seconds``."""
        self._wake.set()

    def _interrupt(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        from schedules.pushback import run_until_idle

        settings = self.gateway.settings
        targets = build_targets(settings)
        try:
            while not self._stop.is_set():
                try:
                    run_until_idle(
                        sessions=self.sessions,
                        runtime=self.gateway.runtime,
                        targets=targets,
                        worker=self.worker,
                        policy=retry_policy(settings),
                        limit=settings.outbox.batch_size,
                        lease=lease(settings),
                        department=settings.buyer.department,
                        poll_seconds=settings.outbox.poll_seconds,
                        stop=self._stop,
                        forever=True,
                        wake=self._wake,
                    )
                except Exception:  # the worker must outlive a database or sink hiccup
                    log.exception("push-back dispatch failed; trying again later")
                    self._stop.wait(settings.outbox.poll_seconds)
        finally:
            close_targets(targets)
