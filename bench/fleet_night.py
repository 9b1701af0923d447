"""A simulated night: N small clients backed up through one director, over the agent.

Each client has about 5 MB: 90% "OS files" shared by every client, 10% its own. All
clients are reached the way SSH clients are (`ssh_command + host + agent_command`),
with a stand-in for ssh that starts the agent locally, so both sides run on this
machine: the director's own CPU is reported apart from the agents'.

    .venv/bin/python bench/fleet_night.py [--clients 500] [--parallel 16]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

SHARED_FILES = 45  # x 100 KB = 4.5 MB shared
OWN_FILES = 5  # x 100 KB = 0.5 MB own
FILE_SIZE = 100_000


def make_clients(root: Path, n: int) -> list[Path]:
    shared = random.Random(1)
    os_files = [shared.randbytes(FILE_SIZE) for _ in range(SHARED_FILES)]
    dirs = []
    for i in range(n):
        d = root / f"client{i:04d}"
        (d / "usr").mkdir(parents=True)
        (d / "home").mkdir()
        for j, data in enumerate(os_files):
            (d / "usr" / f"lib{j}.so").write_bytes(data)
        own = random.Random(1000 + i)
        for j in range(OWN_FILES):
            (d / "home" / f"doc{j}").write_bytes(own.randbytes(FILE_SIZE))
        dirs.append(d)
    return dirs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--parallel", type=int, default=16)
    parser.add_argument("--workdir", default="/tmp/strongroom-fleet-night")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "STRONGROOM_PASSWORD": "fleet-night",
           "STRONGROOM_STATE_DIR": str(work / "state"),
           "STRONGROOM_CACHE_DIR": str(work / "cache")}  # fmt: skip
    env.pop("STRONGROOM_INSECURE_TEST_KDF", None)
    sr = [sys.executable, "-m", "strongroom"]
    subprocess.run([*sr, "--repo", str(work / "repo"), "init"], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    clients = make_clients(work / "clients", args.clients)
    source_bytes = sum(f.stat().st_size for d in clients for f in d.rglob("*") if f.is_file())
    fake_ssh = ["sh", "-c", 'exec sh -c "$4"', "ssh"]
    # Preflight connects to each client's SSH port first: give it a port that answers.
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port = listener.getsockname()[1]

    def accept_forever() -> None:
        while True:
            conn, _ = listener.accept()
            conn.close()

    threading.Thread(target=accept_forever, daemon=True).start()
    agent = [sys.executable, "-m", "strongroom", "agent"]
    blocks = [
        f'[clients.{d.name}]\nhost = "127.0.0.1"\nport = {port}\n'
        f"ssh_command = {json.dumps(fake_ssh)}\n"
        f'agent_command = {json.dumps(agent)}\nsources = ["{d}"]\n'
        for d in clients
    ]
    (work / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{work / "repo"}"\n\n[defaults]\nrepository = "main"\n\n'
        + "\n".join(blocks)
    )
    # The director measures its own CPU (RUSAGE_SELF) apart from the agents it waits for.
    director = (
        "import json, resource, sys\n"
        "from strongroom.cli.main import run\n"
        "code = run(sys.argv[1:])\n"
        "me = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print(json.dumps({'type': 'director', 'exit_code': code,"
        " 'cpu_s': me.ru_utime + me.ru_stime, 'rss_mib': me.ru_maxrss / 1024}))\n"
    )
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", director, "--config", str(work / "strongroom.toml"), "--json",
         "run", "--all", "--parallel", str(args.parallel)],
        env=env, capture_output=True, text=True, cwd=work,
    )  # fmt: skip
    wall = time.monotonic() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    runs = [x for x in lines if x.get("type") == "summary"]
    me = next(x for x in lines if x.get("type") == "director")
    failed = [r for r in runs if r["exit_code"] != 0]
    stored = sum(f.stat().st_size for f in (work / "repo").rglob("*") if f.is_file())
    t0 = time.monotonic()
    find = subprocess.run(
        [*sr, "--config", str(work / "strongroom.toml"), "--json", "find", "doc3"],
        env=env, capture_output=True, text=True, cwd=work,
    )  # fmt: skip
    find_s = time.monotonic() - t0
    hits = len(json.loads(find.stdout)) if find.returncode == 0 else -1
    print(f"clients: {len(clients)}, parallel {args.parallel}, data {source_bytes / 1e6:.0f} MB")
    print(f"runs: {len(runs)} ({len(failed)} failed), exit {me['exit_code']}")
    print(f"wall: {wall:.1f} s ({len(runs) / wall:.1f} clients/s)")
    print(f"director CPU: {me['cpu_s']:.1f} s, peak RSS {me['rss_mib']:.0f} MiB")
    print(f"director + agents CPU: {children.ru_utime + children.ru_stime:.1f} s")
    print(
        f"repository: {stored / 1e6:.1f} MB; cross-client dedup ratio {source_bytes / stored:.1f}x"
    )
    print(
        f"find of one name across the fleet: {hits} hits in {find_s:.2f} s "
        "(including process start)"
    )
    if failed:
        print("first failure:", failed[0].get("message"), file=sys.stderr)
    return 0 if not failed and me["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
