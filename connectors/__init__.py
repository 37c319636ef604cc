"""connectors: see DESIGN.md. Nothing public is built here yet."""

__all__: list[str] = []
