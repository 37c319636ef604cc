"""The envelope API (``/api/v1``)."""

__all__: list[str] = []
