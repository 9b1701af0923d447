"""Opening a catalog: URLs, migrations, and refusing a schema this code was not written for."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from strongroom.catalog import (
    Catalog,
    CatalogSchemaError,
    CatalogUnavailable,
    CatalogURLError,
)
from strongroom.catalog import migrate as migrate_module
from strongroom.catalog.database import create_catalog_engine
from strongroom.catalog.schema import metadata
from strongroom.errors import EXIT_USAGE, UsageError


def tables(url: str) -> set[str]:
    engine = create_catalog_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def execute(url: str, sql: str) -> None:
    engine = create_catalog_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()


def test_an_unmigrated_catalog_is_refused_with_a_hint_to_migrate(catalog_url: str) -> None:
    with pytest.raises(CatalogSchemaError) as caught:
        Catalog.open(catalog_url)
    assert isinstance(caught.value, UsageError)
    assert caught.value.exit_code == EXIT_USAGE
    assert "no schema" in str(caught.value)
    assert "strongroom catalog migrate" in caught.value.hint
    assert "alembic_version" not in tables(catalog_url)


def test_the_head_revision_is_alembics() -> None:
    """The constant that spares every command importing Alembic names its newest
    migration; and opening a catalog imports no Alembic."""
    assert migrate_module._scripts().get_current_head() == migrate_module.HEAD_REVISION
    probe = (
        "import sys, tempfile; from strongroom.catalog import Catalog; "
        "c = Catalog.open(f'sqlite:///{tempfile.mkdtemp()}/c.db', check_schema=False); "
        "c.schema_revision(); print(any(m.startswith('alembic') for m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr


def test_migrate_is_idempotent(catalog_url: str) -> None:
    with Catalog.open(catalog_url, check_schema=False) as catalog:
        assert catalog.schema_revision() is None
        catalog.migrate()
        catalog.migrate()
        assert catalog.schema_revision() == migrate_module.head_revision()
    with Catalog.open(catalog_url) as catalog:
        catalog.migrate()
        assert catalog.last_runs() == []
    assert {"clients", "runs", "snapshots", "paths", "markers", "events"} <= tables(catalog_url)


def test_auto_migrate_brings_a_new_catalog_up(catalog_url: str) -> None:
    with Catalog.open(catalog_url, auto_migrate=True) as catalog:
        assert catalog.schema_revision() == migrate_module.head_revision()
    with Catalog.open(catalog_url, auto_migrate=True) as catalog:
        assert catalog.snapshots() == []


def test_an_older_schema_is_refused(catalog_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    Catalog.open(catalog_url, auto_migrate=True).close()
    current = migrate_module.head_revision()
    monkeypatch.setattr(migrate_module, "head_revision", lambda: "9000")
    with pytest.raises(CatalogSchemaError) as caught:
        Catalog.open(catalog_url)
    assert f"schema {current}, older than the 9000" in str(caught.value)
    assert "strongroom catalog migrate" in caught.value.hint


def test_a_newer_schema_is_refused_even_with_auto_migrate(catalog_url: str) -> None:
    Catalog.open(catalog_url, auto_migrate=True).close()
    execute(catalog_url, "UPDATE alembic_version SET version_num = '9999'")
    for auto in (False, True):
        with pytest.raises(CatalogSchemaError) as caught:
            Catalog.open(catalog_url, auto_migrate=auto)
        assert "newer than this strongroom" in str(caught.value)
        assert "upgrade strongroom" in caught.value.hint


def test_the_migrations_create_exactly_the_schema_the_code_uses(catalog: Catalog) -> None:
    engine = create_catalog_engine(catalog_url_of(catalog))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def catalog_url_of(catalog: Catalog) -> str:
    return catalog._engine.url.render_as_string(hide_password=False)


def test_sqlite_is_opened_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'catalog.db'}"
    with Catalog.open(url, auto_migrate=True) as catalog, catalog._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (conn.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) >= 10_000
    assert (tmp_path / "a" / "b" / "catalog.db").exists()


@pytest.mark.parametrize(
    "url",
    ["mysql://root@localhost/catalog", "sqlite://", "sqlite:///:memory:", "not a url"],
)
def test_urls_it_cannot_use_are_usage_errors(url: str) -> None:
    with pytest.raises(CatalogURLError) as caught:
        Catalog.open(url)
    assert caught.value.exit_code == EXIT_USAGE


def test_postgresql_urls_use_psycopg_3(postgres_url: str) -> None:
    for scheme in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        url = postgres_url.replace("postgresql://", scheme, 1)
        with Catalog.open(url, auto_migrate=True) as catalog:
            assert catalog._engine.url.drivername == "postgresql+psycopg"
            assert catalog.dialect == "postgresql"
            assert catalog.url.startswith(scheme)


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A local port nothing listens on (bound but not listening, so nobody takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_an_unreachable_server_is_reported_as_unavailable() -> None:
    with closed_port() as port, pytest.raises(CatalogUnavailable) as caught:
        Catalog.open(f"postgresql://postgres:secret@127.0.0.1:{port}/catalog")
    assert "secret" not in str(caught.value)
    assert caught.value.exit_code == 1
