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
    """List snapshots, oldest first."""
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
