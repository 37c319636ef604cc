"""The nightly pull: sync every configured source, in the configured order.

A failing source is recorded (its run is ``failed``) and the others still run; the job fails
at the end when any source did, so its job run shows it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.orm import Session, sessionmaker

from core.drafts import SigningAuthority
from core.errors import GatewayError, SourceError
from core.intake.policy import IntakePolicy
from core.runtime import Runtime
from schedules.intake import IntakeResult, SourceSpec, take_in_source

__all__ = ["JOB_ID", "run"]

JOB_ID = "nightly_pull"
log = logging.getLogger(__name__)


def run(
    *,
    sessions: sessionmaker[Session],
    runtime: Runtime,
    policy: IntakePolicy,
    sources: Sequence[SourceSpec],
    authorities: Sequence[SigningAuthority] = (),
    batch_size: int = 500,
) -> list[IntakeResult]:
    """Sync each source (usage requests and registries first, so awards find them)."""
    order = {"contractors": 0, "usage_requests": 1, "awards": 2}
    results: list[IntakeResult] = []
    failed: list[str] = []
    for spec in sorted(sources, key=lambda s: order.get(s.kind, 3)):
        try:
            results.append(
                take_in_source(
                    sessions=sessions,
                    runtime=runtime,
                    policy=policy,
                    spec=spec,
                    authorities=authorities,
                    trigger="schedule",
                    batch_size=batch_size,
                )
            )
        except (GatewayError, OSError) as exc:
            failed.append(spec.name)
            log.error("nightly pull: %s failed: %s", spec.name, exc)
    if failed:
        raise SourceError(
            "source.sync_failed",
            f"sources failed: {', '.join(failed)}",
            f"取込に失敗した取込元があります: {', '.join(failed)}",
        )
    return results
