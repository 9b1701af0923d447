"""Child processes for the reliability suite (run as a script, never imported by tests).

child.py backup --repo R --client C [--pack-size N] [--checkpoint-packs K]
                [--kill-at STEP] [--kill-nth N] PATH...
    A backup through the Archiver, SIGKILLing itself at the N-th time the archiver
    reaches STEP (pack-written, index-written, before-snapshot, snapshot-written).
    Uses the files cache the CLI would use, so the next CLI backup sees what it left.

child.py cli [--pack-size N] [--checkpoint-packs K] [--trace-workers FILE] -- ARGS...
    The real CLI (strongroom.cli.main.main) with smaller packs and index
    checkpoints, so a backup of a few MB passes through many states. With
    --trace-workers, each worker process appends a JSON line to FILE per batch it
    backed up and per failure it reported (see _trace_workers).

child.py nonces --forks F --ciphers C --blobs B
    Encrypt in this process and in F forked children; print every (salt, nonce)
    pair used, one "salt-hex nonce-hex" line each.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path


def _patch(pack_size: int | None, checkpoint_packs: int | None) -> None:
    import importlib

    import strongroom.repository.repository as repository_module

    if pack_size:
        repository_module.PACK_TARGET_SIZE = pack_size
    if checkpoint_packs:
        # The constant lives where the upload loop does (the archiver, or its sink).
        patched = []
        for name in ("strongroom.engine.sink", "strongroom.engine.archiver"):
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            if hasattr(module, "INDEX_CHECKPOINT_PACKS"):
                module.INDEX_CHECKPOINT_PACKS = checkpoint_packs
                patched.append(name)
        if not patched:
            raise SystemExit("child.py: INDEX_CHECKPOINT_PACKS not found; update _patch")


def cmd_backup(args: argparse.Namespace) -> int:
    _patch(args.pack_size, args.checkpoint_packs)
    from strongroom.backend import LocalBackend
    from strongroom.clock import SystemClock
    from strongroom.engine.archiver import Archiver, BackupRequest
    from strongroom.engine.files_cache import FilesCache
    from strongroom.repository import Repository

    seen = 0
    lock = threading.Lock()

    def on_step(step: str) -> None:
        nonlocal seen
        if step != args.kill_at:
            return
        with lock:
            seen += 1
            if seen == args.kill_nth:
                os.kill(os.getpid(), signal.SIGKILL)

    repo = Repository.open(LocalBackend(args.repo), os.environ["STRONGROOM_PASSWORD"].encode())
    repo.load_index()
    # The path `strongroom backup` uses, so the next CLI run reads what this one saved.
    key = hashlib.sha256(
        "\0".join(sorted(os.path.abspath(p) for p in args.paths)).encode()
    ).hexdigest()[:16]
    cache = FilesCache(
        Path(os.environ["STRONGROOM_CACHE_DIR"]) / repo.id / f"files-{args.client}-default-{key}"
    )
    archiver = Archiver(repo, SystemClock(), cache, on_step=on_step)
    result = archiver.backup(BackupRequest(paths=args.paths, client=args.client))
    print(result.snapshot.id)
    return 0


def _trace_workers(path: str) -> None:
    """Have worker processes say what they did: one JSON line appended to ``path`` per
    batch a worker backed up ({"op": "batch", "pid", "files", "warnings"}) and per
    error it ended with ({"op": "failed", "pid", "error"}). Only records: the batches
    and their outcomes are the worker's own. Patched before the workers are forked."""
    import json

    from strongroom.engine import archiver, workers

    try:
        read_files = archiver.Archiver.read_files
        serve_backup = workers._serve_backup
    except AttributeError as e:
        raise SystemExit(f"child.py: {e}; update _trace_workers") from None

    def record(entry: dict[str, object]) -> None:
        line = json.dumps({"pid": os.getpid(), **entry}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())  # one write: lines of processes never mix
        finally:
            os.close(fd)

    def traced_read_files(self, files):  # type: ignore[no-untyped-def]
        outcome = read_files(self, files)
        record(
            {
                "op": "batch",
                "files": [os.fsdecode(f[0]) for f in files],
                "warnings": [[os.fsdecode(p), m] for p, m in outcome["warnings"]],
            }
        )
        return outcome

    def traced_serve_backup(channel, setup, clock):  # type: ignore[no-untyped-def]
        try:
            serve_backup(channel, setup, clock)
        except BaseException as e:
            record({"op": "failed", "error": f"{type(e).__name__}: {e}"})
            raise

    archiver.Archiver.read_files = traced_read_files  # type: ignore[method-assign]
    workers._serve_backup = traced_serve_backup


def cmd_cli(args: argparse.Namespace) -> int:
    _patch(args.pack_size, args.checkpoint_packs)
    if args.trace_workers:
        _trace_workers(args.trace_workers)
    from strongroom.cli.main import main

    sys.argv = ["strongroom", *args.rest]
    main()
    return 0


def _encrypt_many(ciphers: int, blobs: int) -> list[str]:
    from strongroom.repository.crypto import (
        OBJECT_MAGIC,
        SALT_SIZE,
        MasterKey,
        PackCipher,
        seal,
    )

    key = MasterKey(b"k" * 32, b"i" * 32, 1)
    lines = []
    for _ in range(ciphers):
        cipher = PackCipher(key)
        for i in range(blobs):
            ct = cipher.encrypt(b"aad", b"x" * (i % 7))
            lines.append(f"{cipher.salt.hex()} {ct[:12].hex()}")
    for _ in range(ciphers):
        sealed = seal(key, b"snapshot", b"y")
        salt = sealed[len(OBJECT_MAGIC) : len(OBJECT_MAGIC) + SALT_SIZE]
        lines.append(f"{salt.hex()} {'00' * 12}")
    return lines


def cmd_nonces(args: argparse.Namespace) -> int:
    # Warm up in the parent first, so children inherit whatever state it has.
    lines = _encrypt_many(args.ciphers, args.blobs)
    with tempfile.TemporaryDirectory() as tmp:
        pids = []
        for n in range(args.forks):
            pid = os.fork()
            if pid == 0:
                try:
                    out = _encrypt_many(args.ciphers, args.blobs)
                    Path(tmp, f"child{n}").write_text("\n".join(out))
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            if status != 0:
                print(f"child {pid} failed: {status}", file=sys.stderr)
                return 1
        for n in range(args.forks):
            lines.extend(Path(tmp, f"child{n}").read_text().splitlines())
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("backup")
    b.add_argument("--repo", required=True)
    b.add_argument("--client", default="crash")
    b.add_argument("--pack-size", type=int)
    b.add_argument("--checkpoint-packs", type=int)
    b.add_argument("--kill-at")
    b.add_argument("--kill-nth", type=int, default=1)
    b.add_argument("paths", nargs="+")
    c = sub.add_parser("cli")
    c.add_argument("--pack-size", type=int)
    c.add_argument("--checkpoint-packs", type=int)
    c.add_argument("--trace-workers", metavar="FILE")
    c.add_argument("rest", nargs=argparse.REMAINDER)
    n = sub.add_parser("nonces")
    n.add_argument("--forks", type=int, default=8)
    n.add_argument("--ciphers", type=int, default=50)
    n.add_argument("--blobs", type=int, default=20)
    args = parser.parse_args()
    if args.command == "cli" and args.rest and args.rest[0] == "--":
        args.rest = args.rest[1:]
    return {"backup": cmd_backup, "cli": cmd_cli, "nonces": cmd_nonces}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
