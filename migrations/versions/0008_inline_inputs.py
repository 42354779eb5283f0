"""inline inputs: a small classify input's bytes in its job item's row (INFERQ_INLINE_INPUT_MAX_BYTES)

Revision ID: 0008_inline_inputs
Revises: 0007_item_warnings
Create Date: 2026-12-03 10:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_inline_inputs"
down_revision: str | None = "0007_item_warnings"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_data", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_items", schema=None) as batch_op:
        batch_op.drop_column("input_data")
