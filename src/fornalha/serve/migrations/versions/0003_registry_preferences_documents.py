"""The continuous-improvement loop: model versions, promotion decisions, preference pairs, ingested
documents; completions remember the model version that answered.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("completions") as batch:
        batch.add_column(sa.Column("model_version", sa.String(64), nullable=True))
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("registry", sa.String(1024), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=True),
        sa.Column("source", sa.String(2048), nullable=True),
        sa.Column("parent", sa.String(64), nullable=True),
        sa.Column("config", sa.Text, nullable=True),
        sa.Column("data_hashes", sa.Text, nullable=True),
        sa.Column("metrics", sa.Text, nullable=True),
        sa.Column("path", sa.String(2048), nullable=False),
        sa.UniqueConstraint("registry", "version", name="uq_model_versions_registry_version"),
    )
    op.create_table(
        "promotion_decisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("registry", sa.String(1024), nullable=False),
        sa.Column("decision", sa.String(64), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("challenger", sa.String(64), nullable=True),
        sa.Column("champion_before", sa.String(64), nullable=True),
        sa.Column("champion_after", sa.String(64), nullable=True),
        sa.Column("promoted", sa.Boolean, nullable=False),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.Column("numbers", sa.Text, nullable=True),
        sa.Column("reasons", sa.Text, nullable=True),
        sa.Column("policy", sa.Text, nullable=True),
        sa.Column("created_by", sa.String(256), nullable=True),
        sa.UniqueConstraint("registry", "decision", name="uq_promotion_decisions_registry_decision"),
    )
    op.create_table(
        "preference_pairs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("conversation_id", sa.String(64), nullable=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("chosen", sa.Text, nullable=False),
        sa.Column("rejected", sa.Text, nullable=False),
        sa.Column("chosen_completion_id", sa.String(64), nullable=True),
        sa.Column("rejected_completion_id", sa.String(64), nullable=True),
        sa.Column("user", sa.String(256), nullable=True),
    )
    op.create_table(
        "ingested_documents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("source", sa.String(2048), nullable=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("meta", sa.Text, nullable=True),
        sa.Column("dataset", sa.String(2048), nullable=True),
    )
    op.create_index("ix_promotion_decisions_registry", "promotion_decisions", ["registry"])
    op.create_index("ix_preference_pairs_conversation", "preference_pairs", ["conversation_id"])


def downgrade() -> None:
    op.drop_index("ix_preference_pairs_conversation", "preference_pairs")
    op.drop_index("ix_promotion_decisions_registry", "promotion_decisions")
    op.drop_table("ingested_documents")
    op.drop_table("preference_pairs")
    op.drop_table("promotion_decisions")
    op.drop_table("model_versions")
    # a plain DROP COLUMN (SQLite >= 3.35, PostgreSQL): the batch mode's copy-and-rename of `completions`
    # would trip the foreign key of `feedback` that the store keeps switched on
    op.execute("ALTER TABLE completions DROP COLUMN model_version")
