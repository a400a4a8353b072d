"""Results keyed by (job, item, sample): the surrogate id, its index and the two indexes that repeated
the same columns go, leaving one index per result row (issue 13's per-row overhead; codec v4 arrives in
the same release but needs no schema change).

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_results_job_item", table_name="results")
    with op.batch_alter_table("results", recreate="auto") as batch:
        batch.drop_constraint("uq_results_item_sample", type_="unique")
        batch.drop_column("id")
        batch.create_primary_key("results_pkey", ["job_id", "item_id", "sample_index"])


def downgrade() -> None:
    import sqlalchemy as sa

    with op.batch_alter_table("results", recreate="auto") as batch:
        batch.drop_constraint("results_pkey", type_="primary")
        batch.add_column(sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True))
        batch.create_unique_constraint("uq_results_item_sample", ["item_id", "sample_index"])
    op.create_index("ix_results_job_item", "results", ["job_id", "item_id", "sample_index"])
