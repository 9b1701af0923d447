"""The README's media story on real parts: the primary repository in S3 (rclone serve
s3), an off-site copy in another repository, retention in both, and prune."""

from __future__ import annotations

import json
from pathlib import Path

from tests.backend.conftest import S3Server
from tests.conftest import cli


def test_primary_in_s3_with_an_off_site_copy_retention_and_prune(
    aws_env: S3Server, tmp_path: Path
) -> None:
    bucket = aws_env.new_bucket()
    main = aws_env.url(bucket, "site-a")
    assert cli("--repo", main, "init").code == 0
    assert cli("--repo", str(tmp_path / "vault"), "init").code == 0
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{main}"\n'
        f'[repositories.vault]\nurl = "{tmp_path}/vault"\n'
        '[defaults]\nrepository = "main"\nretention = { last = 2 }\n'
        f'[clients.web1]\ntransport = "local"\nsources = ["{data}"]\n'
        'copies = [{ repository = "vault", retention = { last = 4 } }]\n'
    )
    for i in range(4):
        (data / f"file{i}").write_bytes(bytes([i]) * 300_000)
        r = cli("run", "web1", "--json")
        assert r.code == 0, r.stdout + r.stderr
    stored_before = sum(1 for k in aws_env.stored_keys(bucket) if "/data/" in k)
    # Two kept in S3, four in the vault; the catalog knows both.
    home = json.loads(cli("--repo", "main", "snapshots", "--json").stdout)
    vault = json.loads(cli("--repo", "vault", "snapshots", "--json").stdout)
    assert len(home) == 2 and len(vault) == 4
    # Prune in S3 with no writer active reclaims at once; everything still checks.
    r = cli("--repo", "main", "prune", "--json")
    assert r.code == 0, r.stdout + r.stderr
    assert cli("--repo", "main", "check", "--read-data").code == 0
    assert cli("--repo", "vault", "check", "--read-data").code == 0
    assert 0 < sum(1 for k in aws_env.stored_keys(bucket) if "/data/" in k) < stored_before
    # The oldest version lives only in the vault now, and restores from there.
    target = tmp_path / "restored"
    r = cli("--repo", "vault", "restore", vault[0]["id"], "--target", str(target))
    assert r.code == 0, r.stderr
    restored = target / str(data).lstrip("/")
    assert sorted(p.name for p in restored.iterdir()) == ["file0"]
    assert (restored / "file0").read_bytes() == bytes([0]) * 300_000
