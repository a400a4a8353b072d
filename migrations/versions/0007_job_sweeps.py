"""Giant jobs: the loading state's heartbeat, the background sweep a job awaits (cancel, retry, purge) with
its cursor, and indexes to find jobs with a sweep due and finished jobs past retention.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SWEEP_DUE = sa.text("sweep IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("sweep", sa.String(16), nullable=True))
        batch.add_column(sa.Column("sweep_cursor", sa.BigInteger(), nullable=True))
    op.create_index("ix_jobs_sweep", "jobs", ["sweep"], postgresql_where=SWEEP_DUE, sqlite_where=SWEEP_DUE)
    op.create_index("ix_jobs_finished", "jobs", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_finished", table_name="jobs")
    op.drop_index("ix_jobs_sweep", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("sweep_cursor")
        batch.drop_column("sweep")
        batch.drop_column("loaded_at")
