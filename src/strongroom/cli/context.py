"""What every command needs: global options, the password, the repository, output."""

from __future__ import annotations

import functools
import getpass
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from strongroom.cli import startup
from strongroom.clock import Clock, SystemClock
from strongroom.errors import IntegrityError, UsageError, WrongPasswordError

if TYPE_CHECKING:
    from strongroom.catalog import Catalog
    from strongroom.config import Config
    from strongroom.repository import KdfParams, Repository, Snapshot
    from strongroom.repository.locks import RepositoryLock


@dataclass
class App:
    repo_url: str | None = None
    config: str | None = None
    catalog: str | None = None
    json: bool = False
    quiet: bool = False
    verbose: int = 0
    progress: bool = True
    clock: Clock = field(default_factory=SystemClock)
    lock: RepositoryLock | None = None

    # --- output ---------------------------------------------------------------------

    def result(self, text: str) -> None:
        """A result line on stdout (suppressed with --json; use emit_json there)."""
        if not self.json:
            click.echo(text)

    def info(self, text: str) -> None:
        """A progress or status line on stderr."""
        if not self.quiet and not self.json:
            click.echo(text, err=True)

    def warn(self, text: str) -> None:
        if not self.json:
            click.echo(f"warning: {text}", err=True)

    def emit_json(self, doc: Any) -> None:
        click.echo(json.dumps(doc, default=_json_default))

    def json_line(self, kind: str, **fields: Any) -> None:
        if self.json:
            self.emit_json({"type": kind, **fields})

    @property
    def show_progress(self) -> bool:
        return self.progress and not self.quiet and not self.json and sys.stderr.isatty()

    # --- repository -----------------------------------------------------------------

    def require_repo_url(self) -> str:
        url = self.repo_url or os.environ.get("STRONGROOM_REPOSITORY")
        if not url:
            raise UsageError(
                "no repository given",
                hint="pass --repo PATH or set STRONGROOM_REPOSITORY",
            )
        return url

    def repository_target(self, *, confirm: bool = False) -> tuple[str, Callable[[], bytes]]:
        """The URL and password source for --repo: a configured repository's name (or
        URL) takes its password from the config; anything else is a URL or path (a
        password typed at a prompt is asked twice with ``confirm``)."""
        _, url, password = self.repository_named(confirm=confirm)
        return url, password

    def repository_named(
        self, *, confirm: bool = False
    ) -> tuple[str | None, str, Callable[[], bytes]]:
        """Like ``repository_target``, with the repository's name in the config (None
        when --repo is not a configured repository)."""
        given = self.require_repo_url()
        config = self.load_config_if_any()
        if config is not None:
            for name, spec in config.repositories.items():
                if given in (name, spec.url):
                    return name, spec.url, functools.partial(spec.password, os.environ)
        return None, given, functools.partial(self.password, confirm=confirm)

    def password(self, *, confirm: bool = False) -> bytes:
        """The repository password from the environment, a file, a command, or a prompt."""
        if (value := os.environ.get("STRONGROOM_PASSWORD")) is not None:
            return value.encode()
        if path := os.environ.get("STRONGROOM_PASSWORD_FILE"):
            try:
                return Path(path).read_bytes().rstrip(b"\r\n")
            except OSError as e:
                raise UsageError(f"cannot read STRONGROOM_PASSWORD_FILE: {e.strerror}") from None
        if command := os.environ.get("STRONGROOM_PASSWORD_COMMAND"):
            proc = subprocess.run(command, shell=True, capture_output=True, check=False)
            if proc.returncode != 0:
                raise WrongPasswordError(
                    f"STRONGROOM_PASSWORD_COMMAND failed with exit code {proc.returncode}"
                )
            return proc.stdout.rstrip(b"\r\n")
        if sys.stdin.isatty():
            first = getpass.getpass("repository password: ")
            if confirm and getpass.getpass("again: ") != first:
                raise UsageError("the passwords do not match")
            return first.encode()
        raise WrongPasswordError(
            "no password given",
            hint="set STRONGROOM_PASSWORD, STRONGROOM_PASSWORD_FILE or STRONGROOM_PASSWORD_COMMAND",
        )

    def worker_processes(self, *, restore: bool = False) -> int:
        """How many worker processes a backup or restore forks: for a backup one per
        core beyond the first, for a restore one per core (its parent restores files
        too: docs/performance.md, "A tenth host"). STRONGROOM_WORKER_PROCESSES
        overrides; 0 keeps it in one process, without a directory scanner process
        either. STRONGROOM_DIRECT_IO is checked here too, before any work starts
        (engine/direct.py)."""
        from strongroom.engine.direct import enabled

        enabled()
        given = os.environ.get("STRONGROOM_WORKER_PROCESSES", "").strip()
        if given:
            if not given.isdigit():
                raise UsageError(
                    f"STRONGROOM_WORKER_PROCESSES={given!r}: give a whole number (0 or more)"
                )
            return int(given)
        cores = os.cpu_count() or 1
        return cores if restore else max(0, cores - 1)

    def kdf(self) -> KdfParams:
        from strongroom.repository import TEST_KDF, KdfParams

        # For test suites only: makes key derivation instant and key files weak.
        if os.environ.get("STRONGROOM_INSECURE_TEST_KDF") == "1":
            return TEST_KDF
        return KdfParams()

    @contextmanager
    def open_repository(
        self, *, load_index: bool = True, lock: str | None = "shared", purpose: str = ""
    ) -> Iterator[Repository]:
        """Open, unlock and (by default) share-lock the repository for one command."""
        from strongroom.backend import open_backend
        from strongroom.repository import Repository
        from strongroom.repository.locks import RepositoryLock

        url, password = self.repository_target()
        backend = open_backend(url)
        try:
            repo = Repository.open(backend, password())
            holder = None
            if lock is not None:
                holder = RepositoryLock(
                    backend,
                    self.clock,
                    exclusive=lock == "exclusive",
                    hostname=socket.gethostname(),
                    purpose=purpose,
                ).acquire()
                holder.start_refreshing()
                self.lock = holder
            try:
                if load_index:
                    repo.load_index()
                    for err in repo.index_errors:
                        self.warn(f"{err} (run `strongroom check`)")
                yield repo
            finally:
                if holder is not None:
                    holder.release()
        finally:
            backend.close()

    def use_catalog(self) -> bool:
        """Browse the fleet's catalog rather than one repository: when no repository is
        named and a catalog is (a config file, --catalog or STRONGROOM_CATALOG)."""
        if self.repo_url or os.environ.get("STRONGROOM_REPOSITORY"):
            return False
        return bool(
            self.catalog
            or os.environ.get("STRONGROOM_CATALOG")
            or self.load_config_if_any() is not None
        )

    def load_config_if_any(self) -> Config | None:
        from strongroom.config import ConfigNotFound

        try:
            return self.load_config()
        except ConfigNotFound:
            return None

    def load_config(self) -> Config:
        """The fleet config: --config, STRONGROOM_CONFIG, ./strongroom.toml, /etc/strongroom."""
        from strongroom.config import find_config

        path = find_config(self.config, os.environ)  # before pydantic is even imported
        from strongroom.config import load_config

        return load_config(path)

    def state_dir(self) -> Path:
        from strongroom.jobs.run import default_state_dir

        return default_state_dir(os.environ)

    def catalog_url(self, config: Config | None) -> str:
        """--catalog, STRONGROOM_CATALOG, the config's [catalog], or SQLite in the state dir."""
        if self.catalog:
            return self.catalog
        if url := os.environ.get("STRONGROOM_CATALOG"):
            return url
        if config is not None and config.catalog is not None:
            return config.catalog.url.get_secret_value()
        return f"sqlite:///{self.state_dir() / 'catalog.db'}"

    def open_catalog(self, config: Config | None = None) -> Catalog:
        from strongroom.catalog import Catalog

        url = self.catalog_url(config)
        # The embedded SQLite default migrates itself; a shared PostgreSQL is migrated
        # on purpose, with `strongroom catalog migrate`.
        return Catalog.open(url, auto_migrate=url.startswith("sqlite:"), clock=self.clock)

    def cache_dir(self) -> Path:
        return Path(startup.cache_dir())

    # --- snapshots ------------------------------------------------------------------

    def select_snapshots(
        self,
        repo: Repository,
        client: str | None = None,
        job: str | None = None,
        tags: tuple[str, ...] = (),
    ) -> list[Snapshot]:
        def on_error(sid: str, err: IntegrityError) -> None:
            self.warn(f"snapshot {sid[:8]} is damaged and was skipped: {err}")

        return [
            snap
            for snap in repo.snapshots(on_error=on_error)
            if snapshot_matches(snap, client, job, tags)
        ]

    def resolve_snapshot(
        self,
        repo: Repository,
        spec: str,
        client: str | None = None,
        job: str | None = None,
        tags: tuple[str, ...] = (),
    ) -> Snapshot:
        if spec == "latest":
            candidates = self.select_snapshots(repo, client, job, tags)
            if not candidates:
                raise UsageError("no snapshot matches 'latest' with the given filters")
            return candidates[-1]
        spec = spec.lower()
        if len(spec) < 8 or any(c not in "0123456789abcdef" for c in spec):
            raise UsageError(f"{spec!r} is not a snapshot id: use 8+ hex digits or 'latest'")
        matches = [sid for sid in repo.snapshot_ids() if sid.startswith(spec)]
        if not matches:
            raise UsageError(f"no snapshot {spec!r}")
        if len(matches) > 1:
            raise UsageError(f"snapshot id {spec!r} is ambiguous: give more digits")
        return repo.load_snapshot(matches[0])

    def resolve_snapshots(
        self,
        repo: Repository,
        specs: tuple[str, ...],
        client: str | None = None,
        job: str | None = None,
        tags: tuple[str, ...] = (),
    ) -> list[Snapshot]:
        """``resolve_snapshot`` for each spec, every snapshot once, in the order given."""
        chosen: dict[str, Snapshot] = {}
        for spec in specs:
            snap = self.resolve_snapshot(repo, spec, client, job, tags)
            chosen.setdefault(snap.id, snap)
        return list(chosen.values())

    def choose_snapshots(
        self,
        repo: Repository,
        specs: tuple[str, ...],
        client: str | None = None,
        job: str | None = None,
        tags: tuple[str, ...] = (),
    ) -> list[Snapshot]:
        """The snapshots named by ``specs``, or with none every one the filters select."""
        if specs:
            return self.resolve_snapshots(repo, specs, client, job, tags)
        return self.select_snapshots(repo, client, job, tags)


def snapshot_matches(
    snap: Snapshot, client: str | None, job: str | None, tags: tuple[str, ...]
) -> bool:
    """Whether --client, --job and --tag (every tag given) select the snapshot."""
    if client and snap.client != client:
        return False
    if job and snap.job != job:
        return False
    return not tags or set(tags) <= set(snap.tags)


def format_size(n: int) -> str:
    """Bytes for a human: "512 B", "1.5 KiB", "110.5 MiB"."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def default_client() -> str:
    return socket.gethostname().split(".")[0] or "localhost"


def snapshot_json(snap: Snapshot) -> dict[str, Any]:
    """A snapshot in restic's shape, with strongroom's client and job."""
    return {
        "id": snap.id,
        "short_id": snap.id[:8],
        "time": snap.time_rfc3339,
        "tree": snap.tree.hex(),
        "paths": snap.paths,
        "hostname": snap.hostname,
        "username": snap.username,
        "client": snap.client,
        "job": snap.job,
        "tags": snap.tags,
        "program_version": snap.program_version,
        "summary": {k: getattr(snap.summary, k) for k in snap.summary.__struct_fields__},
        # What `run` checked before writing it: "marker sql-dump: met at TIME (...)".
        "prerequisites": snap.prerequisites,
    }


def _json_default(obj: object) -> object:
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "surrogateescape")
    raise TypeError(f"cannot serialise {type(obj).__name__}")


pass_app = click.make_pass_decorator(App)
