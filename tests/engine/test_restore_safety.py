"""R15: restore never writes outside its target, whatever the snapshot says.

Hostile snapshots are made by hand with the repository API (trees that the archiver
would never write: names with '/', '..', NUL, empty names, duplicates that put a
directory "through" a symlink, hard links claiming an outside inode, device nodes).
Each is restored through the CLI; the world outside the target is described before
and after and must not change; unsafe entries are skipped with a warning (exit 3);
everything else is restored.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from strongroom.backend import LocalBackend
from strongroom.repository import DATA, TREE, Node, Repository, Snapshot
from strongroom.repository.crypto import blob_id
from strongroom.repository.tree import Tree, encode_tree
from tests.conftest import PASSWORD, cli
from tests.engine.metawalk import describe, differences

TIME_NS = 1_700_000_000_000_000_000


# --- making hostile snapshots -------------------------------------------------------


class Forger:
    """Writes blobs, trees and snapshots straight into a repository."""

    def __init__(self, path: Path) -> None:
        self.backend = LocalBackend(path)
        self.repo = Repository.open(self.backend, PASSWORD.encode())
        self.repo.load_index()

    def close(self) -> None:
        self.backend.close()

    def blob(self, blob_type: int, data: bytes) -> bytes:
        bid = blob_id(self.repo.master.id_key, data)
        if not self.repo.has_blob(bid):
            writer = self.repo.new_pack_writer()
            writer.add(blob_type, bid, data)
            self.repo.upload_pack(writer)
            self.repo.flush_index()
        return bid

    def tree(self, nodes: list[Node], *, keep_order: bool = True) -> bytes:
        """A tree blob; ``keep_order`` stores the nodes exactly as given (duplicates too)."""
        data = msgspec.msgpack.encode(Tree(nodes)) if keep_order else encode_tree(nodes)
        return self.blob(TREE, data)

    def file(self, name: bytes, content: bytes, **fields: object) -> Node:
        values: dict[str, object] = {"mode": 0o644, "mtime_ns": TIME_NS, **fields}
        return Node(
            name=name,
            type="file",
            size=len(content),
            content=[self.blob(DATA, content)] if content else [],
            **values,  # type: ignore[arg-type]
        )

    def dir(self, name: bytes, nodes: list[Node]) -> Node:
        return Node(name=name, type="dir", mode=0o755, mtime_ns=TIME_NS, subtree=self.tree(nodes))

    def symlink(self, name: bytes, target: bytes) -> Node:
        return Node(name=name, type="symlink", mode=0o777, mtime_ns=TIME_NS, target=target)

    def snapshot(self, root: list[Node]) -> str:
        snap = Snapshot(time_ns=TIME_NS, tree=self.tree(root), paths=["/"], client="evil")
        return self.repo.save_snapshot(snap)


@pytest.fixture
def forger(repo_path: Path) -> Iterator[Forger]:
    f = Forger(repo_path)
    yield f
    f.close()


# --- the world outside the target ---------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """An 'outside' tree of sentinels next to the target, and the target's parent."""
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "sentinel.txt").write_bytes(b"do not touch\n")
    (outside / "dir" / "inner.txt").write_bytes(b"nor this\n")
    area = tmp_path / "area"
    target = area / "target"
    target.mkdir(parents=True)
    (area / "neighbour.txt").write_bytes(b"next to the target\n")
    return {"outside": outside, "area": area, "target": target, "tmp": tmp_path}


def outside_state(world: dict[str, Path]) -> object:
    area = describe(world["area"])
    # the target itself changes, of course; everything else under area must not
    area.entries = {p: e for p, e in area.entries.items() if not p.startswith(b"./target")}
    area.inodes = {
        ino: [p for p in paths if not p.startswith(b"./target")]
        for ino, paths in area.inodes.items()
    }
    # next to outside and area: the repository and the cache, which may change
    tmp_names = sorted(n for n in os.listdir(world["tmp"]) if n not in ("repo", "cache"))
    return (describe(world["outside"]), area, tmp_names)


def assert_unchanged(before: object, after: object) -> None:
    b_out, b_area, b_tmp = before  # type: ignore[misc]
    a_out, a_area, a_tmp = after  # type: ignore[misc]
    assert differences(b_out, a_out) == []
    assert differences(b_area, a_area) == []
    assert b_tmp == a_tmp


def restore_json(repo: Path, snapshot_id: str, target: Path) -> tuple[int, list[dict[str, object]]]:
    r = cli("--repo", str(repo), "--json", "restore", snapshot_id, "--target", str(target))
    assert "Traceback" not in r.stderr
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert lines and lines[-1]["type"] == "summary", r.stdout + r.stderr
    assert lines[-1]["exit_code"] == r.code
    return r.code, lines


def warnings_of(lines: list[dict[str, object]]) -> list[str]:
    return [str(line["message"]) for line in lines if line["type"] == "warning"]


# --- the tests ----------------------------------------------------------------------


def test_hostile_names_and_links_stay_inside_the_target(
    repo_path: Path, forger: Forger, world: dict[str, Path]
) -> None:
    outside, target = world["outside"], world["target"]
    sentinel_st = os.stat(outside / "sentinel.txt")
    absolute = os.fsencode(outside / "written-by-absolute-name")
    f = forger
    root = [
        # a symlink to outside, then a directory of the same name: writing into it
        # would go through the link
        f.symlink(b"link", os.fsencode(outside)),
        f.dir(b"link", [f.file(b"pwned", b"through the link\n")]),
        # a directory, then a symlink of the same name: the directory wins, no link
        f.dir(b"sl2", [f.file(b"kept", b"kept\n")]),
        f.symlink(b"sl2", os.fsencode(outside)),
        # a symlink, then a file of the same name
        f.symlink(b"rel-up", b"../../outside/sentinel.txt"),
        f.file(b"rel-up", b"overwrite the sentinel\n"),
        # names that are not one path component
        f.file(b"../x", b"parent\n"),
        f.file(b"../../x", b"grandparent\n"),
        f.file(absolute, b"absolute\n"),
        f.file(b"a/b", b"slash\n"),
        f.file(b"", b"empty name\n"),
        f.dir(b".", [f.file(b"dot-escape", b"dot\n")]),
        f.dir(b"..", [f.file(b"dotdot-escape", b"dotdot\n")]),
        f.file(b"..", b"dotdot as a file\n"),
        f.file(b"nul\0name", b"nul\n"),
        f.file(b"/", b"root\n"),
        f.file(b".strongroom-tmp-evil", b"temp name\n"),
        # a hard link group that claims the inode of a file outside
        f.file(
            b"hardlink-evil",
            b"evil\n",
            links=2,
            inode=sentinel_st.st_ino,
            device=sentinel_st.st_dev,
        ),
        f.file(
            b"hardlink-evil-2",
            b"evil\n",
            links=2,
            inode=sentinel_st.st_ino,
            device=sentinel_st.st_dev,
        ),
        # the same at depth, where '..' would still land inside the target
        f.dir(
            b"sub",
            [
                f.file(b"../y", b"up one\n"),
                f.symlink(b"up", b"../../../outside"),
                f.dir(b"up", [f.file(b"through", b"through a relative link\n")]),
                f.file(b"fine.txt", b"fine\n"),
            ],
        ),
        f.file(b"ok.txt", b"ok\n"),
    ]
    sid = f.snapshot(root)

    before = outside_state(world)
    code, lines = restore_json(repo_path, sid, target)
    assert_unchanged(before, outside_state(world))
    assert code == 3, lines

    warnings = warnings_of(lines)
    unsafe = [w for w in warnings if "unsafe name" in w]
    duplicates = [w for w in warnings if "duplicate" in w]
    assert len(unsafe) == 12, warnings
    assert len(duplicates) == 4, warnings
    assert len(warnings) == 16, warnings

    # the rest restored
    assert (target / "ok.txt").read_bytes() == b"ok\n"
    assert (target / "sub" / "fine.txt").read_bytes() == b"fine\n"
    assert (target / "sl2" / "kept").read_bytes() == b"kept\n"
    assert os.readlink(target / "link") == str(outside)
    assert os.readlink(target / "rel-up") == "../../outside/sentinel.txt"
    assert os.readlink(target / "sub" / "up") == "../../../outside"
    assert not (outside / "pwned").exists() and not (outside / "through").exists()
    # the hard link group is restored as its own inode, inside the target
    one, two = os.lstat(target / "hardlink-evil"), os.lstat(target / "hardlink-evil-2")
    assert one.st_ino == two.st_ino and one.st_nlink == 2
    assert one.st_ino != sentinel_st.st_ino
    assert (target / "hardlink-evil").read_bytes() == b"evil\n"
    assert os.lstat(outside / "sentinel.txt").st_nlink == 1
    # nothing else appeared in the target
    assert sorted(os.listdir(target)) == sorted(
        ["hardlink-evil", "hardlink-evil-2", "link", "ok.txt", "rel-up", "sl2", "sub"]
    )
    assert sorted(os.listdir(target / "sub")) == ["fine.txt", "up"]


def test_existing_symlinks_in_the_target_are_never_followed(
    repo_path: Path, forger: Forger, world: dict[str, Path]
) -> None:
    """A first restore leaves symlinks to outside; a second one writes the same names."""
    outside, target = world["outside"], world["target"]
    f = forger
    first = f.snapshot(
        [
            f.symlink(b"door", os.fsencode(outside)),
            f.symlink(b"victim", os.fsencode(outside / "sentinel.txt")),
            f.symlink(b"fifo-victim", os.fsencode(outside / "sentinel.txt")),
            f.symlink(b"link-victim", os.fsencode(outside / "sentinel.txt")),
            f.symlink(b"dir-victim", os.fsencode(outside / "dir")),
        ]
    )
    second = f.snapshot(
        [
            f.dir(b"door", [f.file(b"through.txt", b"must not land outside\n")]),
            f.file(b"victim", b"replaces the link, not its target\n", mode=0o600),
            Node(name=b"fifo-victim", type="fifo", mode=0o644, mtime_ns=TIME_NS),
            f.symlink(b"link-victim", b"elsewhere"),
            f.file(b"dir-victim", b"a file where a link to a dir was\n", mode=0o666),
            f.file(b"ok.txt", b"ok\n"),
        ]
    )
    before = outside_state(world)
    code, _ = restore_json(repo_path, first, target)
    assert code == 0
    code, lines = restore_json(repo_path, second, target)
    assert_unchanged(before, outside_state(world))
    assert code == 3
    warnings = warnings_of(lines)
    assert len(warnings) == 1 and "door" in warnings[0], warnings

    assert os.readlink(target / "door") == str(outside)
    assert (target / "victim").read_bytes() == b"replaces the link, not its target\n"
    assert stat.S_ISREG(os.lstat(target / "victim").st_mode)
    assert stat.S_ISFIFO(os.lstat(target / "fifo-victim").st_mode)
    assert os.readlink(target / "link-victim") == "elsewhere"
    assert stat.S_ISREG(os.lstat(target / "dir-victim").st_mode)
    assert (target / "ok.txt").read_bytes() == b"ok\n"
    # modes were applied to the restored entries, not to what the old links pointed at
    assert stat.S_IMODE(os.lstat(outside / "sentinel.txt").st_mode) == stat.S_IMODE(
        before[0].entries[b"./sentinel.txt"].mode  # type: ignore[index]
    )


def test_hostile_tree_below_a_real_path(
    repo_path: Path, forger: Forger, world: dict[str, Path]
) -> None:
    """Unsafe names deep in the tree: skipped there, siblings and parents restored."""
    f = forger
    deep = f.dir(
        b"c",
        [
            f.file(b"../../../../escape", b"up and out\n"),
            f.dir(b"..", [f.dir(b"..", [f.file(b"escape2", b"x\n")])]),
            f.file(b"good", b"good\n"),
        ],
    )
    sid = f.snapshot([f.dir(b"a", [f.dir(b"b", [deep])])])
    before = outside_state(world)
    code, lines = restore_json(repo_path, sid, world["target"])
    assert_unchanged(before, outside_state(world))
    assert code == 3
    assert len(warnings_of(lines)) == 2
    assert (world["target"] / "a" / "b" / "c" / "good").read_bytes() == b"good\n"
    assert sorted(os.listdir(world["target"] / "a" / "b" / "c")) == ["good"]


HOSTILE_CASES = [
    pytest.param(kind, values, id=f"{kind}-{name}")
    # files get metadata through a descriptor in a worker thread, directories at the
    # end, other entries by name: one of each
    for kind in ("file", "dir", "fifo")
    for name, values in (
        ("negative-uid", {"uid": -5}),
        ("huge-mode", {"mode": 1 << 40}),
        ("xattr-name-with-nul", {"xattrs": [(b"user.a\0b", b"v")]}),
    )
    # the archiver records xattrs of files and directories only
    if kind != "fifo" or name != "xattr-name-with-nul"
]


@pytest.mark.parametrize(("kind", "hostile"), HOSTILE_CASES)
def test_hostile_metadata_values_give_warnings_not_a_crash(
    repo_path: Path,
    forger: Forger,
    world: dict[str, Path],
    kind: str,
    hostile: dict[str, object],
) -> None:
    """Out-of-range numbers and malformed xattr names in a node: a warning, never exit 1.

    The restorer catches OSError around metadata calls, but Python raises OverflowError
    or ValueError for values the kernel interface cannot even take.
    """
    f = forger
    if kind == "file":
        node = f.file(b"victim", b"content\n", **hostile)
    elif kind == "dir":
        node = f.dir(b"victim", [f.file(b"inside", b"inside\n")])
        for key, value in hostile.items():
            setattr(node, key, value)
    else:
        node = Node(name=b"victim", type=kind, mode=0o600, rdev=os.makedev(1, 3))
        for key, value in hostile.items():
            setattr(node, key, value)
    sid = f.snapshot([node, f.file(b"ok.txt", b"ok\n")])
    before = outside_state(world)
    code, lines = restore_json(repo_path, sid, world["target"])
    assert_unchanged(before, outside_state(world))
    assert code == 3, lines
    assert any("victim" in w for w in warnings_of(lines)), lines
    assert (world["target"] / "ok.txt").read_bytes() == b"ok\n"
    leftovers = [p for p in os.listdir(world["target"]) if p.startswith(".strongroom-tmp-")]
    assert leftovers == []


def test_a_failed_xattr_does_not_cost_the_mode_and_times(
    repo_path: Path, forger: Forger, world: dict[str, Path]
) -> None:
    """One metadata item that cannot be set must not stop the others being set."""
    f = forger
    sid = f.snapshot(
        [
            f.file(b"f", b"x\n", mode=0o640, xattrs=[(b"user.ok", b"1"), (b"", b"bad")]),
        ]
    )
    code, lines = restore_json(repo_path, sid, world["target"])
    assert code == 3
    st = os.lstat(world["target"] / "f")
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == TIME_NS
    assert [w.split(":")[0] for w in warnings_of(lines)] == ["/f"]


def test_hostile_rdev_gives_a_warning_not_a_crash(
    repo_path: Path, forger: Forger, world: dict[str, Path]
) -> None:
    f = forger
    sid = f.snapshot(
        [
            Node(name=b"neg", type="chardev", mode=0o600, rdev=-1),
            Node(name=b"huge", type="blockdev", mode=0o600, rdev=-(1 << 40)),
            f.file(b"ok.txt", b"ok\n"),
        ]
    )
    code, lines = restore_json(repo_path, sid, world["target"])
    assert code == 3, lines
    assert len(warnings_of(lines)) == 2
    assert sorted(os.listdir(world["target"])) == ["ok.txt"]


@pytest.mark.root
def test_device_nodes_without_the_privilege_are_skipped_with_a_warning(
    repo_path: Path, forger: Forger, world: dict[str, Path]
) -> None:
    """Restoring device nodes as 'non-root': CAP_MKNOD is dropped for the child process."""
    if os.geteuid() != 0:
        pytest.skip("the test drops one capability from root")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not installed")
    f = forger
    sid = f.snapshot(
        [
            Node(name=b"null", type="chardev", mode=0o666, rdev=os.makedev(1, 3)),
            Node(name=b"sda", type="blockdev", mode=0o660, rdev=os.makedev(8, 0)),
            Node(name=b"fifo", type="fifo", mode=0o600),
            f.file(b"ok.txt", b"ok\n"),
        ]
    )
    target = world["target"]
    before = outside_state(world)
    proc = subprocess.run(
        [
            setpriv,
            "--bounding-set=-mknod",
            "--inh-caps=-all",
            sys.executable,
            "-m",
            "strongroom",
            "--repo",
            str(repo_path),
            "--json",
            "restore",
            sid,
            "--target",
            str(target),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert_unchanged(before, outside_state(world))
    assert proc.returncode == 3, proc.stderr.decode(errors="replace")
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    warnings = warnings_of(lines)
    assert len(warnings) == 2, warnings
    assert any("/null" in w and "chardev" in w for w in warnings)
    assert any("/sda" in w and "blockdev" in w for w in warnings)
    assert sorted(os.listdir(target)) == ["fifo", "ok.txt"]
    assert (target / "ok.txt").read_bytes() == b"ok\n"
    assert b"Traceback" not in proc.stderr
