"""api_keys and rooms (shared by every worker); the API key that created a session

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=32), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("max_calls", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "rooms",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column(
            "key_id",
            sa.String(length=32),
            sa.ForeignKey("api_keys.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rooms_created_at", "rooms", ["created_at"])
    with op.batch_alter_table("voice_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_voice_sessions_key_id", ["key_id"])


def downgrade() -> None:
    with op.batch_alter_table("voice_sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_voice_sessions_key_id")
        batch_op.drop_column("key_id")
    op.drop_index("ix_rooms_created_at", table_name="rooms")
    op.drop_table("rooms")
    op.drop_table("api_keys")
