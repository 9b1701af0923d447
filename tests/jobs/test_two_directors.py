"""Two directors, one repository, one PostgreSQL catalog: they work side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PASSWORD, cli

CLIENTS = [f"node{i}" for i in range(6)]


def test_two_directors_share_a_repository_and_a_postgresql_catalog(
    tmp_path: Path, postgres_url: str
) -> None:
    repo = tmp_path / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    (tmp_path / "pass").write_text(PASSWORD)
    blocks = []
    for name in CLIENTS:
        src = tmp_path / "data" / name
        src.mkdir(parents=True)
        (src / "common.bin").write_bytes(b"fleet-wide data " * 50_000)
        (src / "own.txt").write_text(f"{name}\n" * 1000)
        blocks.append(f'[clients.{name}]\ntransport = "local"\nsources = ["{src}"]\n')
    config = tmp_path / "strongroom.toml"
    config.write_text(
        f'[catalog]\nurl = "{postgres_url}"\n\n'
        f'[repositories.main]\nurl = "{repo}"\npassword_file = "{tmp_path}/pass"\n\n'
        '[defaults]\nrepository = "main"\n\n' + "\n".join(blocks)
    )
    assert cli("--config", str(config), "catalog", "migrate").code == 0

    def director(n: int, clients: list[str]) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "STRONGROOM_STATE_DIR": str(tmp_path / f"director{n}" / "state"),
            "STRONGROOM_CACHE_DIR": str(tmp_path / f"director{n}" / "cache"),
        }
        env.pop("STRONGROOM_PASSWORD", None)
        return subprocess.Popen(
            [sys.executable, "-m", "strongroom", "--config", str(config), "--json", "run",
             *clients, "--parallel", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip

    a, b = director(1, CLIENTS[:3]), director(2, CLIENTS[3:])
    outputs = [p.communicate(timeout=300) for p in (a, b)]
    for p, (_out, err) in zip((a, b), outputs, strict=True):
        assert p.returncode == 0, err.decode()
    summaries = [json.loads(line) for out, _ in outputs for line in out.decode().splitlines()]
    assert sorted(s["client"] for s in summaries) == CLIENTS

    status = json.loads(cli("--config", str(config), "status", "--json").stdout)
    assert {c["client"]: c["last_run"]["status"] for c in status["clients"]} == dict.fromkeys(
        CLIENTS, "succeeded"
    )
    hits = json.loads(cli("--config", str(config), "find", "own.txt", "--json").stdout)
    assert sorted(h["client"] for h in hits) == CLIENTS
    r = cli("--repo", str(repo), "check", "--read-data")
    assert r.code == 0, r.stderr
    # The shared file is stored once for the whole fleet.
    stored = sum(f.stat().st_size for f in (repo / "data").rglob("*") if f.is_file())
    assert stored < 2 * 800_000
