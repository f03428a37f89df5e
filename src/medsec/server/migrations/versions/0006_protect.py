"""device protection: signed event batches, events, latest protection status per device

Revision ID: 0006
Revises: 0002
Create Date: 2026-12-05 09:14:37.204511

A branch of its own next to 0003 (updates), 0004 (vulnerabilities) and 0005 (remote maintenance).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "protection_batches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_protection_batches_device_id_devices"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_protection_batches_organization_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_protection_batches")),
        sa.UniqueConstraint("device_id", "seq", name="uq_protection_batches_device_id_seq"),
    )
    with op.batch_alter_table("protection_batches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_protection_batches_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_protection_batches_organization_id"), ["organization_id"], unique=False)

    op.create_table(
        "protection_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=True),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("subject_exe", sa.Text(), nullable=True),
        sa.Column("subject_sha256", sa.String(length=64), nullable=True),
        sa.Column("subject_pid", sa.BigInteger(), nullable=True),
        sa.Column("object_path", sa.Text(), nullable=True),
        sa.Column("object_sha256", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("event_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_protection_events_device_id_devices"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_protection_events_organization_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_protection_events")),
        sa.UniqueConstraint("device_id", "seq", "index", name="uq_protection_events_device_id_seq_index"),
    )
    with op.batch_alter_table("protection_events", schema=None) as batch_op:
        batch_op.create_index("ix_protection_events_device_id_event_time", ["device_id", "event_time"], unique=False)
        batch_op.create_index(
            "ix_protection_events_organization_id_event_time", ["organization_id", "event_time"], unique=False
        )

    op.create_table(
        "protection_status",
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("policy_version", sa.String(length=64), nullable=False),
        sa.Column("trustdb_version", sa.String(length=64), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_protection_status_device_id_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_protection_status")),
    )


def downgrade() -> None:
    op.drop_table("protection_status")
    with op.batch_alter_table("protection_events", schema=None) as batch_op:
        batch_op.drop_index("ix_protection_events_organization_id_event_time")
        batch_op.drop_index("ix_protection_events_device_id_event_time")
    op.drop_table("protection_events")
    with op.batch_alter_table("protection_batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_protection_batches_organization_id"))
        batch_op.drop_index(batch_op.f("ix_protection_batches_device_id"))
    op.drop_table("protection_batches")
