"""The signing pages (``/sign``) and the completion download (``/download``)."""

__all__: list[str] = []
