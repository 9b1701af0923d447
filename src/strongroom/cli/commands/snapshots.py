"""`strongroom snapshots`: list snapshots."""

from __future__ import annotations

import click

from strongroom.cli.context import App, pass_app, snapshot_json


@click.command("snapshots")
@click.option("--client", help="Only this client's snapshots.")
@click.option("--job", help="Only this job's snapshots.")
@click.option("--tag", "tags", multiple=True, help="Only snapshots with this tag.")
@pass_app
def snapshots_command(app: App, client: str | None, job: str | None, tags: tuple[str, ...]) -> None:
    """List snapshots, oldest first (from the catalog when no --repo is given)."""
    if app.use_catalog():
        _from_catalog(app, client, job, tags)
        return
    with app.open_repository(load_index=False, lock=None) as repo:
        snaps = app.select_snapshots(repo, client, job, tags)
    if app.json:
        app.emit_json([snapshot_json(s) for s in snaps])
        return
    app.result(f"{'ID':8}  {'Time':19}  {'Client':16}  {'Job':10}  {'Tags':12}  Paths")
    for s in snaps:
        app.result(
            f"{s.id[:8]}  {s.time.strftime('%Y-%m-%d %H:%M:%S')}  {s.client:16}  {s.job:10}  "
            f"{','.join(s.tags):12}  {', '.join(s.paths)}"
        )
    app.result(f"{len(snaps)} snapshot(s)")


def _from_catalog(app: App, client: str | None, job: str | None, tags: tuple[str, ...]) -> None:
    catalog = app.open_catalog(app.load_config_if_any())
    try:
        records = [r for r in catalog.snapshots(client, job) if set(tags) <= set(r.tags)]
    finally:
        catalog.close()
    if app.json:
        app.emit_json(
            [
                {
                    "id": r.id,
                    "short_id": r.id[:8],
                    "time": r.time.isoformat(),
                    "tree": r.tree,
                    "paths": r.paths,
                    "hostname": r.hostname,
                    "client": r.client,
                    "job": r.job,
                    "tags": r.tags,
                    "repository": r.repository,
                    "summary": r.summary,
                }
                for r in records
            ]
        )
        return
    for r in records:
        app.result(
            f"{r.id[:8]}  {r.time:%Y-%m-%d %H:%M:%S}  {r.client:16}  {r.job:10}  "
            f"{r.repository:10}  {', '.join(r.paths)}"
        )
    app.result(f"{len(records)} snapshot(s)")
