"""`strongroom forget`: retention through the CLI, from flags or the config's jobs."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from strongroom.backend import LocalBackend
from strongroom.clock import SystemClock
from strongroom.repository.locks import RepositoryLock
from tests.conftest import PASSWORD, cli


def backup_at(
    repo: Path, src: Path, when: str, client: str = "web", job: str = "default", *tags: str
) -> str:
    tag_args = [arg for tag in tags for arg in ("--tag", tag)]
    args = ("--client", client, "--job", job, "--time", when, "--json", *tag_args)
    r = cli("--repo", str(repo), "backup", *args, str(src))
    assert r.code == 0, r.stderr
    return str(json.loads(r.stdout.splitlines()[-1])["snapshot_id"])


def snapshot_ids(repo: Path) -> set[str]:
    r = cli("--repo", str(repo), "snapshots", "--json")
    assert r.code == 0, r.stderr
    return {s["id"] for s in json.loads(r.stdout)}


def forget_json(*args: str) -> list[dict[str, Any]]:
    r = cli("forget", "--json", *args)
    assert r.code == 0, r.stdout + r.stderr
    groups: list[dict[str, Any]] = json.loads(r.stdout)
    return groups


def times(snapshots: list[dict[str, Any]]) -> list[str]:
    return [str(s["time"])[:19] for s in snapshots]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    (path / "file.txt").write_text("first\n")
    return path


def test_dry_run_prints_restics_shape_and_removes_nothing(repo_path: Path, src: Path) -> None:
    for day_hour in ("01T10", "01T11", "02T10", "08T10"):
        backup_at(repo_path, src, f"2024-01-{day_hour}:00:00Z")
    backup_at(repo_path, src, "2023-05-01T00:00:00Z", "db", "default", "keep")
    before = snapshot_ids(repo_path)

    groups = forget_json(
        "--repo", str(repo_path), "--dry-run", "--keep-daily", "2", "--keep-tag", "keep"
    )

    assert [(g["client"], g["job"], g["host"]) for g in groups] == [
        ("db", "default", "db"),
        ("web", "default", "web"),
    ]
    db, web = groups
    assert set(web) == {"tags", "host", "paths", "keep", "remove", "reasons"} | {
        "client",
        "job",
        "policy",
    }
    assert web["policy"] == "keep 2 daily snapshots and all snapshots with tags [[keep]]"
    assert times(web["keep"]) == ["2024-01-08T10:00:00", "2024-01-02T10:00:00"]
    assert times(web["remove"]) == ["2024-01-01T11:00:00", "2024-01-01T10:00:00"]
    assert [(r["matches"], r["counters"]) for r in web["reasons"]] == [
        (["daily snapshot"], {"daily": 1}),
        (["daily snapshot"], {}),
    ]
    assert [r["matches"] for r in db["reasons"]] == [["has tags [keep]", "daily snapshot"]]
    kept = web["keep"][0]
    assert {"id", "short_id", "time", "paths", "tags", "client", "job"} <= set(kept)
    assert web["reasons"][0]["snapshot"]["id"] == kept["id"]
    assert snapshot_ids(repo_path) == before


def test_forget_removes_the_rest_and_what_it_keeps_still_restores(
    repo_path: Path, src: Path, tmp_path: Path
) -> None:
    content: dict[str, str] = {}
    for month_day_hour in ("01-05T12", "01-20T12", "02-03T12", "02-10T12", "02-11T08", "02-11T20"):
        when = f"2024-{month_day_hour}:00:00Z"
        (src / "file.txt").write_text(f"as of {when}\n")
        (src / when[:10]).write_bytes(os.urandom(20_000))
        content[backup_at(repo_path, src, when)] = when

    r = cli("--repo", str(repo_path), "forget", "--keep-daily", "2", "--keep-monthly", "2")
    assert r.code == 0, r.stderr
    assert "removed 3 snapshot(s)" in r.stdout
    assert "monthly snapshot" in r.stdout and "remove 3 snapshot(s):" in r.stdout

    left = snapshot_ids(repo_path)
    assert sorted(content[i] for i in left) == [
        "2024-01-20T12:00:00Z",
        "2024-02-10T12:00:00Z",
        "2024-02-11T20:00:00Z",
    ]
    r = cli("--repo", str(repo_path), "check", "--read-data")
    assert r.code == 0, r.stdout + r.stderr
    for sid in left:
        target = tmp_path / f"restore-{sid[:8]}"
        r = cli("--repo", str(repo_path), "restore", sid, "--target", str(target))
        assert r.code == 0, r.stderr
        restored = target / str(src).lstrip("/")
        assert (restored / "file.txt").read_text() == f"as of {content[sid]}\n"
    # Applying the same policy again finds nothing more to remove.
    r = cli("--repo", str(repo_path), "forget", "--keep-daily", "2", "--keep-monthly", "2")
    assert r.code == 0 and "removed 0 snapshot(s)" in r.stdout
    assert snapshot_ids(repo_path) == left


def test_forget_drops_removed_snapshots_from_the_catalog(
    repo_path: Path, src: Path, tmp_path: Path
) -> None:
    catalog = f"sqlite:///{tmp_path / 'catalog.db'}"
    ids = [backup_at(repo_path, src, f"2024-03-0{d}T00:00:00Z") for d in (1, 2, 3)]
    r = cli("--repo", str(repo_path), "--catalog", catalog, "catalog", "rebuild")
    assert r.code == 0, r.stderr

    r = cli("--repo", str(repo_path), "--catalog", catalog, "forget", "--keep-last", "1")
    assert r.code == 0, r.stderr

    r = cli("--catalog", catalog, "snapshots", "--json")
    assert r.code == 0, r.stderr
    assert [s["id"] for s in json.loads(r.stdout)] == [ids[-1]]
    assert snapshot_ids(repo_path) == {ids[-1]}


@pytest.fixture
def fleet(tmp_path: Path, src: Path) -> Path:
    """A config: alpha keeps the last one ([defaults]), beta two days, beta's sql job the
    last three, and alpha's off-site copies in the vault keep the last two."""
    for name in ("main", "vault"):
        assert cli("--repo", str(tmp_path / name), "init").code == 0
    (tmp_path / "pass").write_text(PASSWORD + "\n")
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{tmp_path}/main"\npassword_file = "{tmp_path}/pass"\n'
        f'[repositories.vault]\nurl = "{tmp_path}/vault"\npassword_file = "{tmp_path}/pass"\n'
        '[defaults]\nrepository = "main"\nretention = { last = 1 }\n'
        f'[clients.alpha]\ntransport = "local"\nsources = ["{src}"]\n'
        'copies = [{ repository = "vault", retention = { last = 2 } }]\n'
        f'[clients.beta]\ntransport = "local"\nsources = ["{src}"]\n'
        "retention = { daily = 2 }\n"
        "[clients.beta.jobs.sql]\nretention = { last = 3 }\n"
    )
    return tmp_path


def test_without_keep_options_each_job_uses_its_retention_from_the_config(
    fleet: Path, src: Path
) -> None:
    main, vault = fleet / "main", fleet / "vault"
    for day in range(1, 5):
        when = f"2024-04-0{day}T01:00:00Z"
        for client, job in ("alpha", "default"), ("beta", "default"), ("beta", "sql"):
            backup_at(main, src, when, client, job)
        backup_at(main, src, when, "stranger")
        backup_at(vault, src, when, "alpha")

    groups = {(g["client"], g["job"]): g for g in forget_json("--repo", "main", "--dry-run")}
    assert {key: (g["policy"], len(g["keep"]), len(g["remove"])) for key, g in groups.items()} == {
        ("alpha", "default"): ("keep 1 latest snapshots", 1, 3),
        ("beta", "default"): ("keep 2 daily snapshots", 2, 2),
        ("beta", "sql"): ("keep 3 latest snapshots", 3, 1),
        ("stranger", "default"): (None, 4, 0),
    }
    stranger = groups["stranger", "default"]["reasons"]
    assert [r["matches"] for r in stranger] == [["no policy"]] * 4

    # The vault holds alpha's copies, kept by the copy's retention; given by its URL.
    (alpha,) = forget_json("--repo", str(vault), "--dry-run")
    assert (alpha["client"], alpha["policy"]) == ("alpha", "keep 2 latest snapshots")
    assert times(alpha["keep"]) == ["2024-04-04T01:00:00", "2024-04-03T01:00:00"]

    # Flags, when given, replace the config's policies for every job.
    groups_by_flag = forget_json("--repo", "main", "--dry-run", "--keep-last", "2")
    assert {g["policy"] for g in groups_by_flag} == {"keep 2 latest snapshots"}

    r = cli("--repo", "main", "forget", "--client", "beta")
    assert r.code == 0, r.stderr
    left = cli("--repo", "main", "snapshots", "--client", "beta", "--json")
    assert sorted((s["job"], s["time"][:10]) for s in json.loads(left.stdout)) == [
        ("default", "2024-04-03"),
        ("default", "2024-04-04"),
        ("sql", "2024-04-02"),
        ("sql", "2024-04-03"),
        ("sql", "2024-04-04"),
    ]


def test_a_repository_no_job_has_a_policy_for_is_a_usage_error(fleet: Path, src: Path) -> None:
    other = fleet / "other"
    assert cli("--repo", str(other), "init").code == 0
    backup_at(other, src, "2024-01-01T00:00:00Z", "alpha")
    r = cli("--repo", str(other), "forget")
    assert r.code == 2
    assert "no job" in r.stderr and "retention" in r.stderr


def test_config_policies_need_client_and_job_in_group_by(fleet: Path, src: Path) -> None:
    """The config's policies are per job: grouping by anything coarser is refused (and
    with no config at all, the error says there is no policy: the case above)."""
    main = fleet / "main"
    ids = {backup_at(main, src, f"2024-04-0{day}T01:00:00Z", "alpha") for day in (1, 2)}
    for group_by in ("paths", "client", "job,tags", ""):
        r = cli("--repo", "main", "forget", "--group-by", group_by)
        assert r.code == 2, r.stdout + r.stderr
        assert "must include client and job" in r.stderr
    assert snapshot_ids(main) == ids
    r = cli("--repo", "main", "forget", "--group-by", "client,job,paths")
    assert r.code == 0, r.stderr
    assert len(snapshot_ids(main)) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no retention policy"),
        (("--keep-daily", "0"), "keep nothing"),
        (("--keep-last", "-2"), "negative counts"),
        (("--keep-last", "many"), "not a count"),
        (("--keep-within", "3w"), "invalid duration"),
        (("--unsafe-allow-remove-all",), "needs --client"),
        (("--keep-last", "1", "--group-by", "client,host2"), "cannot group by host2"),
        (("--group-by", "paths"), "no retention policy"),
        (("latest", "--group-by", "paths"), "not to snapshots named by id"),
    ],
)
def test_usage_errors_exit_2_and_remove_nothing(
    repo_path: Path, src: Path, args: tuple[str, ...], message: str
) -> None:
    ids = {backup_at(repo_path, src, f"2024-01-0{d}T00:00:00Z") for d in (1, 2)}
    r = cli("--repo", str(repo_path), "forget", *args)
    assert r.code == 2, r.stdout + r.stderr
    assert message in r.stderr
    assert snapshot_ids(repo_path) == ids


def test_unlimited_counts_are_spelled_as_in_restic(repo_path: Path, src: Path) -> None:
    for day_hour in ("01T01", "01T02", "02T01", "03T01"):
        backup_at(repo_path, src, f"2024-01-{day_hour}:00:00Z")
    for spelling in ("unlimited", "-1"):
        (web,) = forget_json("--repo", str(repo_path), "--dry-run", "--keep-daily", spelling)
        assert web["policy"] == "keep all daily snapshots"
        # Every day's newest, and the oldest snapshot while counts are left.
        assert [r["matches"] for r in web["reasons"]] == [
            ["daily snapshot"],
            ["daily snapshot"],
            ["daily snapshot"],
            ["oldest daily snapshot"],
        ]
        assert all(r["counters"] == {"daily": -1} for r in web["reasons"])


def test_unsafe_allow_remove_all_removes_only_the_snapshots_selected(
    repo_path: Path, src: Path
) -> None:
    keep = backup_at(repo_path, src, "2024-01-01T00:00:00Z", "web")
    backup_at(repo_path, src, "2024-01-01T00:00:00Z", "db")
    backup_at(repo_path, src, "2024-01-02T00:00:00Z", "db")
    r = cli("--repo", str(repo_path), "forget", "--client", "db", "--unsafe-allow-remove-all")
    assert r.code == 0, r.stderr
    assert "removed 2 snapshot(s)" in r.stdout
    assert snapshot_ids(repo_path) == {keep}


def stored_bytes(repo: Path) -> int:
    return sum(f.stat().st_size for f in (repo / "data").rglob("*") if f.is_file())


def test_prune_runs_after_forget_or_is_refused_when_there_is_none(
    repo_path: Path, src: Path
) -> None:
    (src / "only-in-the-first").write_bytes(os.urandom(300_000))
    first = backup_at(repo_path, src, "2024-01-01T00:00:00Z")
    (src / "only-in-the-first").unlink()
    second = backup_at(repo_path, src, "2024-01-02T00:00:00Z")
    before = stored_bytes(repo_path)
    forget = ("--repo", str(repo_path), "forget", "--keep-last", "1", "--prune")
    if importlib.util.find_spec("strongroom.cli.commands.prune") is None:
        r = cli(*forget)
        assert r.code == 2 and "prune is not available" in r.stderr
        assert snapshot_ids(repo_path) == {first, second}
        return
    r = cli(*forget, "--dry-run")
    assert r.code == 0, r.stderr
    assert snapshot_ids(repo_path) == {first, second} and stored_bytes(repo_path) == before
    r = cli(*forget)
    assert r.code == 0, r.stderr
    assert snapshot_ids(repo_path) == {second}
    assert stored_bytes(repo_path) < before - 250_000  # the first one's data is gone
    assert cli("--repo", str(repo_path), "check", "--read-data").code == 0


def test_forget_waits_for_no_one_but_an_exclusive_lock(repo_path: Path, src: Path) -> None:
    ids = {backup_at(repo_path, src, f"2024-01-0{d}T00:00:00Z") for d in (1, 2)}
    backend = LocalBackend(repo_path)
    exclusive = RepositoryLock(
        backend, SystemClock(), exclusive=True, hostname=socket.gethostname(), purpose="prune"
    )
    with exclusive:
        r = cli("--repo", str(repo_path), "forget", "--keep-last", "1")
        assert r.code == 11, r.stderr
        assert snapshot_ids(repo_path) == ids
        # A dry run only reads.
        assert cli("--repo", str(repo_path), "forget", "--keep-last", "1", "--dry-run").code == 0
    shared = RepositoryLock(
        backend, SystemClock(), exclusive=False, hostname=socket.gethostname(), purpose="backup"
    )
    with shared:  # a backup running meanwhile is no obstacle
        r = cli("--repo", str(repo_path), "forget", "--keep-last", "1")
        assert r.code == 0, r.stderr
    assert len(snapshot_ids(repo_path)) == 1
    assert not any((repo_path / "locks").iterdir())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (needs root; under CI this test must run)."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("mounting a tmpfs needs root, and under CI this test must run")
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_forget_works_on_a_full_disk(small_disk: Path, src: Path) -> None:
    repo = small_disk / "repo"
    assert cli("--repo", str(repo), "init").code == 0
    ids = [backup_at(repo, src, f"2024-01-0{d}T00:00:00Z") for d in (1, 2, 3)]
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\xaa" * size)
            except OSError:
                pass  # full at this size: go on with a smaller one, to the last byte
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        (small_disk / "probe").write_bytes(b"x" * 4096)

    r = cli("--repo", str(repo), "forget", "--keep-last", "1")
    assert r.code == 0, r.stderr
    assert "full" in r.stderr
    assert snapshot_ids(repo) == {ids[-1]}

    filler.unlink()
    assert cli("--repo", str(repo), "check", "--read-data").code == 0


def test_forget_named_snapshots_removes_exactly_those(repo_path: Path, src: Path) -> None:
    first = backup_at(repo_path, src, "2024-01-01T10:00:00Z")
    second = backup_at(repo_path, src, "2024-01-02T10:00:00Z")
    third = backup_at(repo_path, src, "2024-01-03T10:00:00Z")
    other = backup_at(repo_path, src, "2024-01-04T10:00:00Z", "db")

    groups = forget_json("--repo", str(repo_path), first[:8], second, first)

    assert [(g["client"], g["job"], g["policy"]) for g in groups] == [("web", "default", None)]
    assert [s["id"] for s in groups[0]["remove"]] == [second, first]
    assert groups[0]["keep"] == []
    assert snapshot_ids(repo_path) == {third, other}
    r = cli("--repo", str(repo_path), "restore", third[:8], "--target", str(src.parent / "out"))
    assert r.code == 0, r.stderr

    r = cli("--repo", str(repo_path), "forget", third)
    assert r.code == 0, r.stderr
    assert "the snapshots named" in r.stdout
    assert "removed 1 snapshot(s)" in r.stdout
    assert snapshot_ids(repo_path) == {other}


def test_forget_latest_of_a_client_and_dry_run(repo_path: Path, src: Path) -> None:
    web = backup_at(repo_path, src, "2024-01-01T10:00:00Z")
    db_old = backup_at(repo_path, src, "2024-01-01T10:00:00Z", "db")
    db_new = backup_at(repo_path, src, "2024-01-02T10:00:00Z", "db")

    groups = forget_json("--repo", str(repo_path), "--dry-run", "--client", "db", "latest")
    assert [s["id"] for s in groups[0]["remove"]] == [db_new]
    assert snapshot_ids(repo_path) == {web, db_old, db_new}

    forget_json("--repo", str(repo_path), "--client", "db", "latest")
    assert snapshot_ids(repo_path) == {web, db_old}


@pytest.mark.parametrize(
    "extra",
    [
        ["0123456789abcdef"],  # no such snapshot
        ["12"],  # not an id
        ["--keep-last", "1"],  # ids and a policy
        ["--client", "db"],  # the id is web's
        ["--tag", "nightly"],  # the id lacks the tag
    ],
)
def test_forget_named_snapshots_removes_nothing_when_any_is_wrong(
    repo_path: Path, src: Path, extra: list[str]
) -> None:
    first = backup_at(repo_path, src, "2024-01-01T10:00:00Z")
    second = backup_at(repo_path, src, "2024-01-02T10:00:00Z")

    r = cli("--repo", str(repo_path), "forget", first, *extra)

    assert r.code == 2, r.stdout + r.stderr
    assert snapshot_ids(repo_path) == {first, second}


def test_keep_within_a_period_keeps_the_newest_of_each_period_in_the_span(
    repo_path: Path, src: Path
) -> None:
    for when in ("01T10", "01T11", "02T10", "02T11", "05T10"):
        backup_at(repo_path, src, f"2024-01-{when}:00:00Z")

    (web,) = forget_json("--repo", str(repo_path), "--dry-run", "--keep-within-daily", "4d")

    assert web["policy"] == "keep the newest of each day within 4d"
    # 4 days before the newest is 1 January 10:00; a snapshot must be newer than that.
    assert times(web["keep"]) == [
        "2024-01-05T10:00:00",
        "2024-01-02T11:00:00",
        "2024-01-01T11:00:00",
    ]
    assert times(web["remove"]) == ["2024-01-02T10:00:00", "2024-01-01T10:00:00"]
    assert [r["matches"] for r in web["reasons"]] == [["daily within 4d"]] * 3


def test_group_by_paths_tags_or_nothing_judges_each_group_on_its_own(
    repo_path: Path, tmp_path: Path
) -> None:
    """One client and job backing up two sets of paths, with and without a tag:
    --group-by decides what "the last snapshot" means; the JSON says what was grouped
    by (restic's shape: a field not grouped by is null)."""
    etc, srv = tmp_path / "etc", tmp_path / "srv"
    for path in (etc, srv):
        path.mkdir()
        (path / "f").write_text(path.name)
    ids = {
        "etc1": backup_at(repo_path, etc, "2024-01-01T00:00:00Z"),
        "srv1": backup_at(repo_path, srv, "2024-01-02T00:00:00Z"),
        "etc2": backup_at(repo_path, etc, "2024-01-03T00:00:00Z", "web", "default", "x"),
        "srv2": backup_at(repo_path, srv, "2024-01-04T00:00:00Z", "web", "default", "x"),
    }
    name = {v: k for k, v in ids.items()}
    base = ("--repo", str(repo_path), "--dry-run", "--keep-last", "1")

    def kept(groups: list[dict[str, Any]]) -> list[list[str]]:
        return [sorted(name[s["id"]] for s in g["keep"]) for g in groups]

    (web,) = forget_json(*base)  # client and job: one group
    assert kept([web]) == [["srv2"]]
    by_paths = forget_json(*base, "--group-by", "paths")
    assert [g["paths"] for g in by_paths] == [[str(etc)], [str(srv)]]
    assert all(g["host"] is None and g["job"] is None and g["tags"] is None for g in by_paths)
    assert kept(by_paths) == [["etc2"], ["srv2"]]
    by_tags = forget_json(*base, "--group-by", "host,tags")
    assert [(g["host"], g["tags"]) for g in by_tags] == [("web", []), ("web", ["x"])]
    assert kept(by_tags) == [["srv1"], ["srv2"]]
    everything = forget_json(*base, "--group-by", "paths,tags,client,job")
    assert kept(everything) == [["etc1"], ["etc2"], ["srv1"], ["srv2"]]
    (one,) = forget_json(*base, "--group-by", "")
    assert kept([one]) == [["srv2"]] and one["client"] is None

    r = cli(*base[:2], "forget", *base[2:], "--group-by", "paths")
    assert r.code == 0 and f"paths {etc}: keep 1 latest snapshots" in r.stdout, r.stdout
    r = cli("--repo", str(repo_path), "forget", "--keep-last", "1", "--group-by", "paths")
    assert r.code == 0, r.stderr
    assert snapshot_ids(repo_path) == {ids["etc2"], ids["srv2"]}
