"""Projects and API keys; every job belongs to a project.

Jobs that predate this revision are given to a project named "default".

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("project_id", sa.Uuid(), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False, unique=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("revoked_at", Timestamp, nullable=True),
    )
    bind = op.get_bind()
    default_id = None
    if bind.execute(sa.text("SELECT count(*) FROM jobs")).scalar():
        default_id = uuid.uuid4()
        op.bulk_insert(projects, [{"id": default_id, "name": "default", "created_at": datetime.now(UTC)}])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("project_id", sa.Uuid(), nullable=True))
    if default_id is not None:
        jobs = sa.table("jobs", sa.column("project_id", sa.Uuid()))
        op.execute(jobs.update().values(project_id=default_id))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("project_id", existing_type=sa.Uuid(), nullable=False)
        batch.create_foreign_key("fk_jobs_project_id", "projects", ["project_id"], ["id"], ondelete="CASCADE")
        batch.drop_index("ix_jobs_created_at")
        batch.create_index("ix_jobs_project_created", ["project_id", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_project_created")
        batch.create_index("ix_jobs_created_at", ["created_at"])
        batch.drop_constraint("fk_jobs_project_id", type_="foreignkey")
        batch.drop_column("project_id")
    op.drop_table("api_keys")
    op.drop_table("projects")
