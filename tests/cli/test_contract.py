"""The CLI contract of SPEC.md: options, exit codes, JSON shapes, browsing, keys."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Result, cli, cli_subprocess

SPEC_CODES = {0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 130}
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def in_repo(repo: Path, *args: str) -> Result:
    return cli("--repo", str(repo), *args)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def backup(repo: Path, *args: str) -> dict[str, object]:
    r = in_repo(repo, "--json", "backup", *args)
    assert r.code == 0, r.stdout + r.stderr
    summary = json_lines(r.stdout)[-1]
    assert summary["type"] == "summary"
    return summary


def snapshots(repo: Path, *args: str) -> list[dict[str, object]]:
    r = in_repo(repo, "--json", "snapshots", *args)
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert isinstance(doc, list)
    return doc


def assert_clean_error(r: Result, code: int) -> None:
    assert r.code == code, (r.code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert "strongroom: error:" in r.stderr


def repo_files(repo: Path) -> dict[str, bytes]:
    return {str(p.relative_to(repo)): p.read_bytes() for p in repo.rglob("*") if p.is_file()}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    s = tmp_path / "src"
    (s / "sub").mkdir(parents=True)
    (s / "a.txt").write_bytes(b"alpha\n")
    (s / "b.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # several chunks
    (s / "sub" / "c.txt").write_bytes(b"gamma\n")
    (s / "junk.tmp").write_bytes(b"temporary\n")
    (s / "sub" / "junk.tmp").write_bytes(b"temporary too\n")
    os.symlink("a.txt", s / "link")
    return s


# --- help exit-codes ------------------------------------------------------------------


def test_help_exit_codes_lists_the_spec_table() -> None:
    r = cli("help", "exit-codes")
    assert r.code == 0
    codes = {int(line.split()[0]) for line in r.stdout.splitlines() if line.strip()}
    assert codes == SPEC_CODES
    assert "wrong password" in r.stdout and "interrupted" in r.stdout


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["preflight", "--help"]])
def test_help_ends_with_every_exit_code(argv: list[str]) -> None:
    r = cli(*argv)
    assert r.code == 0
    epilog = " ".join(r.stdout.split("Exit status:")[1].split())
    assert {int(n) for n in re.findall(r"\b(\d+) [a-z]", epilog)} == SPEC_CODES, epilog


@pytest.mark.parametrize(
    "argv", [["--json", "help", "exit-codes"], ["help", "exit-codes", "--json"]]
)
def test_help_exit_codes_json(argv: list[str]) -> None:
    r = cli(*argv)
    assert r.code == 0
    doc = json.loads(r.stdout)
    assert {int(k) for k in doc} == SPEC_CODES
    assert all(isinstance(v, str) and v for v in doc.values())


def test_help_of_a_command_and_unknown_topic() -> None:
    r = cli("help", "backup")
    assert r.code == 0 and "--exclude" in r.stdout
    r = cli("help", "no-such-topic")
    assert r.code == 2


# --- global options anywhere ----------------------------------------------------------


def test_global_options_before_or_after_the_command(repo_path: Path, src: Path) -> None:
    backup(repo_path, "--client", "web01", str(src))
    forms = [
        ["--repo", str(repo_path), "--json", "snapshots"],
        ["snapshots", "--repo", str(repo_path), "--json"],
        ["--json", "snapshots", "--repo", str(repo_path)],
        ["snapshots", f"--repo={repo_path}", "--json"],
        ["-r", str(repo_path), "snapshots", "--json"],
        ["snapshots", "--json", "-r", str(repo_path), "--no-progress", "-q"],
    ]
    outputs = set()
    for argv in forms:
        r = cli(*argv)
        assert r.code == 0, (argv, r.stderr)
        outputs.add(r.stdout)
    assert len(outputs) == 1
    assert len(json.loads(outputs.pop())) == 1


@pytest.mark.parametrize(
    "flags",
    [["-v"], ["-vv"], ["--verbose", "--verbose"], ["-q"], ["--quiet"], ["--no-progress"]],
    ids=["-v", "-vv", "--verbose*2", "-q", "--quiet", "--no-progress"],
)
def test_global_flags_after_the_command(repo_path: Path, flags: list[str]) -> None:
    before = in_repo(repo_path, *flags, "snapshots")
    after = in_repo(repo_path, "snapshots", *flags)
    assert before.code == 0, before.stderr
    assert after.code == 0, after.stderr
    assert after.stdout == before.stdout


def test_repository_from_the_environment(
    repo_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRONGROOM_REPOSITORY", str(repo_path))
    r = cli("--json", "backup", "--client", "env", str(src))
    assert r.code == 0, r.stderr
    assert len(snapshots(repo_path)) == 1


def test_json_after_the_command_for_backup(repo_path: Path, src: Path) -> None:
    r = cli("backup", "--client", "x", str(src), "--json", "--repo", str(repo_path))
    assert r.code == 0, r.stderr
    assert json_lines(r.stdout)[-1]["type"] == "summary"


# --- exit codes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["snapshots"],
        ["backup", "{src}"],
        ["restore", "latest", "--target", "{tmp}/t"],
        ["check"],
        ["ls", "latest"],
        ["key", "list"],
    ],
)
def test_missing_repository_is_exit_10(tmp_path: Path, src: Path, argv: list[str]) -> None:
    argv = [a.format(src=src, tmp=tmp_path) for a in argv]
    r = cli("--repo", str(tmp_path / "nothing-here"), *argv)
    assert_clean_error(r, 10)
    assert "init" in r.stderr  # says what to do next
    assert not (tmp_path / "nothing-here").exists()


def test_missing_repository_with_json_prints_a_json_error(tmp_path: Path) -> None:
    r = cli("--repo", str(tmp_path / "nothing-here"), "--json", "snapshots")
    assert r.code == 10
    (doc,) = json_lines(r.stdout)
    assert doc["type"] == "error" and doc["exit_code"] == 10 and doc["message"]


def test_wrong_password_is_exit_12(
    repo_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRONGROOM_PASSWORD", "not the password")
    for argv in (["snapshots"], ["backup", str(src)], ["check"], ["key", "list"]):
        r = in_repo(repo_path, *argv)
        assert_clean_error(r, 12)
        assert "password" in r.stderr


def test_password_from_a_file_and_a_command(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRONGROOM_PASSWORD")
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    monkeypatch.setenv("STRONGROOM_PASSWORD_FILE", str(pw))
    assert in_repo(repo_path, "snapshots").code == 0
    monkeypatch.delenv("STRONGROOM_PASSWORD_FILE")
    monkeypatch.setenv("STRONGROOM_PASSWORD_COMMAND", f"printf '%s' '{PASSWORD}'")
    assert in_repo(repo_path, "snapshots").code == 0
    monkeypatch.setenv("STRONGROOM_PASSWORD_COMMAND", "exit 1")
    assert_clean_error(in_repo(repo_path, "snapshots"), 12)


@pytest.mark.parametrize(
    "argv",
    [
        ["snapshots", "--bogus"],
        ["backup"],
        ["dump", "latest"],
        ["restore", "latest"],
        ["no-such-command"],
        ["check", "--read-data-subset"],
        ["backup", "--time", "yesterday-ish", "{src}"],
        ["backup", "{tmp}/does-not-exist"],
        ["ls", "latest", "/no/such/path"],
        ["restore", "latest", "--target", "{tmp}/t", "--to-client", "other"],
    ],
)
def test_usage_errors_are_exit_2(
    repo_path: Path, src: Path, tmp_path: Path, argv: list[str]
) -> None:
    backup(repo_path, str(src))
    argv = [a.format(src=src, tmp=tmp_path) for a in argv]
    r = in_repo(repo_path, *argv)
    assert r.code == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip()


def test_no_repository_given_is_exit_2() -> None:
    r = cli("snapshots")
    assert_clean_error(r, 2)
    assert "--repo" in r.stderr


def test_verbose_shows_a_traceback_quiet_does_not(tmp_path: Path) -> None:
    r = cli("--repo", str(tmp_path / "none"), "snapshots")
    assert "Traceback" not in r.stderr
    r = cli("--repo", str(tmp_path / "none"), "-v", "snapshots")
    assert r.code == 10
    assert "Traceback" in r.stderr


def test_errors_in_a_real_process_have_no_traceback(tmp_path: Path) -> None:
    proc = cli_subprocess(["--repo", str(tmp_path / "none"), "snapshots"], timeout=60)
    assert proc.returncode == 10
    assert b"Traceback" not in proc.stderr
    assert proc.stderr.startswith(b"strongroom: error:")
    assert len(proc.stderr.decode().strip().splitlines()) <= 2
    assert proc.stdout == b""


# --- init -------------------------------------------------------------------------------


def test_init_refuses_an_existing_repository(repo_path: Path, src: Path) -> None:
    backup(repo_path, str(src))
    before = repo_files(repo_path)
    r = in_repo(repo_path, "init")
    assert r.code != 0
    assert "Traceback" not in r.stderr and "strongroom: error:" in r.stderr
    assert repo_files(repo_path) == before
    assert len(snapshots(repo_path)) == 1


def test_init_refuses_a_directory_with_other_data(tmp_path: Path) -> None:
    d = tmp_path / "full"
    d.mkdir()
    (d / "precious.txt").write_bytes(b"mine")
    r = cli("--repo", str(d), "init")
    assert r.code != 0
    assert sorted(os.listdir(d)) == ["precious.txt"]


def test_init_of_a_configured_repository_uses_its_url_and_password_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, src: Path
) -> None:
    """`--repo NAME init` creates the repository at the config's URL, under the
    config's password, not a directory called NAME under the environment's password."""
    monkeypatch.delenv("STRONGROOM_PASSWORD")
    (tmp_path / "vault.pass").write_text("the vault's own password\n")
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.vault]\nurl = "{tmp_path}/vault-repo"\n'
        f'password_file = "{tmp_path}/vault.pass"\n'
    )
    r = cli("--repo", "vault", "init")
    assert r.code == 0, r.stderr
    assert (tmp_path / "vault-repo" / "config").exists() and not (tmp_path / "vault").exists()
    assert cli("--repo", "vault", "backup", "--client", "c", str(src)).code == 0
    monkeypatch.setenv("STRONGROOM_PASSWORD", "the vault's own password")
    assert len(snapshots(tmp_path / "vault-repo")) == 1
    # catalog rebuild --repo NAME: the same URL and password, recorded under the name.
    monkeypatch.delenv("STRONGROOM_PASSWORD")
    r = cli("--repo", "vault", "catalog", "rebuild")
    assert r.code == 0, r.stderr
    r = cli("--json", "snapshots")
    assert r.code == 0, r.stderr
    assert [s["client"] for s in json.loads(r.stdout)] == ["c"]


def test_init_json(tmp_path: Path) -> None:
    r = cli("--repo", str(tmp_path / "new"), "--json", "init")
    assert r.code == 0
    doc = json.loads(r.stdout)
    assert {"id", "location", "key_id"} <= doc.keys()


def test_init_of_a_configured_repository_reads_a_password_file_beside_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRONGROOM_PASSWORD")
    (tmp_path / "main.pass").write_text("from the file\n")
    (tmp_path / "strongroom.toml").write_text(
        f'[repositories.main]\nurl = "{tmp_path}/srv/main"\npassword_file = "main.pass"\n'
    )
    r = cli("--repo", "main", "init")
    assert r.code == 0, r.stderr
    assert not (tmp_path / "main").exists()  # not a new repository named after the name
    assert (tmp_path / "srv" / "main" / "config").exists()
    assert cli("--repo", "main", "snapshots").code == 0  # the file's password opens it
    (tmp_path / "strongroom.toml").unlink()
    monkeypatch.setenv("STRONGROOM_PASSWORD", "from the file")
    assert cli("--repo", str(tmp_path / "srv" / "main"), "snapshots").code == 0


# --- snapshots and backup JSON ----------------------------------------------------------


def test_snapshots_json_has_restics_shape(repo_path: Path, src: Path) -> None:
    assert snapshots(repo_path) == []
    backup(repo_path, "--client", "web01", "--tag", "b", "--tag", "a", str(src))
    backup(repo_path, "--client", "db01", "--job", "nightly", str(src / "sub"))
    docs = snapshots(repo_path)
    assert len(docs) == 2
    for doc in docs:
        assert HEX64.match(str(doc["id"]))
        assert doc["short_id"] == str(doc["id"])[:8]
        assert RFC3339.match(str(doc["time"])), doc["time"]
        assert isinstance(doc["paths"], list) and isinstance(doc["tags"], list)
        assert {"client", "job", "hostname", "username", "tree"} <= doc.keys()
    by_client = {d["client"]: d for d in docs}
    assert by_client["web01"]["tags"] == ["a", "b"]
    assert by_client["web01"]["job"] == "default"
    assert by_client["web01"]["paths"] == [str(src)]
    assert by_client["db01"]["job"] == "nightly"
    assert by_client["db01"]["paths"] == [str(src / "sub")]
    # filters
    assert [d["client"] for d in snapshots(repo_path, "--client", "db01")] == ["db01"]
    assert [d["client"] for d in snapshots(repo_path, "--job", "nightly")] == ["db01"]
    assert [d["client"] for d in snapshots(repo_path, "--tag", "a")] == ["web01"]
    assert snapshots(repo_path, "--tag", "nope") == []


def test_snapshots_text(repo_path: Path, src: Path) -> None:
    summary = backup(repo_path, "--client", "web01", str(src))
    r = in_repo(repo_path, "snapshots")
    assert r.code == 0
    assert str(summary["snapshot_id"])[:8] in r.stdout and "web01" in r.stdout


def test_backup_json_lines_end_with_the_summary(repo_path: Path, src: Path) -> None:
    r = in_repo(repo_path, "--json", "backup", "--client", "web01", str(src))
    assert r.code == 0
    lines = json_lines(r.stdout)  # every line is JSON
    assert all("type" in line for line in lines)
    summary = lines[-1]
    assert summary["type"] == "summary"
    assert HEX64.match(str(summary["snapshot_id"]))
    assert summary["exit_code"] == 0
    for key in (
        "files_new",
        "files_changed",
        "files_unmodified",
        "bytes_read",
        "bytes_new",
        "bytes_stored",
    ):
        assert isinstance(summary[key], int), key
    assert summary["files_new"] == 5
    assert summary["bytes_read"] == (src / "b.bin").stat().st_size + 6 + 6 + 10 + 14
    assert isinstance(summary["duration_s"], float | int)
    assert r.stderr == ""
    assert [s["id"] for s in snapshots(repo_path)] == [summary["snapshot_id"]]


def test_backup_text_output(repo_path: Path, src: Path) -> None:
    r = in_repo(repo_path, "backup", "--client", "web01", str(src))
    assert r.code == 0
    assert "snapshot" in r.stdout and "web01" in r.stdout


# --- --time, --tag, --exclude -------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2020-01-02T03:04:05Z", "2020-01-02T03:04:05"),
        ("2020-01-02T05:04:05+02:00", "2020-01-02T03:04:05"),
        ("2021-06-30T23:59:59.999999Z", "2021-06-30T23:59:59.999999"),
    ],
)
def test_time_sets_the_snapshot_time(repo_path: Path, src: Path, given: str, expected: str) -> None:
    backup(repo_path, "--time", given, str(src))
    (doc,) = snapshots(repo_path)
    time = str(doc["time"])
    assert time.endswith("Z")
    # whole digits as given; any further fraction digits are zeros
    head, _, frac = time[:-1].partition(".")
    exp_head, _, exp_frac = expected.partition(".")
    assert head == exp_head
    assert frac.rstrip("0") == exp_frac.rstrip("0"), time


def test_snapshots_are_listed_oldest_first_by_their_time(repo_path: Path, src: Path) -> None:
    backup(repo_path, "--time", "2022-01-01T00:00:00Z", "--client", "late", str(src))
    backup(repo_path, "--time", "2020-01-01T00:00:00Z", "--client", "early", str(src))
    assert [d["client"] for d in snapshots(repo_path)] == ["early", "late"]
    r = in_repo(repo_path, "dump", "latest", str(src / "a.txt"))
    assert r.code == 0
    r = in_repo(repo_path, "--json", "ls", "latest", str(src / "sub"))
    assert r.code == 0


def test_exclude(repo_path: Path, src: Path) -> None:
    backup(repo_path, "--exclude", "*.tmp", "--exclude", str(src / "sub" / "c.txt"), str(src))
    r = in_repo(repo_path, "--json", "ls", "latest")
    paths = {e["path"] for e in json.loads(r.stdout)}
    assert str(src / "a.txt") in paths
    assert str(src / "sub") in paths
    assert not any(p.endswith(".tmp") for p in paths)
    assert str(src / "sub" / "c.txt") not in paths


# --- browsing ---------------------------------------------------------------------------


def test_ls(repo_path: Path, src: Path) -> None:
    backup(repo_path, str(src))
    r = in_repo(repo_path, "--json", "ls", "latest")
    assert r.code == 0
    entries = {e["path"]: e for e in json.loads(r.stdout)}
    assert entries[str(src / "a.txt")]["type"] == "file"
    assert entries[str(src / "a.txt")]["size"] == 6
    assert entries[str(src / "sub")]["type"] == "dir"
    assert entries[str(src / "link")]["type"] == "symlink"
    assert entries[str(src / "link")]["target"] == "a.txt"
    # every ancestor of the backed-up path is there too
    assert str(src.parent) in entries
    # below a path, not recursive
    r = in_repo(repo_path, "--json", "ls", "latest", str(src), "--no-recursive")
    names = sorted(e["name"] for e in json.loads(r.stdout))
    assert names == ["a.txt", "b.bin", "junk.tmp", "link", "sub"]
    # text form
    r = in_repo(repo_path, "ls", "latest", str(src / "sub"))
    assert r.code == 0
    assert str(src / "sub" / "c.txt") in r.stdout
    assert str(src / "a.txt") not in r.stdout
    # not a directory
    r = in_repo(repo_path, "ls", "latest", str(src / "a.txt"))
    assert r.code == 2


def test_find(repo_path: Path, src: Path) -> None:
    backup(repo_path, "--client", "one", str(src))
    backup(repo_path, "--client", "two", str(src / "sub"))
    r = in_repo(repo_path, "--json", "find", "c.txt")
    assert r.code == 0
    hits = json.loads(r.stdout)
    assert sorted(h["client"] for h in hits) == ["one", "two"]
    assert all(h["path"] == str(src / "sub" / "c.txt") for h in hits)
    r = in_repo(repo_path, "--json", "find", "*.tmp", "--client", "one")
    assert sorted(h["path"] for h in json.loads(r.stdout)) == [
        str(src / "junk.tmp"),
        str(src / "sub" / "junk.tmp"),
    ]
    r = in_repo(repo_path, "--json", "find", str(src / "sub") + "/*")
    assert {h["name"] for h in json.loads(r.stdout)} == {"c.txt", "junk.tmp"}
    r = in_repo(repo_path, "find", "nothing-matches-this")
    assert r.code == 0 and r.stdout == ""
    r = in_repo(repo_path, "--json", "find", "a.txt", "--since", "2999-01-01T00:00:00Z")
    assert json.loads(r.stdout) == []


def test_dump_reproduces_the_bytes(repo_path: Path, src: Path) -> None:
    (src / "zeros-and-data").write_bytes(bytes(300_000) + b"tail" + bytes(5))
    (src / "empty").write_bytes(b"")
    backup(repo_path, str(src))
    for name in ("a.txt", "b.bin", "sub/c.txt", "zeros-and-data", "empty"):
        r = in_repo(repo_path, "dump", "latest", str(src / name))
        assert r.code == 0, r.stderr
        assert r.stdout_bytes == (src / name).read_bytes(), name


def test_dump_of_a_sparse_file(repo_path: Path, src: Path) -> None:
    with open(src / "sparse", "wb") as f:
        f.truncate(8 * 1024 * 1024)
        f.seek(5 * 1024 * 1024)
        f.write(b"in the middle")
    backup(repo_path, str(src))
    r = in_repo(repo_path, "dump", "latest", str(src / "sparse"))
    assert r.code == 0
    assert r.stdout_bytes == (src / "sparse").read_bytes()


def test_dump_in_a_real_process(repo_path: Path, src: Path) -> None:
    backup(repo_path, str(src))
    proc = cli_subprocess(
        ["--repo", str(repo_path), "dump", "latest", str(src / "b.bin")], timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (src / "b.bin").read_bytes()


def test_dump_errors(repo_path: Path, src: Path) -> None:
    backup(repo_path, str(src))
    for path in (src / "sub", src / "link", src / "missing"):
        r = in_repo(repo_path, "dump", "latest", str(path))
        assert_clean_error(r, 2)
        assert r.stdout_bytes == b""


def test_diff(repo_path: Path, src: Path) -> None:
    first = backup(repo_path, str(src))
    (src / "a.txt").unlink()
    (src / "sub" / "c.txt").write_bytes(b"GAMMA, changed\n")
    (src / "new.txt").write_bytes(b"new\n")
    (src / "link").unlink()
    (src / "link").mkdir()  # type change
    second = backup(repo_path, str(src))
    a, b = str(first["snapshot_id"]), str(second["snapshot_id"])

    r = in_repo(repo_path, "--json", "diff", a, b)
    assert r.code == 0
    changes = {c["path"]: c["change"] for c in json.loads(r.stdout)}
    assert changes[str(src / "a.txt")] == "-"
    assert changes[str(src / "new.txt")] == "+"
    assert changes[str(src / "sub" / "c.txt")] == "M"
    assert changes[str(src / "link")] == "T"
    assert str(src / "b.bin") not in changes
    assert str(src / "sub" / "junk.tmp") not in changes

    r = in_repo(repo_path, "diff", a[:8], b[:12])
    assert r.code == 0
    lines = r.stdout.splitlines()
    assert f"-    {src / 'a.txt'}" in lines
    assert f"+    {src / 'new.txt'}" in lines
    assert f"M    {src / 'sub' / 'c.txt'}" in lines

    r = in_repo(repo_path, "--json", "diff", a, a)
    assert json.loads(r.stdout) == []


def test_latest_with_client_narrows(repo_path: Path, src: Path, tmp_path: Path) -> None:
    backup(repo_path, "--client", "alpha", "--time", "2020-01-01T00:00:00Z", str(src))
    (src / "a.txt").write_bytes(b"beta's version\n")
    backup(repo_path, "--client", "beta", "--time", "2020-01-02T00:00:00Z", str(src))
    (src / "a.txt").write_bytes(b"gamma's version\n")
    backup(repo_path, "--client", "gamma", "--time", "2019-01-01T00:00:00Z", str(src))
    path = str(src / "a.txt")
    assert in_repo(repo_path, "dump", "latest", path).stdout_bytes == b"beta's version\n"
    r = in_repo(repo_path, "dump", "latest", path, "--client", "alpha")
    assert r.stdout_bytes == b"alpha\n"
    r = in_repo(repo_path, "dump", "latest", path, "--client", "gamma")
    assert r.stdout_bytes == b"gamma's version\n"
    r = in_repo(repo_path, "dump", "latest", path, "--client", "nobody")
    assert r.code == 2
    r = in_repo(
        repo_path, "restore", "latest", "--client", "alpha", "--target", str(tmp_path / "t")
    )
    assert r.code == 0, r.stderr
    assert (tmp_path / "t" / src.relative_to("/") / "a.txt").read_bytes() == b"alpha\n"


def test_snapshot_id_prefixes(repo_path: Path, src: Path) -> None:
    summary = backup(repo_path, str(src))
    sid = str(summary["snapshot_id"])
    path = str(src / "a.txt")
    for spec in (sid, sid[:8], sid[:20], sid[:8].upper()):
        r = in_repo(repo_path, "dump", spec, path)
        assert r.code == 0, (spec, r.stderr)
        assert r.stdout_bytes == b"alpha\n"
    for spec in (
        sid[:7],
        sid[:1],
        "",
        "zzzzzzzz",
        "not-an-id",
        "0" * 8 if sid[0] != "0" else "1" * 8,
    ):
        r = in_repo(repo_path, "dump", spec, path)
        assert r.code == 2, (spec, r.stderr)
        assert "Traceback" not in r.stderr


def test_ambiguous_snapshot_prefix_is_exit_2(repo_path: Path, src: Path) -> None:
    sid = str(backup(repo_path, str(src))["snapshot_id"])
    # a second snapshot object whose name shares the first 10 digits
    twin = sid[:10] + ("0" if sid[10] != "0" else "1") + sid[11:]
    shutil.copy(repo_path / "snapshots" / sid, repo_path / "snapshots" / twin)
    r = in_repo(repo_path, "dump", sid[:8], str(src / "a.txt"))
    assert_clean_error(r, 2)
    assert "ambiguous" in r.stderr
    r = in_repo(repo_path, "dump", sid[:12], str(src / "a.txt"))
    assert r.code == 0 and r.stdout_bytes == b"alpha\n"


# --- restore ------------------------------------------------------------------------------


def test_restore_include_exclude_and_json(repo_path: Path, src: Path, tmp_path: Path) -> None:
    backup(repo_path, str(src))
    target = tmp_path / "t"
    r = in_repo(
        repo_path,
        "--json",
        "restore",
        "latest",
        "--target",
        str(target),
        "--include",
        str(src / "sub"),
        "--exclude",
        "*.tmp",
        "--verify",
    )
    assert r.code == 0, r.stderr
    summary = json_lines(r.stdout)[-1]
    assert summary["type"] == "summary" and summary["exit_code"] == 0
    assert summary["files"] == 1 and summary["verified"] == 1
    restored = target / src.relative_to("/")
    assert sorted(os.listdir(restored)) == ["sub"]
    assert sorted(os.listdir(restored / "sub")) == ["c.txt"]


# --- check ----------------------------------------------------------------------------------


@pytest.mark.parametrize("subset", ["50%", "100%", "0.5%", "1/2", "2/2", "1/1", "3/7"])
def test_check_read_data_subset(repo_path: Path, src: Path, subset: str) -> None:
    backup(repo_path, str(src))
    r = in_repo(repo_path, "check", "--read-data-subset", subset)
    assert r.code == 0, r.stderr
    r = in_repo(repo_path, "--json", "check", "--read-data-subset", subset)
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["exit_code"] == 0


def test_check_subsets_partition_the_packs(repo_path: Path, src: Path) -> None:
    for i in range(6):
        (src / f"f{i}").write_bytes(os.urandom(1000))
        backup(repo_path, str(src))
    total = json.loads(in_repo(repo_path, "--json", "check", "--read-data").stdout)
    assert total["packs_read"] == total["packs"] > 1
    parts = [
        json.loads(in_repo(repo_path, "--json", "check", "--read-data-subset", f"{n}/3").stdout)
        for n in (1, 2, 3)
    ]
    assert sum(p["packs_read"] for p in parts) == total["packs_read"]


@pytest.mark.parametrize(
    "subset", ["0%", "101%", "-5%", "abc", "%", "50", "0/2", "3/2", "1/0", "x/y", "1/2/3", "nan%"]
)
def test_check_bad_subsets_are_exit_2(repo_path: Path, src: Path, subset: str) -> None:
    backup(repo_path, str(src))
    r = in_repo(repo_path, "check", "--read-data-subset", subset)
    assert_clean_error(r, 2)


def test_check_text_and_json(repo_path: Path, src: Path) -> None:
    backup(repo_path, str(src))
    r = in_repo(repo_path, "check", "--read-data")
    assert r.code == 0 and "no errors" in r.stdout
    doc = json.loads(in_repo(repo_path, "--json", "check").stdout)
    assert doc["type"] == "summary" and doc["ok"] and doc["snapshots"] == 1


# --- keys -----------------------------------------------------------------------------------


def key_list(repo: Path) -> list[dict[str, object]]:
    r = in_repo(repo, "--json", "key", "list")
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def test_key_add_list_remove(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (first,) = key_list(repo_path)
    assert first["current"] is True
    newpw = tmp_path / "newpw"
    newpw.write_text("second password\n")
    r = in_repo(repo_path, "--json", "key", "add", "--new-password-file", str(newpw))
    assert r.code == 0, r.stderr
    added = json.loads(r.stdout)["id"]
    keys = {k["id"]: k for k in key_list(repo_path)}
    assert set(keys) == {first["id"], added}
    assert keys[first["id"]]["current"] and not keys[added]["current"]

    # the new password opens the repository, and sees itself as current
    monkeypatch.setenv("STRONGROOM_PASSWORD", "second password")
    keys = {k["id"]: k for k in key_list(repo_path)}
    assert keys[added]["current"]
    # it may not remove itself
    r = in_repo(repo_path, "key", "remove", str(added)[:8])
    assert_clean_error(r, 2)
    # but may remove the other one
    r = in_repo(repo_path, "key", "remove", str(first["id"])[:8])
    assert r.code == 0, r.stderr
    assert [k["id"] for k in key_list(repo_path)] == [added]
    # the last key is never removed
    r = in_repo(repo_path, "key", "remove", str(added))
    assert_clean_error(r, 2)
    assert [k["id"] for k in key_list(repo_path)] == [added]
    # the removed password no longer opens it
    monkeypatch.setenv("STRONGROOM_PASSWORD", PASSWORD)
    assert_clean_error(in_repo(repo_path, "snapshots"), 12)


def test_key_remove_of_an_unknown_key_is_exit_2(repo_path: Path) -> None:
    r = in_repo(repo_path, "key", "remove", "ffffffff")
    assert_clean_error(r, 2)
    assert len(key_list(repo_path)) == 1


def test_key_passwd(
    repo_path: Path, src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup(repo_path, str(src))
    monkeypatch.setenv("STRONGROOM_NEW_PASSWORD", "brand new")
    r = in_repo(repo_path, "key", "passwd")
    assert r.code == 0, r.stderr
    # the old password fails with 12
    assert_clean_error(in_repo(repo_path, "snapshots"), 12)
    # the new one works, and the data is all there
    monkeypatch.setenv("STRONGROOM_PASSWORD", "brand new")
    (only,) = key_list(repo_path)
    assert only["current"]
    r = in_repo(repo_path, "dump", "latest", str(src / "a.txt"))
    assert r.code == 0 and r.stdout_bytes == b"alpha\n"
    assert in_repo(repo_path, "check", "--read-data").code == 0


# --- integrity and interruption -------------------------------------------------------------


def test_damaged_data_is_exit_13(repo_path: Path, src: Path, tmp_path: Path) -> None:
    backup(repo_path, str(src))
    packs = sorted(
        (repo_path / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0
    )
    biggest = packs[-1]  # holds b.bin
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0x01
    biggest.write_bytes(bytes(data))
    r = in_repo(repo_path, "check", "--read-data")
    assert r.code == 13
    assert "Traceback" not in r.stderr
    doc = json.loads(in_repo(repo_path, "--json", "check", "--read-data").stdout)
    assert doc["ok"] is False and doc["exit_code"] == 13
    (paths,) = doc["affected"].values()
    assert str(src / "b.bin") in paths
    r = in_repo(repo_path, "restore", "latest", "--target", str(tmp_path / "t"))
    assert r.code == 13
    assert str(src / "b.bin") in r.stderr
    restored = tmp_path / "t" / src.relative_to("/")
    assert not (restored / "b.bin").exists()
    assert (restored / "a.txt").read_bytes() == b"alpha\n"


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupted_is_exit_130(repo_path: Path, signame: str) -> None:
    """Interrupted while waiting for STRONGROOM_PASSWORD_COMMAND: 130, and no orphan."""
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ)
    del env["STRONGROOM_PASSWORD"]
    env["STRONGROOM_PASSWORD_COMMAND"] = "exec sleep 30"
    children: list[int] = []
    try:
        with subprocess.Popen(
            [sys.executable, "-m", "strongroom", "--repo", str(repo_path), "snapshots"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                children = _children(proc.pid)
                if children and all(_cmdline(c).startswith(b"sleep\0") for c in children):
                    break
                time.sleep(0.02)
            assert children, "the password command never started"
            time.sleep(0.2)  # let the parent finish starting it: now it is waiting
            proc.send_signal(getattr(signal, signame))
            _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == 130, stderr
        assert b"interrupted" in stderr
        assert b"Traceback" not in stderr
        # the password command was killed with it, not left behind
        time.sleep(0.1)
        assert [c for c in children if _cmdline(c).startswith(b"sleep\0")] == []
    finally:
        for child in children:
            if _cmdline(child).startswith(b"sleep\0"):
                os.kill(child, signal.SIGKILL)
