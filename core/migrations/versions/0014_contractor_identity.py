"""contractor identity: name keys stop merging, conflicts are reported; consent and contract type

Until now intake matched a contractor by corporate number, then registry code, then *name*, and
learnt every key a record carried: five companies called 株式会社山田建設 with five corporate
numbers became one contractor, and one usage request released all their awards to one signer.
From here on a name only finds candidates (``contractors.name_key``), never a match, and doubts
are kept in ``contractor_conflicts`` for staff.

This migration does not split anything (it cannot know which award belongs to whom): it finds
the contractors merged so far (several corporate numbers or registry codes on one row, or awards
without any number attached by name) and reports each as a ``merged_before`` conflict; their
waiting awards are held (``contractor_conflict``) so no usage request releases them to the wrong
signer. ``keiyaku contractors conflicts`` lists them.

Also: the envelope's contract type and the consent it was sent under, the consent's 電磁的措置
and its withdrawal, and when a dead letter was replayed.

Revision ID: 0014
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import unicodedata
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0015"
branch_labels = None
depends_on = None

# A copy of core.intake.contractors.name_key as it was when this migration was written (migrations never
# import the application, which changes after them).
_COMPANY_FORMS = {
    "(株)": "株式会社", "(有)": "有限会社", "(合)": "合同会社", "(同)": "合同会社",
    "(資)": "合資会社", "(名)": "合名会社", "(一社)": "一般社団法人", "(一財)": "一般財団法人",
    "(特非)": "特定非営利活動法人",
}  # fmt: skip


def _name_key(name: str) -> str:
    text = unicodedata.normalize("NFKC", name)
    for short, long in _COMPANY_FORMS.items():
        text = text.replace(short, long)
    return re.sub(r"[\s・･]+", "", text).casefold()[:200]


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        loaded = json.loads(value)
        return loaded if isinstance(loaded, dict) else {}
    return value if isinstance(value, dict) else {}


def upgrade() -> None:
    op.create_table(
        "contractor_conflicts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("contractor_id", sa.String(length=32), nullable=True),
        sa.Column("other_contractor_id", sa.String(length=32), nullable=True),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("award_id", sa.String(length=100), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("message_ja", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=200), nullable=True),
        sa.Column("resolution", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["contractor_id"],
            ["contractors.id"],
            name=op.f("fk_contractor_conflicts_contractor_id_contractors"),
        ),
        sa.ForeignKeyConstraint(
            ["other_contractor_id"],
            ["contractors.id"],
            name=op.f("fk_contractor_conflicts_other_contractor_id_contractors"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contractor_conflicts")),
        sa.UniqueConstraint("key", name=op.f("uq_contractor_conflicts_key")),
    )
    with op.batch_alter_table("contractor_conflicts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_contractor_conflicts_contractor_id"), ["contractor_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_contractor_conflicts_kind"), ["kind"], unique=False)
    with op.batch_alter_table("contractors", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name_key", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_contractors_name_key"), ["name_key"], unique=False)
    with op.batch_alter_table("envelopes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("contract_type", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("consent_id", sa.String(length=32), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_envelopes_consent_id_usage_requests"),
            "usage_requests",
            ["consent_id"],
            ["id"],
        )
    with op.batch_alter_table("usage_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("measures", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("withdrawn_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("withdrawal_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True))
    _report_merged_contractors()


def _report_merged_contractors() -> None:
    bind = op.get_bind()
    contractors = sa.table(
        "contractors",
        sa.column("id", sa.String()),
        sa.column("name", sa.String()),
        sa.column("corporate_number", sa.String()),
        sa.column("name_key", sa.String()),
    )
    identities = sa.table(
        "contractor_identities",
        sa.column("contractor_id", sa.String()),
        sa.column("kind", sa.String()),
        sa.column("value", sa.String()),
    )
    awards = sa.table(
        "awards",
        sa.column("id", sa.String()),
        sa.column("source", sa.String()),
        sa.column("award_id", sa.String()),
        sa.column("contractor_id", sa.String()),
        sa.column("corporate_number", sa.String()),
        sa.column("state", sa.String()),
        sa.column("note", sa.Text()),
        sa.column("draft", sa.JSON()),
    )
    conflicts = sa.table(
        "contractor_conflicts",
        sa.column("key", sa.String()),
        sa.column("kind", sa.String()),
        sa.column("contractor_id", sa.String()),
        sa.column("message", sa.Text()),
        sa.column("message_ja", sa.Text()),
        sa.column("detail", sa.JSON()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    names: dict[str, str] = {}
    numbers: dict[str, set[str]] = {}
    codes: dict[str, set[str]] = {}
    for cid, name, number in bind.execute(
        sa.select(contractors.c.id, contractors.c.name, contractors.c.corporate_number)
    ):
        names[cid] = name
        numbers[cid] = {number} if number else set()
        codes[cid] = set()
        bind.execute(
            contractors.update().where(contractors.c.id == cid).values(name_key=_name_key(name))
        )
    for cid, kind, value in bind.execute(
        sa.select(identities.c.contractor_id, identities.c.kind, identities.c.value)
    ):
        if kind == "corporate_number":
            numbers.setdefault(cid, set()).add(value)
        elif kind == "registry_code":
            codes.setdefault(cid, set()).add(value)
    bind.execute(identities.delete().where(identities.c.kind == "name_key"))
    by_name_only: dict[str, list[str]] = {}
    award_numbers: dict[str, set[str]] = {}
    for source, award_id, cid, number, draft in bind.execute(
        sa.select(
            awards.c.source,
            awards.c.award_id,
            awards.c.contractor_id,
            awards.c.corporate_number,
            awards.c.draft,
        ).where(awards.c.contractor_id.is_not(None))
    ):
        contractor = _json(draft).get("contractor") or {}
        if number:
            award_numbers.setdefault(cid, set()).add(number)
        elif not contractor.get("registry_code"):
            by_name_only.setdefault(cid, []).append(f"{source}:{award_id}")
    now = dt.datetime.now(dt.UTC)
    merged: list[str] = []
    for cid in sorted(names):
        all_numbers = numbers.get(cid, set()) | award_numbers.get(cid, set())
        known = bool(all_numbers or codes.get(cid))
        name_only = by_name_only.get(cid, [])
        if len(all_numbers) < 2 and len(codes.get(cid, ())) < 2 and not (known and name_only):
            continue
        merged.append(cid)
        detail = {
            "name": names[cid],
            "corporate_numbers": sorted(all_numbers),
            "registry_codes": sorted(codes.get(cid, ())),
            "awards_matched_by_name_only": sorted(name_only)[:50],
        }
        bind.execute(
            conflicts.insert().values(
                key=hashlib.sha256(f"merged_before|{cid}".encode()).hexdigest(),
                kind="merged_before",
                contractor_id=cid,
                message=(
                    f"contractor {names[cid]} ({cid}) was merged from several records by name "
                    f"before 0014: {json.dumps(detail, ensure_ascii=False)}"
                ),
                message_ja=(
                    f"事業者「{names[cid]}」は以前の取込で商号だけを手掛かりに複数の記録が"
                    "ひとつにまとめられています。法人番号・業者番号ごとに確認してください。"
                ),
                detail=detail,
                created_at=now,
            )
        )
    if merged:
        bind.execute(
            awards.update()
            .where(
                awards.c.contractor_id.in_(merged),
                awards.c.state.in_(("waiting_usage_request", "waiting_documents")),
            )
            .values(
                state="contractor_conflict",
                note="受注者が他社と統合されていた可能性があるため保留しています(職員の確認待ち)。",
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_column("replayed_at")
    with op.batch_alter_table("usage_requests", schema=None) as batch_op:
        batch_op.drop_column("withdrawal_reason")
        batch_op.drop_column("withdrawn_by")
        batch_op.drop_column("measures")
    with op.batch_alter_table("envelopes", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_envelopes_consent_id_usage_requests"), type_="foreignkey"
        )
        batch_op.drop_column("consent_id")
        batch_op.drop_column("contract_type")
    with op.batch_alter_table("contractors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contractors_name_key"))
        batch_op.drop_column("name_key")
    with op.batch_alter_table("contractor_conflicts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contractor_conflicts_kind"))
        batch_op.drop_index(batch_op.f("ix_contractor_conflicts_contractor_id"))
    op.drop_table("contractor_conflicts")
