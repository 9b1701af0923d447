"""`strongroom restore`: restore a snapshot under a target directory."""

from __future__ import annotations

import os

import click

from strongroom.cli.context import App, pass_app
from strongroom.engine.restorer import Restorer, RestoreRequest, RestoreResult
from strongroom.engine.workers import Workers, file_threads
from strongroom.errors import EXIT_INTEGRITY, EXIT_SUCCESS, EXIT_WARNINGS
from strongroom.repository import Repository, Snapshot


@click.command("restore")
@click.argument("snapshot")
@click.option("--target", required=True, type=click.Path(), help="Directory to restore under.")
@click.option("--include", "includes", multiple=True, help="Only paths matching (repeatable).")
@click.option("--exclude", "excludes", multiple=True, help="Leave out matching paths.")
@click.option("--client", help="Narrow 'latest' to this client.")
@click.option("--job", help="Narrow 'latest' to this job.")
@click.option("--tag", "tags", multiple=True, help="Narrow 'latest' to this tag.")
@click.option("--to-client", help="Restore onto this configured client, through its agent.")
@click.option("--verify", is_flag=True, help="Re-read every restored file and compare.")
@pass_app
def restore_command(
    app: App,
    snapshot: str,
    target: str,
    includes: tuple[str, ...],
    excludes: tuple[str, ...],
    client: str | None,
    job: str | None,
    tags: tuple[str, ...],
    to_client: str | None,
    verify: bool,
) -> int:
    """Restore a snapshot; original absolute paths are recreated under --target."""
    request = RestoreRequest(target, includes, excludes, verify)
    url, _ = app.repository_target()
    # Worker processes are forked first, before any thread starts.
    count = 0 if to_client else app.worker_processes(restore=True)
    with Workers(count, app.clock) as workers, app.open_repository(purpose="restore") as repo:
        snap = app.resolve_snapshot(repo, snapshot, client, job, tags)
        where = f" on {to_client}" if to_client else ""
        app.info(f"restoring snapshot {snap.id[:8]} of {snap.client} to {target}{where}")
        if to_client:
            result = _restore_on_client(app, repo, snap, to_client, request)
        else:
            lanes = workers.for_restore(repo, url)
            # The parent writes files too, beside a worker per core: a restore's
            # writers block in the kernel (creating files, waiting for pack reads)
            # about a tenth of their time, and one writer more than cores fills it.
            threads = max(1, file_threads(lanes))
            result = Restorer(repo, workers=threads, lanes=lanes).restore(snap, request)
    for w in result.warnings:
        app.warn(w)
        app.json_line("warning", message=w)
    for e in result.errors:
        click.echo(f"error: {e}", err=True)
        app.json_line("error", message=e)
    code = EXIT_INTEGRITY if result.errors else EXIT_WARNINGS if result.warnings else EXIT_SUCCESS
    if app.json:
        app.json_line(
            "summary",
            snapshot_id=snap.id,
            exit_code=code,
            files=result.files,
            dirs=result.dirs,
            other=result.other,
            bytes=result.bytes,
            verified=result.verified,
            errors=len(result.errors),
            warnings=len(result.warnings),
        )
    else:
        app.result(
            f"restored {result.files} files, {result.dirs} dirs, {result.other} other "
            f"({result.bytes} bytes)" + (f"; verified {result.verified} files" if verify else "")
        )
        if result.errors:
            app.result(
                f"{len(result.errors)} file(s) NOT restored because their data is "
                "damaged or missing (listed above)"
            )
    return code


def _restore_on_client(
    app: App, repo: Repository, snap: Snapshot, client: str, request: RestoreRequest
) -> RestoreResult:
    """Through the client's agent: the director decrypts, the client writes."""
    from strongroom.agent.director import AgentRestore, AgentSession
    from strongroom.jobs.environment import for_job_commands
    from strongroom.jobs.preflight import agent_command_line

    spec = app.load_config().job(client)
    if spec.transport == "local":
        return Restorer(repo).restore(snap, request)
    env = for_job_commands(os.environ)  # ssh needs no repository password
    done = AgentSession(agent_command_line(spec), repo, app.clock, env=env).restore(
        AgentRestore(snap.tree, request.target, request.includes, request.excludes, request.verify)
    )
    return RestoreResult(
        files=int(done.get("files", 0)),
        dirs=int(done.get("dirs", 0)),
        other=int(done.get("other", 0)),
        bytes=int(done.get("bytes", 0)),
        verified=int(done.get("verified", 0)),
        warnings=[str(w) for w in done.get("warnings", [])],
        errors=[str(e) for e in done.get("errors", [])],
    )
