"""Browsing: `ls`, `find`, `diff` and `dump`."""

from __future__ import annotations

import fnmatch
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import click

from strongroom.cli.context import App, pass_app
from strongroom.engine.fsmeta import display_path
from strongroom.engine.walk import find_node, walk
from strongroom.errors import UsageError
from strongroom.repository import DATA, Node, Repository
from strongroom.repository.tree import DIR, FILE


def node_json(path: bytes, node: Node) -> dict[str, Any]:
    return {
        "path": os.fsdecode(path),
        "name": os.fsdecode(node.name),
        "type": node.type,
        "size": node.size,
        "mode": node.mode,
        "uid": node.uid,
        "gid": node.gid,
        "user": node.user,
        "group": node.group,
        "mtime": _ns_to_rfc3339(node.mtime_ns),
        "links": node.links,
        **({"target": os.fsdecode(node.target)} if node.target is not None else {}),
    }


def _ns_to_rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _line(path: bytes, node: Node) -> str:
    kind = {
        "dir": "d",
        "symlink": "l",
        "fifo": "p",
        "chardev": "c",
        "blockdev": "b",
        "socket": "s",
    }.get(node.type, "-")
    when = datetime.fromtimestamp(node.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M")
    owner = f"{node.user or node.uid}/{node.group or node.gid}"
    text = f"{kind}{node.mode:04o} {owner:>16} {node.size:>12} {when}  {display_path(path)}"
    if node.target is not None:
        text += f" -> {display_path(node.target)}"
    return text


def _subtree(repo: Repository, tree: bytes, path: str | None) -> tuple[bytes, bytes]:
    if not path or path == "/":
        return b"", tree
    node = find_node(repo, tree, os.fsencode(path))
    if node is None:
        raise UsageError(f"{path}: not in this snapshot")
    if node.type != DIR or node.subtree is None:
        raise UsageError(f"{path}: not a directory")
    return os.fsencode(path.rstrip("/")), node.subtree


@click.command("ls")
@click.argument("snapshot")
@click.argument("path", required=False)
@click.option("--client", help="Narrow 'latest' to this client.")
@click.option("--recursive/--no-recursive", default=True, show_default=True)
@pass_app
def ls_command(
    app: App, snapshot: str, path: str | None, client: str | None, recursive: bool
) -> None:
    """List the files of a snapshot (below PATH)."""
    with app.open_repository(lock=None) as repo:
        snap = app.resolve_snapshot(repo, snapshot, client)
        prefix, tree = _subtree(repo, snap.tree, path)
        entries: Iterator[tuple[bytes, Node]] = walk(repo, tree, prefix)
        if not recursive:
            depth = prefix.count(b"/") + 1
            entries = ((p, n) for p, n in entries if p.count(b"/") == depth)
        if app.json:
            app.emit_json([node_json(p, n) for p, n in entries])
        else:
            for p, n in entries:
                app.result(_line(p, n))


@click.command("find")
@click.argument("pattern")
@click.option("--client", help="Only this client's snapshots.")
@click.option("--since", help="Only snapshots since this time (ISO 8601).")
@pass_app
def find_command(app: App, pattern: str, client: str | None, since: str | None) -> None:
    """Find files by name or path glob across snapshots (the catalog's path index when
    no --repo is given: the whole fleet, fast)."""
    from strongroom.cli.commands.backup import parse_time

    since_ns = parse_time(since) if since else 0
    if app.use_catalog():
        _find_in_catalog(app, pattern, client, since_ns)
        return
    pat = os.fsencode(pattern)
    matches: list[dict[str, Any]] = []
    with app.open_repository(lock=None) as repo:
        for snap in app.select_snapshots(repo, client):
            if snap.time_ns < since_ns:
                continue
            for path, node in walk(repo, snap.tree):
                target = path if b"/" in pat else node.name
                if fnmatch.fnmatchcase(target, pat):
                    matches.append(
                        {
                            "snapshot": snap.id,
                            "short_id": snap.id[:8],
                            "client": snap.client,
                            "time": snap.time_rfc3339,
                            **node_json(path, node),
                        }
                    )
                    if not app.json:
                        app.result(f"{snap.id[:8]} {snap.client:12} {_line(path, node)}")
    if app.json:
        app.emit_json(matches)
    elif not matches:
        app.info("no matches")


def _find_in_catalog(app: App, pattern: str, client: str | None, since_ns: int) -> None:
    catalog = app.open_catalog(app.load_config_if_any())
    try:
        since = datetime.fromtimestamp(since_ns / 1e9, UTC) if since_ns else None
        hits = catalog.find(pattern, client=client, since=since)
    finally:
        catalog.close()
    if app.json:
        app.emit_json(
            [
                {
                    "snapshot": h.snapshot_id,
                    "short_id": h.snapshot_id[:8],
                    "repository": h.repository,
                    "client": h.client,
                    "job": h.job,
                    "time": h.time.isoformat(),
                    "path": h.path,
                    "type": h.type,
                    "size": h.size,
                }
                for h in hits
            ]
        )
        return
    for h in hits:
        app.result(
            f"{h.snapshot_id[:8]} {h.client:12} {h.time:%Y-%m-%d %H:%M} {h.type:7} "
            f"{h.size:>12}  {h.path}"
        )
    if not hits:
        app.info("no matches")


@click.command("diff")
@click.argument("first")
@click.argument("second")
@pass_app
def diff_command(app: App, first: str, second: str) -> None:
    """Show what changed between two snapshots (+ added, - removed, M modified, T type)."""
    with app.open_repository(lock=None) as repo:
        a = app.resolve_snapshot(repo, first)
        b = app.resolve_snapshot(repo, second)
        old = {p: n for p, n in walk(repo, a.tree)}
        new = {p: n for p, n in walk(repo, b.tree)}
    changes: list[tuple[str, bytes]] = []
    for path in sorted(old.keys() | new.keys()):
        o, n = old.get(path), new.get(path)
        if o is None:
            changes.append(("+", path))
        elif n is None:
            changes.append(("-", path))
        elif o.type != n.type:
            changes.append(("T", path))
        elif _modified(o, n):
            changes.append(("M", path))
    if app.json:
        app.emit_json([{"change": c, "path": os.fsdecode(p)} for c, p in changes])
    else:
        for c, p in changes:
            app.result(f"{c}    {display_path(p)}")
        counts = {k: sum(1 for c, _ in changes if c == k) for k in "+-MT"}
        app.info(
            f"added {counts['+']}, removed {counts['-']}, modified {counts['M']}, "
            f"type changed {counts['T']}"
        )


def _modified(old: Node, new: Node) -> bool:
    def key(n: Node) -> tuple[object, ...]:
        return (n.content, n.mode, n.target, n.uid, n.gid, n.rdev, n.xattrs)

    return key(old) != key(new)


@click.command("dump")
@click.argument("snapshot")
@click.argument("path")
@click.option("--client", help="Narrow 'latest' to this client.")
@pass_app
def dump_command(app: App, snapshot: str, path: str, client: str | None) -> None:
    """Write one file of a snapshot to standard output."""
    with app.open_repository(lock=None) as repo:
        snap = app.resolve_snapshot(repo, snapshot, client)
        node = find_node(repo, snap.tree, os.fsencode(path))
        if node is None:
            raise UsageError(f"{path}: not in snapshot {snap.id[:8]}")
        if node.type != FILE:
            raise UsageError(f"{path}: is a {node.type}, not a file")
        out = sys.stdout.buffer
        for item in node.content:
            if isinstance(item, int):
                remaining = item
                while remaining:
                    step = min(remaining, 1 << 20)
                    out.write(bytes(step))
                    remaining -= step
            else:
                out.write(repo.load_blob(item, DATA))
        out.flush()
