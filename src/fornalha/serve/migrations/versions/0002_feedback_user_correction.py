"""Feedback gains the rating user and a corrected answer (for the continuous-improvement loop); indexes.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("user", sa.String(256), nullable=True))
        batch.add_column(sa.Column("correction", sa.Text, nullable=True))
    op.create_index("ix_feedback_completion_id", "feedback", ["completion_id"])
    op.create_index("ix_completions_created", "completions", ["created"])
    op.create_index("ix_completions_model", "completions", ["model"])


def downgrade() -> None:
    op.drop_index("ix_completions_model", "completions")
    op.drop_index("ix_completions_created", "completions")
    op.drop_index("ix_feedback_completion_id", "feedback")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("correction")
        batch.drop_column("user")
