"""Where a finished envelope leaves: the transactional outbox (:mod:`~core.pushback.outbox`)
and what each sink is given (:mod:`~core.pushback.deliveries`).
"""

__all__: list[str] = []
