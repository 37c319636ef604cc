"""The envelope API (``/api/v1``)."""
