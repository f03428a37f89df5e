"""remote maintenance: the device's own access-log entries of each session, with their proofs

Revision ID: 0009
Revises: 0005
Create Date: 2026-12-20 09:14:02.118530

On the remote-maintenance branch (after 0005); needs remote_sessions and devices.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "remote_device_uploads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=80), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("log_origin", sa.String(length=200), nullable=False),
        sa.Column("log_key", sa.String(length=300), nullable=False),
        sa.Column("checkpoint_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("checkpoint_note", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_remote_device_uploads_device_id_devices")),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["remote_sessions.id"],
            name=op.f("fk_remote_device_uploads_session_id_remote_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remote_device_uploads")),
    )
    with op.batch_alter_table("remote_device_uploads", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_remote_device_uploads_session_id"), ["session_id"], unique=False)

    op.create_table(
        "remote_device_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=80), nullable=False),
        sa.Column("upload_id", sa.Integer(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
        sa.Column("inclusion_proof", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["remote_sessions.id"],
            name=op.f("fk_remote_device_entries_session_id_remote_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["upload_id"],
            ["remote_device_uploads.id"],
            name=op.f("fk_remote_device_entries_upload_id_remote_device_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_remote_device_entries")),
        sa.UniqueConstraint("session_id", "log_index", name="uq_remote_device_entries_session_log_index"),
    )
    with op.batch_alter_table("remote_device_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_remote_device_entries_session_id"), ["session_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_remote_device_entries_upload_id"), ["upload_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("remote_device_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_remote_device_entries_upload_id"))
        batch_op.drop_index(batch_op.f("ix_remote_device_entries_session_id"))

    op.drop_table("remote_device_entries")
    with op.batch_alter_table("remote_device_uploads", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_remote_device_uploads_session_id"))

    op.drop_table("remote_device_uploads")
