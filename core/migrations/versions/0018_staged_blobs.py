"""staged_blobs: an approval's signature revision held in its own transaction

The approval's commit becomes its one durable write: the blob is inserted with it, written to
the store right after without waiting for the disk, and made durable and deleted by the signing
worker's next pass (core.staged_blobs).

Revision ID: 0018
Revises: 0017c
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017c"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "staged_blobs",
        sa.Column("blob_id", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("blob_id", name=op.f("pk_staged_blobs")),
    )


def downgrade() -> None:
    op.drop_table("staged_blobs")
