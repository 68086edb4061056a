"""tts_audio: size column and last-use index for the purge

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tts_audio", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("size_bytes", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.create_index("ix_tts_audio_last_used_at", ["last_used_at"], unique=False)
    # length() of a bytea (PostgreSQL) or a BLOB (SQLite) is its size in bytes.
    op.execute("UPDATE tts_audio SET size_bytes = length(audio)")


def downgrade() -> None:
    with op.batch_alter_table("tts_audio", schema=None) as batch_op:
        batch_op.drop_index("ix_tts_audio_last_used_at")
        batch_op.drop_column("size_bytes")
