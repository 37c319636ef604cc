"""The signing pages (``/sign``) and the completion download (``/download``)."""
