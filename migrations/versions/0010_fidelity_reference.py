"""Codec v3 and the fidelity report: a job's first items keep the teacher's logprobs exactly beside their
encoded top-k (results.reference_logprobs), so every codec's error can be measured on the job's own data.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("reference_logprobs", sa.LargeBinary(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # Packed floats do not compress; pglz would only spend CPU trying.
        op.execute("ALTER TABLE results ALTER COLUMN reference_logprobs SET STORAGE EXTERNAL")


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("reference_logprobs")
