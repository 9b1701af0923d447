"""`strongroom media`: export to volumes, keep track of them, rebuild a repository."""

from __future__ import annotations

import filecmp
import io
import json
import os
import shutil
import subprocess
import tarfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strongroom.engine.volumes import LABEL_MEMBER, RECORD
from tests.conftest import Result, cli, cli_subprocess

MiB = 1024 * 1024


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary_of(r: Result) -> dict[str, object]:
    assert r.code == 0, r.stdout + r.stderr
    lines = json_lines(r.stdout)
    assert lines[-1]["type"] == "summary"
    return lines[-1]


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


def backup(repo: Path, client: str, path: Path, days_ago: float) -> str:
    r = cli("--repo", str(repo), "--json", "backup", "--client", client,
            "--time", ago(days_ago), str(path))  # fmt: skip
    return str(summary_of(r)["snapshot_id"])


def make_tree(root: Path, size: int) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "data.bin").write_bytes(os.urandom(size))
    (root / "sub" / "note.txt").write_text(f"notes of {root.name}\n")
    os.symlink("sub/note.txt", root / "link")
    return root


def assert_same_tree(left: Path, right: Path) -> None:
    cmp = filecmp.dircmp(left, right)
    assert not cmp.left_only and not cmp.right_only and not cmp.funny_files
    _, mismatch, errors = filecmp.cmpfiles(left, right, cmp.common_files, shallow=False)
    assert not mismatch and not errors
    for sub in cmp.common_dirs:
        assert_same_tree(left / sub, right / sub)


@pytest.fixture
def week(repo_path: Path, tmp_path: Path) -> dict[str, object]:
    """A repository with an old snapshot (ten days) and two of the last week."""
    old = make_tree(tmp_path / "old", 2 * MiB)
    web = make_tree(tmp_path / "web", 3 * MiB)
    db = make_tree(tmp_path / "db", 3 * MiB)
    return {
        "old": backup(repo_path, "web", old, 10),
        "web": backup(repo_path, "web", web, 3),
        "db": backup(repo_path, "db", db, 1),
        "trees": {"web": web, "db": db},
    }


def export(repo: Path, *args: str) -> Result:
    return cli("--repo", str(repo), "--json", "media", "export", *args)


def volumes_of(r: Result) -> list[dict[str, object]]:
    vols = summary_of(r)["volumes"]
    assert isinstance(vols, list)
    return vols


# --- the whole workflow ---------------------------------------------------------------


def test_export_last_week_move_off_site_lose_the_repository_import_and_restore(
    repo_path: Path, week: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / "volumes"
    out.mkdir()
    r = export(repo_path, "--since", "last week", "--to", str(out), "--volume-size", "4MiB",
               "--expires", "30d", "--label", "WEEK01")  # fmt: skip
    s = summary_of(r)
    assert s["snapshots"] == [week["web"], week["db"]]  # the old one is left out
    vols = volumes_of(r)
    assert len(vols) == 2 and vols[0]["label"] == "WEEK01"
    assert [v["status"] for v in vols] == ["full", "exported"]
    for v in vols:
        path = Path(str(v["path"]))
        assert path.parent == out and path.name == f"{v['label']}.vol"
        assert path.stat().st_size == v["bytes"] and path.stat().st_size <= 4 * MiB
        assert path.stat().st_size % RECORD == 0
    first, second = (str(v["label"]) for v in vols)

    r = cli("--json", "media", "move", first, "--to", "offsite")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)[0]["location"] == "offsite"

    r = cli("--json", "media", "due")
    assert r.code == 0, r.stderr
    due = json.loads(r.stdout)
    assert [v["label"] for v in due["send_offsite"]] == [second]
    assert due["recyclable"] == []
    listed = {v["label"]: v for v in json.loads(cli("--json", "media", "list").stdout)}
    assert listed[first]["location"] == "offsite" and listed[second]["location"] == "onsite"
    assert listed[first]["snapshots"] == [week["web"], week["db"]]
    assert listed[first]["set_id"] == s["set_id"] == listed[second]["set_id"]
    assert listed[first]["expires_at"] is not None

    shutil.rmtree(repo_path)  # the original is gone: only the volumes are left
    rebuilt = tmp_path / "rebuilt"
    r = cli("--repo", str(rebuilt), "--json", "media", "import",
            str(out / f"{second}.vol"), str(out / f"{first}.vol"))  # fmt: skip
    s = summary_of(r)
    assert s["created"] is True and sorted(s["snapshots_imported"]) == sorted(  # type: ignore[type-var]
        [week["web"], week["db"]]
    )
    assert s["volumes"] == [first, second]  # read in set order whatever the order given

    r = cli("--repo", str(rebuilt), "check", "--read-data")
    assert r.code == 0, r.stdout + r.stderr
    assert "note:" not in r.stderr  # its index names exactly the packs it has
    snaps = json.loads(cli("--repo", str(rebuilt), "--json", "snapshots").stdout)
    assert [x["id"] for x in snaps] == [week["web"], week["db"]]
    trees = week["trees"]
    assert isinstance(trees, dict)
    for client in ("web", "db"):
        target = tmp_path / f"restored-{client}"
        r = cli("--repo", str(rebuilt), "restore", str(week[client]), "--target", str(target))
        assert r.code == 0, r.stderr
        assert_same_tree(trees[client], target / trees[client].relative_to("/"))


def test_a_volume_is_a_plain_tar_archive_and_tar_alone_rebuilds_the_repository(
    repo_path: Path, week: dict[str, object], tmp_path: Path
) -> None:
    out = tmp_path / "volumes"
    out.mkdir()
    r = export(repo_path, "--to", str(out), "--volume-size", "3MiB", "--expires", "1d")
    paths = [Path(str(v["path"])) for v in volumes_of(r)]
    assert len(paths) >= 3

    listed: dict[Path, list[str]] = {}
    for path in paths:
        with tarfile.open(path) as tar:  # random access: a plain archive
            names = tar.getnames()
            assert names[0] == LABEL_MEMBER
            label = json.loads(tar.extractfile(LABEL_MEMBER).read())  # type: ignore[union-attr]
            assert label["volume_id"] and label["set_id"] == summary_of(r)["set_id"]
            assert label["repository_id"] and label["created"].endswith("Z")
            assert label["labels"][label["sequence"] - 1] == label["label"]
            assert [m["member"] for m in label["members"]] == names[1:]
            listed[path] = names
    assert any(".part" in m for names in listed.values() for m in names)  # a split pack

    if shutil.which("tar") is None:
        pytest.skip("no tar program here")
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    for path in paths:
        listing = subprocess.run(["tar", "-tf", str(path)], capture_output=True, check=False)
        assert listing.returncode == 0 and listing.stderr == b"", listing.stderr
        assert listing.stdout.decode().split() == listed[path]
        subprocess.run(["tar", "-xf", str(path), "-C", str(extracted)], check=True)
    # Join the parts, drop the label: what is left is a repository.
    for first in sorted(extracted.rglob("*.part001")):
        whole = first.with_name(first.name.removesuffix(".part001"))
        parts = sorted(whole.parent.glob(whole.name + ".part*"))
        whole.write_bytes(b"".join(p.read_bytes() for p in parts))
        for p in parts:
            p.unlink()
    (extracted / LABEL_MEMBER).unlink()
    r = cli("--repo", str(extracted), "check", "--read-data")
    assert r.code == 0, r.stdout + r.stderr


# --- sequential outputs: no seeks -----------------------------------------------------


def read_fifo(path: Path, into: list[bytes]) -> threading.Thread:
    def reader() -> None:
        with open(path, "rb") as f:
            into.append(f.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


def test_export_to_a_fifo_and_import_from_one(
    repo_path: Path, week: dict[str, object], tmp_path: Path
) -> None:
    """A FIFO cannot seek: writing (and reading) one proves the volumes are sequential."""
    fifo = tmp_path / "tape"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = read_fifo(fifo, got)
    r = export(repo_path, str(week["web"]), "--to", str(fifo), "--volume-size", "16MiB",
               "--expires", "7d", "--label", "FIFO1")  # fmt: skip
    reader.join(10)
    (vol,) = volumes_of(r)
    assert vol["path"] == str(fifo) and len(got[0]) == vol["bytes"]
    with tarfile.open(fileobj=io.BytesIO(got[0]), mode="r|") as tar:
        assert next(iter(tar)).name == LABEL_MEMBER

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(got[0])

    feeder = threading.Thread(target=writer, daemon=True)
    feeder.start()
    rebuilt = tmp_path / "rebuilt"
    s = summary_of(cli("--repo", str(rebuilt), "--json", "media", "import", str(fifo)))
    feeder.join(10)
    assert s["snapshots_imported"] == [week["web"]]
    assert cli("--repo", str(rebuilt), "check", "--read-data").code == 0


def test_export_to_stdout_through_a_pipe(
    repo_path: Path, week: dict[str, object], tmp_path: Path
) -> None:
    proc = cli_subprocess(
        ["--repo", str(repo_path), "media", "export", str(week["db"]), "--stdout",
         "--volume-size", "16MiB", "--expires", "7d"]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) % RECORD == 0 and b"set " in proc.stderr
    with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r|") as tar:
        names = [m.name for m in tar]
    assert names[0] == LABEL_MEMBER and f"snapshots/{week['db']}" in names
    volume = tmp_path / "db.vol"
    volume.write_bytes(proc.stdout)
    rebuilt = tmp_path / "rebuilt"
    assert summary_of(cli("--repo", str(rebuilt), "--json", "media", "import", str(volume)))
    assert cli("--repo", str(rebuilt), "check", "--read-data").code == 0


def test_several_volumes_need_a_directory_or_a_change_command(
    repo_path: Path, week: dict[str, object], tmp_path: Path
) -> None:
    r = cli("--repo", str(repo_path), "media", "export", "--stdout", "--volume-size", "2MiB",
            "--expires", "7d")  # fmt: skip
    assert r.code == 2 and "stdout holds one" in r.stderr and r.stdout_bytes == b""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = cli("--repo", str(repo_path), "media", "export", "--to", str(fifo),
            "--volume-size", "2MiB", "--expires", "7d")  # fmt: skip
    assert r.code == 2 and "--change-command" in r.stderr

    # A character device takes one volume after another, a command loading each.
    log = tmp_path / "changes.log"
    change = f"sh -c 'echo $STRONGROOM_VOLUME_LABEL $STRONGROOM_VOLUME_SEQUENCE >> {log}'"
    r = export(repo_path, str(week["web"]), "--to", "/dev/null", "--volume-size", "1MiB",
               "--expires", "7d", "--label", "T1", "--label", "T2", "--label", "T3",
               "--label", "T4", "--change-command", change)  # fmt: skip
    vols = volumes_of(r)
    assert len(vols) >= 3
    expected = [f"{v['label']} {v['sequence']}" for v in vols[1:]]
    assert log.read_text().split("\n")[:-1] == expected


# --- damage ---------------------------------------------------------------------------


@pytest.fixture
def exported(repo_path: Path, week: dict[str, object], tmp_path: Path) -> list[Path]:
    out = tmp_path / "volumes"
    out.mkdir()
    r = export(repo_path, "--since", "last week", "--to", str(out), "--volume-size", "4MiB",
               "--expires", "30d")  # fmt: skip
    return [Path(str(v["path"])) for v in volumes_of(r)]


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    biggest = max(members, key=lambda m: m.size)
    if how == "half":
        del data[len(data) // 2 :]
    elif how == "last-member":  # cut cleanly before the last member: still a tar
        del data[members[-1].offset :]
    elif how == "mid-header":
        del data[members[-1].offset + 100 :]
    elif how == "data-bit":
        data[biggest.offset_data + biggest.size // 2] ^= 0x04
    elif how == "header-bit":
        data[members[2].offset + 10] ^= 0x01  # a member's name: its header checksum fails
    elif how == "label-bit":
        data[members[0].offset_data + 3] ^= 0x20
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how", ["half", "last-member", "mid-header", "data-bit", "header-bit", "label-bit"]
)
def test_a_truncated_or_corrupted_volume_is_exit_13(
    exported: list[Path], tmp_path: Path, how: str
) -> None:
    damage(exported[0], how)
    rebuilt = tmp_path / "rebuilt"
    r = cli("--repo", str(rebuilt), "media", "import", *map(str, exported))
    assert r.code == 13, (r.code, r.stderr)
    assert "Traceback" not in r.stderr and "strongroom: error:" in r.stderr
    if rebuilt.exists():  # what was written before the damage: no snapshot
        assert not list((rebuilt / "snapshots").glob("*"))


def test_a_missing_volume_is_named_and_nothing_is_written(
    exported: list[Path], tmp_path: Path
) -> None:
    assert len(exported) == 2
    rebuilt = tmp_path / "rebuilt"
    r = cli("--repo", str(rebuilt), "media", "import", str(exported[1]))
    assert r.code == 2, r.stderr
    label = exported[0].name.removesuffix(".vol")
    assert f"volume {label} (1 of 2) is missing" in r.stderr
    assert not rebuilt.exists()
    r = cli("--repo", str(rebuilt), "media", "import", str(exported[1]), str(exported[1]))
    assert r.code == 2 and "given twice" in r.stderr


def test_import_into_the_original_repository_adds_what_it_lost(
    repo_path: Path, week: dict[str, object], exported: list[Path], tmp_path: Path
) -> None:
    r = cli("--repo", str(repo_path), "--json", "media", "import", *map(str, exported))
    s = summary_of(r)
    assert s["created"] is False and s["snapshots_imported"] == []
    assert sorted(s["snapshots_present"]) == sorted([week["web"], week["db"]])  # type: ignore[type-var]
    assert s["objects_written"] == 1  # only the set's own index file

    packs = sorted((p for p in (repo_path / "data").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)  # fmt: skip
    for pack in packs[-2:]:  # the 3 MiB files of web and db
        pack.unlink()
    (repo_path / "snapshots" / str(week["db"])).unlink()
    assert cli("--repo", str(repo_path), "check").code == 13
    s = summary_of(cli("--repo", str(repo_path), "--json", "media", "import", *map(str, exported)))
    assert s["snapshots_imported"] == [week["db"]]
    assert s["objects_written"] == 3
    assert cli("--repo", str(repo_path), "check", "--read-data").code == 0


def test_import_into_another_repository_or_with_a_wrong_password_is_refused(
    exported: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    assert cli("--repo", str(other), "init").code == 0
    r = cli("--repo", str(other), "media", "import", *map(str, exported))
    assert r.code == 2 and "the volumes hold repository" in r.stderr
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "file").write_text("not a repository")
    r = cli("--repo", str(stray), "media", "import", *map(str, exported))
    assert r.code == 2 and "not empty" in r.stderr
    monkeypatch.setenv("STRONGROOM_PASSWORD", "wrong")
    r = cli("--repo", str(tmp_path / "new"), "media", "import", *map(str, exported))
    assert r.code == 12


# --- the catalog: labels, locations, expiry, recycling ---------------------------------


def media_list() -> dict[str, dict[str, object]]:
    r = cli("--json", "media", "list")
    assert r.code == 0, r.stderr
    return {str(v["label"]): v for v in json.loads(r.stdout)}


def test_volume_life_cycle(repo_path: Path, week: dict[str, object], tmp_path: Path) -> None:
    r = cli("--json", "media", "label", "TAPE01", "TAPE02", "--location", "vault")
    assert r.code == 0, r.stderr
    assert {v["status"] for v in json.loads(r.stdout)} == {"blank"}
    assert cli("media", "label", "TAPE01").code == 2  # labelled already
    assert cli("media", "label", "bad/label").code == 2

    out = tmp_path / "volumes"
    out.mkdir()
    r = export(repo_path, "--to", str(out), "--volume-size", "4MiB", "--label", "TAPE01",
               "--label", "TAPE02", "--expires", "2001-01-01")  # fmt: skip
    assert [v["label"] for v in volumes_of(r)][:2] == ["TAPE01", "TAPE02"]
    vols = media_list()
    assert vols["TAPE01"]["status"] == "full" and vols["TAPE01"]["location"] == "vault"
    assert vols["TAPE01"]["expires_at"] == "2001-01-01T00:00:00Z"

    # A label in use is refused before anything is written.
    again = tmp_path / "again"
    again.mkdir()
    r = cli("--repo", str(repo_path), "media", "export", "--to", str(again),
            "--label", "TAPE01", "--expires", "7d")  # fmt: skip
    assert r.code == 2 and "still hold" in r.stderr
    assert list(again.iterdir()) == []

    due = json.loads(cli("--json", "media", "due").stdout)
    assert {"TAPE01", "TAPE02"} <= {v["label"] for v in due["recyclable"]}
    assert "TAPE01" not in {v["label"] for v in due["send_offsite"]}  # in the vault

    r = cli("media", "recycle", "TAPE01")
    assert r.code == 0, r.stderr
    assert media_list()["TAPE01"]["status"] == "recycled"
    assert media_list()["TAPE01"]["snapshots"] == []
    assert cli("media", "recycle", "TAPE01").code == 2  # nothing left to recycle

    # Written again: not expired yet, so recycling needs --force.
    (out / "TAPE01.vol").unlink()
    r = export(repo_path, str(week["web"]), "--to", str(out), "--label", "TAPE01",
               "--expires", "90d")  # fmt: skip
    assert media_list()["TAPE01"]["status"] == "exported"
    r = cli("media", "recycle", "TAPE01")
    assert r.code == 2 and "until" in r.stderr
    assert cli("media", "recycle", "TAPE01", "--force").code == 0
    assert cli("media", "label", "TAPE01").code == 0  # a recycled volume may be relabelled
    assert media_list()["TAPE01"]["status"] == "blank"
    assert cli("media", "move", "NOSUCH", "--to", "offsite").code == 2


def write_config(tmp_path: Path, repo: Path) -> Path:
    config = tmp_path / "strongroom.toml"
    config.write_text(
        f'[repositories.main]\nurl = "{repo}"\n\n'
        '[defaults]\nrepository = "main"\n'
        "retention = { daily = 7, weekly = 4 }\n\n"
        '[clients.web]\ntransport = "local"\nsources = ["/srv"]\n'
    )
    return config


def test_expiry_comes_from_the_jobs_retention(
    repo_path: Path, week: dict[str, object], tmp_path: Path
) -> None:
    config = write_config(tmp_path, repo_path)
    out = tmp_path / "volumes"
    out.mkdir()
    r = cli("--config", str(config), "--repo", "main", "--json", "media", "export",
            "--client", "web", "--to", str(out))  # fmt: skip
    s = summary_of(r)
    snaps = json.loads(cli("--repo", str(repo_path), "--json", "snapshots").stdout)
    newest = max(datetime.fromisoformat(x["time"]) for x in snaps if x["client"] == "web")
    expected = (newest + timedelta(weeks=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert s["expires_at"] == expected

    r = cli("--config", str(config), "--repo", "main", "media", "export",
            "--client", "db", "--to", str(out))  # fmt: skip
    assert r.code == 2 and "db/default" in r.stderr and "--expires" in r.stderr


def test_due_records_a_media_due_event(
    repo_path: Path, week: dict[str, object], tmp_path: Path
) -> None:
    config = write_config(tmp_path, repo_path)
    out = tmp_path / "volumes"
    out.mkdir()
    summary_of(export(repo_path, str(week["web"]), "--to", str(out), "--expires", "7d",
                      "--label", "SEND1"))  # fmt: skip
    assert cli("--config", str(config), "media", "due").code == 0
    assert cli("--config", str(config), "media", "due").code == 0  # once a day, not twice
    r = cli("--config", str(config), "--json", "events", "list", "--event", "media.due")
    assert r.code == 0, r.stderr
    events = json.loads(r.stdout)
    assert len(events) == 1
    assert events[0]["details"]["send_offsite"] == ["SEND1"]


def test_random_damage_to_a_volume_is_never_a_crash_nor_a_wrong_snapshot(
    repo_path: Path, tmp_path: Path
) -> None:
    """Bit flips anywhere: a typed error (13, or 2 when the label now names another set),
    or, when only padding or label metadata was hit, an import that checks clean."""
    import random

    small = make_tree(tmp_path / "small", 200_000)
    sid = backup(repo_path, "small", small, 0)
    out = tmp_path / "volumes"
    out.mkdir()
    (vol,) = volumes_of(export(repo_path, sid, "--to", str(out), "--expires", "1d"))
    original = Path(str(vol["path"])).read_bytes()
    rng = random.Random(20)
    damaged = tmp_path / "damaged.vol"
    for attempt in range(40):
        data = bytearray(original)
        for _ in range(rng.choice([1, 1, 3])):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        damaged.write_bytes(bytes(data))
        rebuilt = tmp_path / f"rebuilt-{attempt}"
        r = cli("--repo", str(rebuilt), "media", "import", str(damaged))
        assert r.code in (0, 2, 13), r.stderr
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr
        if r.code == 0:
            assert cli("--repo", str(rebuilt), "check", "--read-data").code == 0
            target = tmp_path / f"restored-{attempt}"
            assert cli("--repo", str(rebuilt), "restore", sid, "--target", str(target)).code == 0
            assert_same_tree(small, target / small.relative_to("/"))


def test_import_does_not_rely_on_packs_a_collection_has_marked(
    repo_path: Path, week: dict[str, object], exported: list[Path], tmp_path: Path
) -> None:
    """Importing into a live repository is writing to it: a blob whose only copy is in a
    pack a gc marker names is stored again, so the collection may go ahead (R7)."""
    from strongroom.backend import LocalBackend
    from strongroom.repository import Repository
    from strongroom.repository.crypto import storage_id
    from strongroom.repository.gc import GcMarker, encode_marker
    from tests.conftest import PASSWORD

    (repo_path / "snapshots" / str(week["db"])).unlink()  # db's data is now unreferenced
    backend = LocalBackend(repo_path)
    repo = Repository.open(backend, PASSWORD.encode())
    packs = [name for name, _ in repo.packs()]
    raw = encode_marker(repo.master, GcMarker(1, 0, packs, [], True, 3600))
    backend.save(f"gc/{storage_id(raw)}", raw)

    s = summary_of(cli("--repo", str(repo_path), "--json", "media", "import", *map(str, exported)))
    assert s["snapshots_imported"] == [week["db"]]
    for pack in packs:  # the collection sweeps everything it marked
        (repo_path / "data" / pack[:2] / pack).unlink()
    target = tmp_path / "restored"
    r = cli("--repo", str(repo_path), "restore", str(week["db"]), "--target", str(target))
    assert r.code == 0, r.stderr
    trees = week["trees"]
    assert isinstance(trees, dict)
    assert_same_tree(trees["db"], target / trees["db"].relative_to("/"))
