"""Media: volume sets, their snapshots, and the volumes (labels, status, location).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "media_sets",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("repository_id", sa.Text, nullable=False),
        sa.Column("repository", sa.Text, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("volumes", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_media_sets"),
    )
    op.create_table(
        "media_set_snapshots",
        sa.Column("set_id", sa.Text, nullable=False),
        sa.Column("snapshot_id", sa.Text, nullable=False),
        sa.Column("client", sa.Text, nullable=False),
        sa.Column("job", sa.Text, nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.PrimaryKeyConstraint("set_id", "snapshot_id", name="pk_media_set_snapshots"),
        sa.ForeignKeyConstraint(
            ["set_id"],
            ["media_sets.id"],
            name="fk_media_set_snapshots_set_id_media_sets",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_media_set_snapshots_snapshot_id", "media_set_snapshots", ["snapshot_id"])
    op.create_table(
        "media_volumes",
        sa.Column("label", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("location", sa.String(16), nullable=False),
        sa.Column("labeled_at", TIME, nullable=False),
        sa.Column("volume_id", sa.Text, nullable=True),
        sa.Column("set_id", sa.Text, nullable=True),
        sa.Column("sequence", sa.Integer, nullable=True),
        sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("written_at", TIME, nullable=True),
        sa.Column("moved_at", TIME, nullable=True),
        sa.Column("recycled_at", TIME, nullable=True),
        sa.PrimaryKeyConstraint("label", name="pk_media_volumes"),
        sa.ForeignKeyConstraint(
            ["set_id"], ["media_sets.id"], name="fk_media_volumes_set_id_media_sets"
        ),
        sa.CheckConstraint(
            "status IN ('blank', 'full', 'exported', 'recycled')", name="ck_media_volumes_status"
        ),
        sa.CheckConstraint(
            "location IN ('onsite', 'offsite', 'vault')", name="ck_media_volumes_location"
        ),
    )
    op.create_index("ix_media_volumes_set_id", "media_volumes", ["set_id"])
    op.create_index("ix_media_volumes_status_location", "media_volumes", ["status", "location"])


def downgrade() -> None:
    for table in ("media_volumes", "media_set_snapshots", "media_sets"):
        op.drop_table(table)
