"""Schema migrations through Alembic, configured in code (no alembic.ini at run time).

To write a new revision, against a catalog migrated to the current head::

    python -c 'from alembic import command; from strongroom.catalog.migrate import \\
        alembic_config; command.revision(alembic_config(), "what changes", rev_id="0002")'

then edit the file it creates under ``migrations/versions`` (name it ``rNNNN_*.py``)
and update ``schema.py`` to match; the test suite compares the two.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from strongroom.catalog.errors import CatalogSchemaError

if TYPE_CHECKING:  # Alembic is imported only to migrate (~0.15 s of every command)
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).parent / "migrations"
# The newest revision under migrations/versions, so that opening a catalog need not
# load Alembic to know it; tests/catalog/test_schema.py checks it against Alembic's.
HEAD_REVISION = "0002"
# Any constant will do: it only has to be the same for every strongroom process.
PG_MIGRATION_LOCK = 0x5352_4341_5441_4C47  # "SRCATALG"


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    return HEAD_REVISION


def current_revision(connection: Connection) -> str | None:
    """The revision a catalog's schema is at (Alembic's version table), or None."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    if len(versions) > 1:
        raise CatalogSchemaError(f"catalog has several schema revisions: {versions}")
    return str(versions[0][0]) if versions else None


def check_revision(revision: str | None, where: str) -> None:
    """Raise CatalogSchemaError unless ``revision`` is the head this code was written for."""
    head = head_revision()
    if revision == head:
        return
    if revision is None:
        raise CatalogSchemaError(f"catalog {where} has no schema yet (never migrated)")
    if _is_known(revision):
        raise CatalogSchemaError(
            f"catalog {where} has schema {revision}, older than the {head} this strongroom needs"
        )
    raise CatalogSchemaError(
        f"catalog {where} has schema {revision}, newer than this strongroom knows ({head})",
        hint="upgrade strongroom on this machine to the version the other directors run",
    )


def _is_known(revision: str) -> bool:
    return any(script.revision == revision for script in _scripts().walk_revisions())


def upgrade(engine: Engine, where: str) -> None:
    """Bring the schema to head; a no-op when it is there. Safe to run concurrently."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Two directors migrating at once: the second waits, then finds nothing to do.
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK}
            )
        revision = current_revision(connection)
        if revision == head_revision():
            return
        if revision is not None and not _is_known(revision):
            check_revision(revision, where)  # raises: newer than this code
        from alembic import command

        command.upgrade(alembic_config(connection), "head")
