"""`strongroom check`: verify repository structure, and data when asked."""

from __future__ import annotations

import click

from strongroom.cli.context import App, pass_app
from strongroom.engine.checker import Checker
from strongroom.errors import EXIT_INTEGRITY, EXIT_SUCCESS, UsageError


@click.command("check")
@click.option("--read-data", is_flag=True, help="Read and authenticate every pack.")
@click.option("--read-data-subset", metavar="P%|n/m", help="Read only a subset of packs.")
@pass_app
def check_command(app: App, read_data: bool, read_data_subset: str | None) -> int:
    """Verify that every snapshot's data is present and intact (exit 13 if not)."""
    with app.open_repository(load_index=False, purpose="check") as repo:
        try:
            result = Checker(repo).check(
                read_data=read_data or read_data_subset is not None, subset=read_data_subset
            )
        except ValueError as e:
            raise UsageError(str(e)) from None
    code = EXIT_SUCCESS if result.ok else EXIT_INTEGRITY
    if app.json:
        app.emit_json(
            {
                "type": "summary",
                "ok": result.ok,
                "exit_code": code,
                "errors": result.errors,
                "notes": result.notes,
                "snapshots": result.snapshots,
                "trees": result.trees,
                "packs": result.packs,
                "packs_read": result.packs_read,
                "blobs_read": result.blobs_read,
                "bytes_read": result.bytes_read,
                "affected": result.affected,
            }
        )
        return code
    for note in result.notes:
        app.info(f"note: {note}")
    for err in result.errors:
        click.echo(f"error: {err}", err=True)
    summary = f"{result.snapshots} snapshots, {result.trees} trees, {result.packs} packs" + (
        f", {result.packs_read} packs read ({result.blobs_read} blobs)" if result.packs_read else ""
    )
    if result.ok:
        app.result(f"no errors found: {summary}")
    else:
        app.result(
            f"{len(result.errors)} error(s) found: {summary}; "
            f"{len(result.affected)} snapshot(s) affected"
        )
    return code
