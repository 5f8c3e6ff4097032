"""the verdict on a sealed scan document a report carries; one index fewer on reports

Revision ID: 0003
Revises: 0002

`reports.seal` and `reports.seal_detail` hold the server's verdict on the `patchguard scan
--json` document a report carried. `ix_reports_host_id` goes: the unique (host_id, seq) index
starts with host_id and serves every lookup by host, and each index is one more write per
stored report.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seal", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("seal_detail", sa.Text(), nullable=True))
        batch_op.drop_index(batch_op.f("ix_reports_host_id"))


def downgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reports_host_id"), ["host_id"], unique=False)
        batch_op.drop_column("seal_detail")
        batch_op.drop_column("seal")
