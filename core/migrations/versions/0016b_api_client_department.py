"""api_clients.department and .staff_id; guarantee_references.verified_by and .verified_at

API envelopes carried no department, so a department's clerks never saw them and the monthly
report filed them under (未設定): a client now has a default department. A client may act for
one staff member, whose visibility its searches then use (the same rows as the staff page).
Staff confirm a guarantee certificate at its issuer; who and when is kept on the reference.

Revision ID: 0016b
Revises: 0016
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016b"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_clients") as batch:
        batch.add_column(sa.Column("department", sa.String(200), nullable=True))
        batch.add_column(
            sa.Column(
                "staff_id",
                sa.String(32),
                sa.ForeignKey(
                    "staff.id", name="fk_api_clients_staff_id_staff", ondelete="SET NULL"
                ),
                nullable=True,
            )
        )


    with op.batch_alter_table("guarantee_references") as batch:
        batch.add_column(sa.Column("verified_by", sa.String(320), nullable=True))
        batch.add_column(sa.Column("verified_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("guarantee_references") as batch:
        batch.drop_column("verified_at")
        batch.drop_column("verified_by")
    with op.batch_alter_table("api_clients") as batch:
        batch.drop_column("staff_id")
        batch.drop_column("department")
