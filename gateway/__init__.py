"""gateway: the app shell (settings, CLI; the HTTP API and pages come next)."""

__all__: list[str] = []
