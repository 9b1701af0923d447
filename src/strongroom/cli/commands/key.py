"""`strongroom key add|list|remove|passwd`: repository keys."""

from __future__ import annotations

import getpass
import os
from datetime import UTC, datetime

import click

from strongroom.cli.context import App, default_client, pass_app
from strongroom.errors import UsageError


def _new_password(app: App, new_password_file: str | None) -> bytes:
    if new_password_file:
        try:
            with open(new_password_file, "rb") as f:
                return f.read().rstrip(b"\r\n")
        except OSError as e:
            raise UsageError(f"cannot read {new_password_file}: {e.strerror}") from None
    if env := os.environ.get("STRONGROOM_NEW_PASSWORD"):
        return env.encode()
    first = getpass.getpass("new password: ")
    if getpass.getpass("again: ") != first:
        raise UsageError("the passwords do not match")
    return first.encode()


@click.group("key")
def key_command() -> None:
    """Manage the repository's keys (passwords)."""


def _add(app: App, new_password_file: str | None) -> tuple[str, str]:
    with app.open_repository(load_index=False, lock=None) as repo:
        key_id = repo.add_key(
            _new_password(app, new_password_file),
            kdf=app.kdf(),
            created=datetime.fromtimestamp(app.clock.now_ns() / 1e9, UTC).isoformat(),
            hostname=default_client(),
            username=getpass.getuser(),
        )
        return key_id, repo.key_id


@key_command.command("add")
@click.option("--new-password-file", type=click.Path(), help="Read the new password here.")
@pass_app
def key_add(app: App, new_password_file: str | None) -> None:
    """Add a key with a new password."""
    key_id, _ = _add(app, new_password_file)
    if app.json:
        app.emit_json({"id": key_id})
    else:
        app.result(f"added key {key_id[:8]}")


@key_command.command("list")
@pass_app
def key_list(app: App) -> None:
    """List keys; * marks the one in use."""
    with app.open_repository(load_index=False, lock=None) as repo:
        keys = repo.list_keys()
    if app.json:
        app.emit_json(
            [
                {
                    "id": k.id,
                    "current": k.current,
                    "created": k.created,
                    "hostname": k.hostname,
                    "username": k.username,
                }
                for k in keys
            ]
        )
        return
    for k in keys:
        mark = "*" if k.current else " "
        app.result(
            f"{mark}{k.id[:8]}  {k.username:12} {k.hostname:16} {k.created}"
            + ("  DAMAGED" if k.damaged else "")
        )


@key_command.command("remove")
@click.argument("key_id")
@pass_app
def key_remove(app: App, key_id: str) -> None:
    """Remove a key (not the one in use, never the last)."""
    with app.open_repository(load_index=False, lock=None) as repo:
        full = repo.resolve_key(key_id)
        repo.remove_key(full)
    if app.json:
        app.emit_json({"removed": full})
    else:
        app.result(f"removed key {full[:8]}")


@key_command.command("passwd")
@click.option("--new-password-file", type=click.Path(), help="Read the new password here.")
@pass_app
def key_passwd(app: App, new_password_file: str | None) -> None:
    """Change the password: add a new key, then remove the one in use."""
    with app.open_repository(load_index=False, lock=None) as repo:
        new_id = repo.add_key(
            _new_password(app, new_password_file),
            kdf=app.kdf(),
            created=datetime.fromtimestamp(app.clock.now_ns() / 1e9, UTC).isoformat(),
            hostname=default_client(),
            username=getpass.getuser(),
        )
        old_id = repo.key_id
        repo.key_id = new_id  # the new key now opens it; the old one may go
        repo.remove_key(old_id)
    if app.json:
        app.emit_json({"id": new_id, "removed": old_id})
    else:
        app.result(f"password changed: key {old_id[:8]} replaced by {new_id[:8]}")
