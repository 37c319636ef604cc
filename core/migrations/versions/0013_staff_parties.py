"""parties bound to staff accounts

A buyer-side party (an internal approver, the buyer's official) can be bound to a staff account:
it signs from the staff pages after logging in and re-authenticating, instead of a mailed link
and an access code it never had.

Revision ID: 0013
Revises: 0014
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("parties") as batch:
        batch.add_column(sa.Column("staff_id", sa.String(length=32), nullable=True))
        batch.create_index(batch.f("ix_parties_staff_id"), ["staff_id"], unique=False)
        batch.create_foreign_key(
            batch.f("fk_parties_staff_id_staff"), "staff", ["staff_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("parties") as batch:
        batch.drop_constraint(batch.f("fk_parties_staff_id_staff"), type_="foreignkey")
        batch.drop_index(batch.f("ix_parties_staff_id"))
        batch.drop_column("staff_id")
