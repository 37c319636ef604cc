"""auth_throttles: failed attempts at secrets that name no row of their own (API tokens)

An unknown API token names no client to count on, so its failures are counted per caller
address in this table, with the same reserve-then-check rule as staff logins and access codes
(core.staff.attempts).

Revision ID: 0015
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_throttles",
        sa.Column("key", sa.String(100), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_auth_throttles")),
    )


def downgrade() -> None:
    op.drop_table("auth_throttles")
