"""core: domain model, envelope state machine, signing, storage and blob store.

Imports nothing of ``connectors``, ``mapping``, ``schedules`` or the app shell.
"""

__all__: list[str] = []
