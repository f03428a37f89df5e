"""device protection: the reason allowlisting is off, next to the reported mode

Revision ID: 0010
Revises: 0006
Create Date: 2026-12-14 10:05:00.000000

On the protection branch (after 0006). A device whose allowlisting engine could not start reports
mode ``off`` with a reason; the reason is kept with the latest status. Rows from before this
revision have no reason (null), which is what a running engine reports too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("protection_status", schema=None) as batch_op:
        batch_op.add_column(sa.Column("off_reason", sa.String(length=200), nullable=True))


def downgrade() -> None:
    # The older schema knows no "off": keep what it showed before, the reason in the version text.
    op.execute(
        "UPDATE protection_status SET mode = 'monitor', "
        "policy_version = substr(policy_version || ' (off: ' || coalesce(off_reason, '') || ')', 1, 64) "
        "WHERE mode = 'off'"
    )
    with op.batch_alter_table("protection_status", schema=None) as batch_op:
        batch_op.drop_column("off_reason")
