"""Indexes on the date columns the retention purge filters on

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 01:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_voice_sessions_started_at", "voice_sessions", "started_at"),
    ("ix_turns_started_at", "turns", "started_at"),
    ("ix_interaction_logs_created_at", "interaction_logs", "created_at"),
    ("ix_cache_entries_created_at", "cache_entries", "created_at"),
)


def upgrade() -> None:
    for name, table, column in INDEXES:
        op.create_index(name, table, [column])


def downgrade() -> None:
    for name, table, _column in INDEXES:
        op.drop_index(name, table_name=table)
