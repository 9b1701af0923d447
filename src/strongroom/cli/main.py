"""The ``strongroom`` entry point: global options, lazy commands, errors to exit codes."""

from __future__ import annotations

import gc
import importlib
import re
import signal
import sys
from types import FrameType
from typing import Any

import click

from strongroom import __version__
from strongroom.cli.context import App
from strongroom.cli.memory import map_big_buffers
from strongroom.errors import (
    EXIT_FATAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    StrongroomError,
)

# name -> module under strongroom.cli.commands, imported only when that command runs.
COMMANDS = {
    "init": "init",
    "backup": "backup",
    "snapshots": "snapshots",
    "ls": "browse",
    "find": "browse",
    "diff": "browse",
    "dump": "browse",
    "restore": "restore",
    "check": "check",
    "key": "key",
    "config": "config",
    "help": "help",
    "run": "run",
    "agent": "agent",
    "mark": "mark",
    "preflight": "mark",
    "schedule": "schedule",
    "status": "status",
    "report": "report",
    "catalog": "catalog",
    "forget": "forget",
    "prune": "prune",
    "copy": "copy",
    "media": "media",
    "events": "events",
}
VALUE_OPTIONS = {"--config", "--repo", "-r", "--catalog"}
FLAG_OPTIONS = {"--json", "-q", "--quiet", "-v", "--verbose", "--no-progress"}

EXIT_STATUS_EPILOG = (
    "Exit status: 0 success, 1 fatal, 2 usage, 3 warnings, 10 repository, 11 locked, "
    "12 password, 13 integrity, 20 client unreachable, 21 prerequisite not met, "
    "22 hook failed, 130 interrupted. "
    "See `strongroom help exit-codes`."
)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module_name = COMMANDS.get(cmd_name)
        if module_name is None:
            return None
        module = importlib.import_module(f"strongroom.cli.commands.{module_name}")
        command: click.Command = getattr(module, cmd_name.replace("-", "_") + "_command")
        if command.epilog is None:
            command.epilog = EXIT_STATUS_EPILOG
        return command


@click.group(cls=LazyGroup, epilog=EXIT_STATUS_EPILOG)
@click.option("--config", metavar="FILE", help="Configuration file.")
@click.option("-r", "--repo", "repo_url", metavar="NAME|URL", help="Repository path or URL.")
@click.option("--catalog", metavar="URL", help="Catalog database URL.")
@click.option("--json", "json_output", is_flag=True, help="Machine-readable JSON on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="Only results and errors.")
@click.option("-v", "--verbose", count=True, help="More detail; tracebacks on errors.")
@click.option("--no-progress", is_flag=True, help="Never draw progress.")
@click.version_option(__version__, prog_name="strongroom")
@click.pass_context
def cli(
    ctx: click.Context,
    config: str | None,
    repo_url: str | None,
    catalog: str | None,
    json_output: bool,
    quiet: bool,
    verbose: int,
    no_progress: bool,
) -> None:
    """strongroom: fast, deduplicating, encrypted backups for fleets of servers."""
    ctx.obj = App(
        repo_url=repo_url,
        config=config,
        catalog=catalog,
        json=json_output,
        quiet=quiet,
        verbose=verbose,
        progress=not no_progress,
    )


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options given after the command name to before it."""
    hoisted: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        name = arg.split("=", 1)[0]
        if name in VALUE_OPTIONS and "=" in arg and name.startswith("--"):
            hoisted.append(arg)
        elif arg in VALUE_OPTIONS and i + 1 < len(argv):
            hoisted.extend(argv[i : i + 2])
            i += 1
        elif arg in FLAG_OPTIONS or re.fullmatch(r"-[vq]+", arg):
            hoisted.append(arg)
        else:
            rest.append(arg)
        i += 1
    return hoisted + rest


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(argv: list[str]) -> int:
    """Run one command line; return its exit code. Errors become codes only here."""
    verbose = any(a in ("-v", "--verbose") or a.startswith("-vv") for a in argv)
    json_mode = "--json" in argv
    try:
        result: Any = cli.main(
            hoist_global_options(argv), prog_name="strongroom", standalone_mode=False
        )
        return result if isinstance(result, int) else 0
    except StrongroomError as e:
        if verbose:
            import traceback

            traceback.print_exc()
            if isinstance(worker_trace := e.details.get("traceback"), str):
                click.echo(f"in the worker process:\n{worker_trace}", err=True)
        _report(str(e), e.hint, e.exit_code, json_mode)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return EXIT_USAGE
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_FATAL
    except Exception as e:  # a bug: say so plainly, without hiding it
        if verbose:
            raise
        _report(
            f"internal error: {type(e).__name__}: {e}",
            "rerun with -v for a traceback and report it",
            EXIT_FATAL,
            json_mode,
        )
        return EXIT_FATAL


def _report(message: str, hint: str, code: int, json_mode: bool) -> None:
    if json_mode:
        import json

        click.echo(
            json.dumps({"type": "error", "message": message, "hint": hint, "exit_code": code})
        )
    click.echo(f"strongroom: error: {message}", err=True)
    if hint:
        click.echo(f"  hint: {hint}", err=True)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    sys.setrecursionlimit(20_000)
    # Backups and restores allocate a tree node per file and few reference cycles: the
    # default thresholds had the cycle collector take 5% of a restore's CPU.
    gc.set_threshold(100_000, 50, 100)
    map_big_buffers()
    code = run(sys.argv[1:])
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    # The interpreter's last cycle collection walks every object still alive (a
    # backup's trees, ids and caches): 0.17-0.21 s after a first backup. Nothing is
    # left to collect that matters; frozen objects are still freed as usual.
    gc.freeze()
    sys.exit(code)
