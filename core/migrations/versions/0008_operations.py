"""operations: when each document's newest timestamp chain expires (re-timestamping)

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(
            sa.Column("timestamp_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch.create_index("ix_documents_timestamp_expires_at", ["timestamp_expires_at"])


def downgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.drop_index("ix_documents_timestamp_expires_at")
        batch.drop_column("timestamp_expires_at")
