"""`strongroom init`: create a repository."""

from __future__ import annotations

import getpass
from datetime import UTC, datetime

import click

from strongroom.backend import open_backend
from strongroom.cli.context import App, default_client, pass_app
from strongroom.repository import Repository


@click.command("init")
@pass_app
def init_command(app: App) -> None:
    """Create a repository (refuses to overwrite one)."""
    url, password = app.repository_target(confirm=True)  # --repo NAME: the config's
    backend = open_backend(url)
    repo = Repository.init(
        backend,
        password(),
        kdf=app.kdf(),
        created=datetime.fromtimestamp(app.clock.now_ns() / 1e9, UTC).isoformat(),
        hostname=default_client(),
        username=getpass.getuser(),
    )
    if app.json:
        app.emit_json({"id": repo.id, "location": backend.location, "key_id": repo.key_id})
    else:
        app.result(f"created repository {repo.id[:8]} at {backend.location}")
