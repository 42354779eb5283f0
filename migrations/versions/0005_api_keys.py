"""api keys, tenant retention, and tenant-private model versions and aliases

Revision ID: 0005_api_keys
Revises: 0004_datasets
Create Date: 2026-11-28 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_api_keys"
down_revision: str | None = "0004_datasets"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=24), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index("ix_api_keys_tenant_created", "api_keys", ["tenant_id", "created_at"])
    op.create_table(
        "tenant_retention",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("retention_days", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_retention")),
    )
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.add_column(sa.Column("tenant_id", sa.String(length=64), nullable=True))  # NULL: public
    # An alias is public ('') or one tenant's; the tenant joins the primary key (existing aliases are public).
    _alias_key(with_tenant=True)


def downgrade() -> None:
    op.execute("DELETE FROM model_aliases WHERE tenant_id <> ''")
    _alias_key(with_tenant=False)
    with op.batch_alter_table("model_versions") as batch_op:
        batch_op.drop_column("tenant_id")
    op.drop_table("tenant_retention")
    op.drop_index("ix_api_keys_tenant_created", table_name="api_keys")
    op.drop_table("api_keys")


def _alias_key(*, with_tenant: bool) -> None:
    """Add (or drop) model_aliases.tenant_id as the third primary-key column."""
    key = ["name", "alias", "tenant_id"] if with_tenant else ["name", "alias"]
    if op.get_bind().dialect.name != "sqlite":
        if with_tenant:
            op.add_column("model_aliases", sa.Column("tenant_id", sa.String(64), nullable=False, server_default=""))
        op.drop_constraint("pk_model_aliases", "model_aliases", type_="primary")
        op.create_primary_key("pk_model_aliases", "model_aliases", key)
        if not with_tenant:
            op.drop_column("model_aliases", "tenant_id")
        return
    # SQLite cannot change a primary key in place: copy the rows into a table with the new key.
    tenant = [sa.Column("tenant_id", sa.String(64), nullable=False, server_default="")] if with_tenant else []
    op.create_table(
        "_model_aliases_new",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("alias", sa.String(length=60), nullable=False),
        *tenant,
        sa.Column("version_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"], ["model_versions.id"], name="fk_model_aliases_version_id_model_versions"
        ),
        sa.PrimaryKeyConstraint(*key, name="pk_model_aliases"),
    )
    tenant_value = ", ''" if with_tenant else ""
    tenant_column = ", tenant_id" if with_tenant else ""
    op.execute(
        f"INSERT INTO _model_aliases_new (name, alias{tenant_column}, version_id, updated_at) "
        f"SELECT name, alias{tenant_value}, version_id, updated_at FROM model_aliases"
    )
    op.drop_table("model_aliases")
    op.rename_table("_model_aliases_new", "model_aliases")
