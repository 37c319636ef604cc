"""Job: deliver due outbox rows to their sinks (push-back).

Thin by design: :func:`core.pushback.outbox.dispatch` claims due deliveries as expiring leases and records
each outcome; for each delivery this job assembles the envelope's content
(:func:`core.pushback.deliveries.assemble_content`), renders it for the sink
(:func:`connectors.outbound.render_outbound`) and pushes it with the delivery's idempotency key.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace

from sqlalchemy.orm import Session, sessionmaker

from connectors.base import Sink
from connectors.outbound import ContentSpec, render_outbound
from core.errors import Disposition, SinkError
from core.model import Delivery
from core.outbound_types import Outbound
from core.pushback.deliveries import ContentRows, assemble_content, preload_content
from core.pushback.outbox import DispatchResult, Handler, RetryPolicy, dispatch
from core.runtime import Runtime

__all__ = [
    "JOB_ID",
    "Target",
    "default_worker",
    "push_delivery",
    "render_delivery",
    "run",
    "run_until_idle",
]

JOB_ID = "outbox.dispatch"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """One configured sink: the transport and what it is sent."""

    sink: Sink
    content: ContentSpec


def default_worker() -> str:
    """A worker name unique to this process: host, pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _envelope_id(delivery: Delivery) -> str | None:
    return delivery.payload.get("envelope_id") or delivery.envelope_id


def render_delivery(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    target: Target,
    delivery: Delivery,
    department: str | None = None,
    rows: ContentRows | None = None,
) -> Outbound:
    """Read the delivery's envelope (from ``rows`` when preloaded) and render what its sink is
    sent."""
    envelope_id = _envelope_id(delivery)
    event = delivery.payload.get("event", "completed")
    if not envelope_id:
        raise SinkError(
            "sink.bad_delivery",
            f"delivery {delivery.id} names no envelope",
            "配信対象の封筒が指定されていません。",
            disposition=Disposition.FATAL,
        )
    spec = target.content
    document_ids: list[str] | None = None
    version: int | None = None
    if event == "renewed":
        # Only the renewed document, under a name of its own; the certificate and the record
        # file were delivered at completion (structured sinks still get the record's fields).
        document_ids = [str(delivery.payload.get("document_id"))]
        version = int(delivery.payload.get("version", 0))
        record = spec.record
        spec = replace(
            spec,
            documents=True,
            document_name=spec.renewed_document_name,
            certificate=False,
            record=replace(record, attach=False) if record is not None else None,
        )
    elif event == "guarantee_updated":
        # The record again, with the references as they are now, under a name of its own.
        version = int(delivery.payload.get("version", 0))
        record = spec.record
        spec = replace(
            spec,
            documents=False,
            certificate=False,
            record=replace(record, name=spec.update_record_name) if record is not None else None,
        )
    with sessions() as session:
        content = assemble_content(
            session=session,
            runtime=runtime,
            envelope_id=envelope_id,
            event=event,
            documents=spec.documents,
            certificate=spec.certificate,
            guarantee_keys=spec.guarantee_keys,
            department=department,
            document_ids=document_ids,
            version=version,
            rows=rows,
        )
    # Claims count attempts, so attempt 1 without an error is the first push of this key
    # anywhere; a retried dead delivery keeps its last error and is looked for again.
    first = delivery.attempts == 1 and delivery.last_error is None
    return render_outbound(content, spec, delivery.idempotency_key, first_attempt=first)


def push_delivery(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    target: Target,
    delivery: Delivery,
    department: str | None = None,
    rows: ContentRows | None = None,
) -> None:
    """Render and push one delivery (raises :class:`SinkError` on failure)."""
    outbound = render_delivery(
        sessions=sessions,
        runtime=runtime,
        target=target,
        delivery=delivery,
        department=department,
        rows=rows,
    )
    target.sink.push(outbound)


def run(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    targets: Mapping[str, Target],
    worker: str | None = None,
    policy: RetryPolicy | None = None,
    limit: int = 20,
    lease: dt.timedelta = dt.timedelta(minutes=5),
    department: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> DispatchResult:
    """One pass: claim up to ``limit`` due deliveries for these sinks and push each (when
    ``stop`` turns true, the rest of the batch is given back)."""
    # One thread on purpose: a second one (reading the next delivery while this one is pushed)
    # competes for the GIL with paramiko's transport thread and delays every SFTP answer.
    with ExitStack() as stack:
        # The batch's envelopes, guarantees, departments and consents are read in a few queries
        # when it is claimed (in a session open for the pass), not four queries per delivery.
        preloaded: list[ContentRows] = []

        def prepare(batch: Sequence[Delivery]) -> None:
            ids = [i for i in map(_envelope_id, batch) if i]
            if not ids:
                return
            session = stack.enter_context(sessions())
            try:
                preloaded.append(preload_content(session=session, envelope_ids=ids))
            except Exception:  # each delivery then reads its own rows, and fails on its own
                log.exception("could not read the batch's rows at once")
                session.rollback()

        handlers: dict[str, Handler] = {}
        for name, target in targets.items():

            def handler(delivery: Delivery, target: Target = target) -> None:
                push_delivery(
                    sessions=sessions,
                    runtime=runtime,
                    target=target,
                    delivery=delivery,
                    department=department,
                    rows=preloaded[0] if preloaded else None,
                )

            handlers[name] = handler
        return dispatch(
            sessions=sessions,
            handlers=handlers,
            worker=worker or default_worker(),
            policy=policy,
            limit=limit,
            lease=lease,
            stop=stop,
            prepare=prepare,
        )


def run_until_idle(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    targets: Mapping[str, Target],
    worker: str | None = None,
    policy: RetryPolicy | None = None,
    limit: int = 20,
    lease: dt.timedelta = dt.timedelta(minutes=5),
    department: str | None = None,
    poll_seconds: float = 10.0,
    stop: threading.Event | None = None,
    forever: bool = False,
    wake: threading.Event | None = None,
) -> DispatchResult:
    """Pass after pass: until nothing is due (or, with ``forever``, until ``stop`` is set,
    sleeping ``poll_seconds`` whenever a pass found nothing, or until ``wake`` is set: work was
    just queued on this node, e.g. an envelope sealed; whoever sets ``stop`` sets ``wake`` too).
    Returns the totals."""
    stop = stop or threading.Event()
    totals = DispatchResult()
    worker = worker or default_worker()
    while not stop.is_set():
        result = run(
            sessions=sessions,
            runtime=runtime,
            targets=targets,
            worker=worker,
            policy=policy,
            limit=limit,
            lease=lease,
            department=department,
            stop=stop.is_set,
        )
        for name in ("delivered", "retrying", "dead", "lost", "released"):
            getattr(totals, name).extend(getattr(result, name))
        busy = bool(result.delivered or result.retrying or result.dead or result.lost)
        if not busy:
            if not forever:
                break
            if wake is None:
                stop.wait(poll_seconds)
            else:
                wake.wait(poll_seconds)
                wake.clear()
    return totals
