"""`strongroom catalog migrate | rebuild`."""

from __future__ import annotations

import click

from strongroom.backend import open_backend
from strongroom.cli.context import App, pass_app
from strongroom.errors import UsageError
from strongroom.jobs.run import path_entries, snapshot_record
from strongroom.repository import Repository


@click.group("catalog")
def catalog_command() -> None:
    """The catalog database: upgrade its schema, or rebuild it from repositories."""


@catalog_command.command("migrate")
@pass_app
def catalog_migrate(app: App) -> None:
    """Upgrade the catalog's schema to this version's (safe to run again)."""
    from strongroom.catalog import Catalog

    config = app.load_config_if_any()
    catalog = Catalog.open(app.catalog_url(config), check_schema=False, clock=app.clock)
    try:
        catalog.migrate()
        app.result(f"catalog {catalog.url} is at schema {catalog.schema_revision()}")
    finally:
        catalog.close()


@catalog_command.command("rebuild")
@pass_app
def catalog_rebuild(app: App) -> None:
    """Recreate snapshots and the path index from the repositories alone."""
    config = app.load_config_if_any()
    sources: list[tuple[str, str, bytes]] = []
    if app.repo_url:
        configured, url, secret = app.repository_named()
        sources.append((configured or url, url, secret()))
    elif config is not None:
        import os

        for name, spec in config.repositories.items():
            sources.append((name, spec.url, spec.password(os.environ)))
    else:
        raise UsageError("no repositories: give --repo or a config file")
    catalog = app.open_catalog(config)
    try:
        catalog.clear(keep_history=True)
        total = 0
        for name, url, password in sources:
            backend = open_backend(url)
            try:
                repo = Repository.open(backend, password)
                repo.load_index()
                for snap in repo.snapshots(on_error=lambda sid, e: app.warn(f"{sid[:8]}: {e}")):
                    catalog.upsert_client(snap.client)
                    catalog.record_snapshot(snapshot_record(name, snap), path_entries(repo, snap))
                    total += 1
            finally:
                backend.close()
            app.info(f"{name}: indexed")
        app.result(f"catalog rebuilt: {total} snapshot(s) from {len(sources)} repository(ies)")
    finally:
        catalog.close()
