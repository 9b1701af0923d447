"""The catalog's tables as SQLAlchemy Core metadata (the migrations create them).

The path index stores each path once (``paths``) and each version of an entry once per
*lineage* — the snapshots of one repository, client and job, numbered 1, 2, 3, ... in
the order they were recorded. A ``path_versions`` row says "this path, with this type,
size and mtime, is in every recorded snapshot of the lineage from ``first_seq`` to
``last_seq``"; ``last_seq`` is ``OPEN`` while the entry is in the lineage's newest
snapshot. A nightly snapshot that changes 10% of the files closes 10% of the rows and
adds as many, instead of adding a row per file; unchanged files cost nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# last_seq of a row whose entry is still in the lineage's newest snapshot.
OPEN = 2**31 - 1


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes: ``timestamptz`` on PostgreSQL, fixed-width ISO text on SQLite.

    SQLite compares the stored text, so every value is converted to UTC and stored
    without an offset; that keeps text order equal to time order.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"catalog times must be timezone-aware, got {value!r}")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Row ids that grow past 2**31 on a big fleet; SQLite needs INTEGER for rowid aliases.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Byte-wise ordering on PostgreSQL so prefix ranges and equality use the btree index.
CText = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
Json = sa.JSON().with_variant(JSONB(), "postgresql")

metadata = sa.MetaData(naming_convention=NAMING)

clients = sa.Table(
    "clients",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=True),
    sa.Column("first_seen", UTCDateTime, nullable=False),
    sa.Column("last_seen", UTCDateTime, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("client", sa.Text, sa.ForeignKey("clients.name"), nullable=False),
    sa.Column("job", sa.Text, nullable=False),
    sa.Column("director", sa.Text, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime, nullable=True),
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
    sa.CheckConstraint("status IN ('running', 'succeeded', 'warning', 'failed')", name="status"),
    sa.Index(None, "client", "started_at"),
    sa.Index(None, "started_at"),
    sa.Index(None, "client", "status", "finished_at"),
    sa.Index(None, "client", "job", "window"),
)

lineages = sa.Table(
    "lineages",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("repository", sa.Text, nullable=False),
    sa.Column("client", sa.Text, sa.ForeignKey("clients.name"), nullable=False),
    sa.Column("job", sa.Text, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
    sa.UniqueConstraint("repository", "client", "job"),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("lineage_id", sa.Integer, sa.ForeignKey("lineages.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("repository", sa.Text, nullable=False),
    sa.Column("client", sa.Text, sa.ForeignKey("clients.name"), nullable=False),
    sa.Column("job", sa.Text, nullable=False),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("time_ns", sa.BigInteger, nullable=True),
    sa.Column("tree", sa.Text, nullable=False),
    sa.Column("hostname", sa.Text, nullable=False, server_default=""),
    sa.Column("paths", Json, nullable=False),
    sa.Column("tags", Json, nullable=False),
    sa.Column("summary", Json, nullable=False),
    sa.Column("recorded_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("lineage_id", "seq"),
    sa.Index(None, "client", "time"),
    sa.Index(None, "time"),
)

paths = sa.Table(
    "paths",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    # 16-byte BLAKE2b of the path: paths can be longer than a btree entry may be.
    sa.Column("path_hash", sa.LargeBinary(16), nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("name", CText, nullable=False),
    sa.Column("name_lc", CText, nullable=False),
    sa.UniqueConstraint("path_hash"),
    sa.Index(None, "name_lc"),
)

path_versions = sa.Table(
    "path_versions",
    metadata,
    sa.Column("id", BigId, primary_key=True),
    sa.Column("lineage_id", sa.Integer, sa.ForeignKey("lineages.id"), nullable=False),
    sa.Column("path_id", sa.BigInteger, sa.ForeignKey("paths.id"), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("mtime_ns", sa.BigInteger, nullable=True),
    sa.Column("first_seq", sa.Integer, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Index(None, "path_id"),
    sa.Index(None, "lineage_id", "last_seq"),
)

markers = sa.Table(
    "markers",
    metadata,
    sa.Column("client", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("failed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("note", sa.Text, nullable=True),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("client", sa.Text, nullable=True),
    sa.Column("job", sa.Text, nullable=True),
    sa.Column("run_id", sa.Text, nullable=True),
    sa.Column("payload", Json, nullable=False),
    sa.Index(None, "time"),
    sa.Index(None, "client", "time"),
)

# Per-sink delivery state of the outbox: one row per (event, sink), retried until sent.
event_deliveries = sa.Table(
    "event_deliveries",
    metadata,
    sa.Column(
        "event_id",
        sa.Text,
        sa.ForeignKey("events.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("sink", sa.Text, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UTCDateTime, nullable=True),
    sa.Column("delivered_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state"),
    sa.Index(None, "state", "next_attempt_at"),
)

# Media: a *set* is what one `media export` wrote (snapshots, expiry); a *volume* is a
# physical medium known by its label, blank until a set is written to it.
media_sets = sa.Table(
    "media_sets",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("repository_id", sa.Text, nullable=False),
    sa.Column("repository", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("volumes", sa.Integer, nullable=False),
)

media_set_snapshots = sa.Table(
    "media_set_snapshots",
    metadata,
    sa.Column(
        "set_id",
        sa.Text,
        sa.ForeignKey("media_sets.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("snapshot_id", sa.Text, primary_key=True),
    sa.Column("client", sa.Text, nullable=False),
    sa.Column("job", sa.Text, nullable=False),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Index(None, "snapshot_id"),
)

media_volumes = sa.Table(
    "media_volumes",
    metadata,
    sa.Column("label", sa.Text, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("location", sa.String(16), nullable=False),
    sa.Column("labeled_at", UTCDateTime, nullable=False),
    sa.Column("volume_id", sa.Text, nullable=True),
    sa.Column("set_id", sa.Text, sa.ForeignKey("media_sets.id"), nullable=True),
    sa.Column("sequence", sa.Integer, nullable=True),
    sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("written_at", UTCDateTime, nullable=True),
    sa.Column("moved_at", UTCDateTime, nullable=True),
    sa.Column("recycled_at", UTCDateTime, nullable=True),
    sa.CheckConstraint("status IN ('blank', 'full', 'exported', 'recycled')", name="status"),
    sa.CheckConstraint("location IN ('onsite', 'offsite', 'vault')", name="location"),
    sa.Index(None, "set_id"),
    sa.Index(None, "status", "location"),
)
