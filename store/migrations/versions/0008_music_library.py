"""library_tracks and library_playlists: users' music libraries copied by the library sync

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _owner_columns() -> list[sa.Column[object]]:
    return [
        sa.Column(
            "user_id",
            sa.String(length=64),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("platform", sa.String(length=32), primary_key=True),
        sa.Column("id", sa.String(length=128), primary_key=True),
        sa.Column("uri", sa.String(length=256), nullable=False),
        sa.Column("name", sa.String(length=512), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "library_tracks",
        *_owner_columns(),
        sa.Column("artists", sa.JSON(), nullable=False),
        sa.Column("album", sa.String(length=512), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("name_key", sa.String(length=512), nullable=False),
        sa.Column("search_text", sa.String(length=1024), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_library_tracks_search", "library_tracks", ["user_id", "platform", "search_text"]
    )
    op.create_table(
        "library_playlists",
        *_owner_columns(),
        sa.Column("name_key", sa.String(length=512), nullable=False),
        sa.Column("track_count", sa.Integer(), nullable=True),
        sa.Column("owned", sa.Boolean(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_library_playlists_name", "library_playlists", ["user_id", "platform", "name_key"]
    )


def downgrade() -> None:
    op.drop_index("ix_library_playlists_name", table_name="library_playlists")
    op.drop_table("library_playlists")
    op.drop_index("ix_library_tracks_search", table_name="library_tracks")
    op.drop_table("library_tracks")
