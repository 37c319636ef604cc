"""awards.record: the source record an award was mapped from

Staff can re-map a waiting award (after the admin fixed the mapping) without waiting for the
source to send the record again; that needs the record itself. It is kept as the mapping read
it, secret columns masked, and attachments replaced by the SHA-256 of the award document
that holds their bytes. Awards taken in before this migration have none and cannot be
re-mapped (they are re-imported instead).

Revision ID: 0017a_award_records
Revises: 0016b
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017a_award_records"
down_revision = "0016b"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("awards") as batch:
        batch.add_column(sa.Column("record", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("awards") as batch:
        batch.drop_column("record")
