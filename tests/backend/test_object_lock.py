"""Object Lock against a server that enforces it (moto): what `object_lock_days` asks
for is really kept, a credential that may delete cannot destroy history, and prune still
works (by delete markers). rclone ignores Object Lock, so test_s3.py only checks the
headers sent there."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import botocore.exceptions
import pytest

from tests.backend.conftest import ACCESS_KEY, SECRET_KEY, MotoServer
from tests.conftest import cli

KiB = 1024


@pytest.fixture
def moto(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> MotoServer:
    """Credentials in the environment (moto takes any), and no stray AWS settings."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_server


def _tree(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(rng.randbytes(600 * KiB))
    (root / "sub" / "small.txt").write_bytes(b"small %d\n" % seed)
    return root


def _versions(client: object, bucket: str) -> list[dict[str, object]]:
    answer = client.list_object_versions(Bucket=bucket)  # type: ignore[attr-defined]
    return list(answer.get("Versions", []))


def test_new_objects_are_retained_and_history_outlives_a_delete(
    moto: MotoServer, tmp_path: Path
) -> None:
    bucket = moto.new_bucket()
    url = f"s3://{bucket}/site?endpoint={moto.endpoint}&object_lock_days=2"
    s3 = moto.client()
    assert cli("--repo", url, "init").code == 0
    lock = s3.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"  # init created the bucket with it
    first = cli("--repo", url, "--json", "backup", "--client", "web", str(_tree(tmp_path / "a", 1)))
    assert first.code == 0, first.stderr
    second = cli("--repo", url, "backup", "--client", "web", str(_tree(tmp_path / "b", 2)))
    assert second.code == 0, second.stderr

    # Every object but the short-lived locks is retained for two days from now.
    now = datetime.now(UTC)
    versions = _versions(s3, bucket)
    kinds = {str(v["Key"]).split("/")[1] for v in versions}
    assert kinds >= {"config", "keys", "data", "index", "snapshots"}
    for v in versions:
        head = s3.head_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])
        if str(v["Key"]).startswith("site/locks/"):
            assert "ObjectLockMode" not in head
            continue
        assert head["ObjectLockMode"] == "GOVERNANCE", v["Key"]
        until = head["ObjectLockRetainUntilDate"]
        assert now + timedelta(days=2, minutes=-10) < until < now + timedelta(days=2, minutes=10)

    # Someone with the director's credentials cannot delete a retained version.
    pack = next(v for v in versions if "/data/" in str(v["Key"]))
    with pytest.raises(botocore.exceptions.ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key=pack["Key"], VersionId=pack["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

    # Forget and prune still work: deleted objects get delete markers, the repository
    # stays whole, and the forgotten data's locked versions are all still there.
    packs_before = {v["Key"] for v in versions if "/data/" in str(v["Key"])}
    r = cli("--repo", url, "forget", "--keep-last", "1", "--prune")
    assert r.code == 0, r.stdout + r.stderr
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="site/data/").get("Contents", [])
    assert {o["Key"] for o in listed} < packs_before  # some packs are gone from view
    kept_versions = {v["Key"] for v in _versions(s3, bucket) if "/data/" in str(v["Key"])}
    assert kept_versions == packs_before  # but no retained version was removed
    r = cli("--repo", url, "check", "--read-data")
    assert r.code == 0, r.stdout + r.stderr


def test_object_lock_on_a_bucket_without_it_is_refused_and_nothing_is_written(
    moto: MotoServer,
) -> None:
    bucket = moto.new_bucket()
    s3 = moto.client()
    s3.create_bucket(Bucket=bucket)  # made by someone else, without Object Lock
    r = cli("--repo", f"s3://{bucket}/site?endpoint={moto.endpoint}&object_lock_days=2", "init")
    assert r.code == 10, r.stderr
    assert "Object Lock" in r.stderr and "Traceback" not in r.stderr
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
