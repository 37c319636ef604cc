"""merge the staff/access/search (0007) and operations (0008) branches

Revision ID: 0009
Revises: 0007, 0008
Create Date: 2026-11-22
"""

from __future__ import annotations

revision = "0009"
down_revision = ("0007", "0008")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
