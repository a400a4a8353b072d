"""Fleet dispatch: job priority and last claim time (fair share), partial indexes on queued, leased and
failed items in place of the full (teacher, status, id) and (status, lease) indexes.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

QUEUED = sa.text("status = 'queued'")
LEASED = sa.text("status = 'leased'")
FAILED = sa.text("status = 'failed'")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_teacher_status", "jobs", ["teacher", "status"])
    op.drop_index("ix_items_claim", table_name="items")
    op.drop_index("ix_items_lease", table_name="items")
    op.create_index("ix_items_queued", "items", ["job_id", "id"], postgresql_where=QUEUED, sqlite_where=QUEUED)
    op.create_index("ix_items_leased", "items", ["lease_expires_at"], postgresql_where=LEASED, sqlite_where=LEASED)
    op.create_index("ix_items_failed", "items", ["job_id", "id"], postgresql_where=FAILED, sqlite_where=FAILED)


def downgrade() -> None:
    op.drop_index("ix_items_failed", table_name="items")
    op.drop_index("ix_items_leased", table_name="items")
    op.drop_index("ix_items_queued", table_name="items")
    op.create_index("ix_items_lease", "items", ["status", "lease_expires_at"])
    op.create_index("ix_items_claim", "items", ["teacher", "status", "id"])
    op.drop_index("ix_jobs_teacher_status", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("last_claimed_at")
        batch.drop_column("priority")
