"""The buyer's people and systems: staff accounts (:mod:`~core.staff.accounts`), sessions,
API clients, who may see what (:mod:`~core.staff.access`) and lockout counters.
"""

__all__: list[str] = []
