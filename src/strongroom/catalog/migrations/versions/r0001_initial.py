"""Initial catalog: clients, runs, snapshots, the path index, markers, the event outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Written by hand and frozen: later revisions change the schema, never this file.
Tables for markers and events exist from the start so later issues only add columns.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

TIME = sa.DateTime(timezone=True)
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
C_TEXT = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
JSON = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("host", sa.Text, nullable=True),
        sa.Column("first_seen", TIME, nullable=False),
        sa.Column("last_seen", TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_clients"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("client", sa.Text, nullable=False),
        sa.Column("job", sa.Text, nullable=False),
        sa.Column("director", sa.Text, nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("finished_at", TIME, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=True),
        sa.Column("bytes_read", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_new", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("bytes_stored", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("files", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("warnings", sa.Integer, nullable=False, server_default="0"),
        sa.Column("snapshot_id", sa.Text, nullable=True),
        sa.Column("window", sa.Text, nullable=True),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("log", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.ForeignKeyConstraint(["client"], ["clients.name"], name="fk_runs_client_clients"),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'warning', 'failed')", name="ck_runs_status"
        ),
    )
    op.create_index("ix_runs_client_started_at", "runs", ["client", "started_at"])
    op.create_index("ix_runs_started_at", "runs", ["started_at"])
    op.create_index(
        "ix_runs_client_status_finished_at", "runs", ["client", "status", "finished_at"]
    )
    op.create_index("ix_runs_client_job_window", "runs", ["client", "job", "window"])

    op.create_table(
        "lineages",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("repository", sa.Text, nullable=False),
        sa.Column("client", sa.Text, nullable=False),
        sa.Column("job", sa.Text, nullable=False),
        sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name="pk_lineages"),
        sa.ForeignKeyConstraint(["client"], ["clients.name"], name="fk_lineages_client_clients"),
        sa.UniqueConstraint(
            "repository", "client", "job", name="uq_lineages_repository_client_job"
        ),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("lineage_id", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("repository", sa.Text, nullable=False),
        sa.Column("client", sa.Text, nullable=False),
        sa.Column("job", sa.Text, nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("time_ns", sa.BigInteger, nullable=True),
        sa.Column("tree", sa.Text, nullable=False),
        sa.Column("hostname", sa.Text, nullable=False, server_default=""),
        sa.Column("paths", JSON, nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("summary", JSON, nullable=False),
        sa.Column("recorded_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_snapshots"),
        sa.ForeignKeyConstraint(
            ["lineage_id"], ["lineages.id"], name="fk_snapshots_lineage_id_lineages"
        ),
        sa.ForeignKeyConstraint(["client"], ["clients.name"], name="fk_snapshots_client_clients"),
        sa.UniqueConstraint("lineage_id", "seq", name="uq_snapshots_lineage_id_seq"),
    )
    op.create_index("ix_snapshots_client_time", "snapshots", ["client", "time"])
    op.create_index("ix_snapshots_time", "snapshots", ["time"])

    op.create_table(
        "paths",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("path_hash", sa.LargeBinary(16), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("name", C_TEXT, nullable=False),
        sa.Column("name_lc", C_TEXT, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_paths"),
        sa.UniqueConstraint("path_hash", name="uq_paths_path_hash"),
    )
    op.create_index("ix_paths_name_lc", "paths", ["name_lc"])
    op.create_table(
        "path_versions",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("lineage_id", sa.Integer, nullable=False),
        sa.Column("path_id", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=True),
        sa.Column("first_seq", sa.Integer, nullable=False),
        sa.Column("last_seq", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_path_versions"),
        sa.ForeignKeyConstraint(
            ["lineage_id"], ["lineages.id"], name="fk_path_versions_lineage_id_lineages"
        ),
        sa.ForeignKeyConstraint(["path_id"], ["paths.id"], name="fk_path_versions_path_id_paths"),
    )
    op.create_index("ix_path_versions_path_id", "path_versions", ["path_id"])
    op.create_index(
        "ix_path_versions_lineage_id_last_seq", "path_versions", ["lineage_id", "last_seq"]
    )

    op.create_table(
        "markers",
        sa.Column("client", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("failed", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("note", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("client", "name", name="pk_markers"),
    )

    op.create_table(
        "events",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("time", TIME, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("client", sa.Text, nullable=True),
        sa.Column("job", sa.Text, nullable=True),
        sa.Column("run_id", sa.Text, nullable=True),
        sa.Column("payload", JSON, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_time", "events", ["time"])
    op.create_index("ix_events_client_time", "events", ["client", "time"])
    op.create_table(
        "event_deliveries",
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("sink", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TIME, nullable=True),
        sa.Column("delivered_at", TIME, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("event_id", "sink", name="pk_event_deliveries"),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["events.id"],
            name="fk_event_deliveries_event_id_events",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "state IN ('pending', 'delivered', 'failed')", name="ck_event_deliveries_state"
        ),
    )
    op.create_index(
        "ix_event_deliveries_state_next_attempt_at",
        "event_deliveries",
        ["state", "next_attempt_at"],
    )


def downgrade() -> None:
    for table in (
        "event_deliveries",
        "events",
        "markers",
        "path_versions",
        "paths",
        "snapshots",
        "lineages",
        "runs",
        "clients",
    ):
        op.drop_table(table)
