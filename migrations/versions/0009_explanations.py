"""explanations: per item, the 28x28 picture the model saw and its saliency map (784 uint8 bytes each, only
for jobs submitted with the option explain)

Revision ID: 0009_explanations
Revises: 0008_inline_inputs
Create Date: 2026-12-03 10:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_explanations"
down_revision: str | None = "0008_inline_inputs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_image", sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column("explanation", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.drop_column("explanation")
        batch_op.drop_column("input_image")
