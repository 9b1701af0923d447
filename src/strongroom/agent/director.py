"""The director's side of an agent session: serve one agent's backup into a repository.

The agent proposes chunk ids; the director says which it lacks; for those the agent
sends zstd-compressed data, which the director decompresses (bounded), checks against
the keyed id (a client cannot poison the repository with wrong data under another
client's id), encrypts and packs. The snapshot's client and job are the director's,
never the agent's word.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec

from strongroom.agent.protocol import (
    VERSION,
    ProtocolError,
    SessionClosed,
    read_frame,
    remote_error,
    write_frame,
)
from strongroom.agent.protocol import (
    field as get,
)
from strongroom.clock import Clock
from strongroom.engine.sink import RepositorySink
from strongroom.errors import (
    EXIT_CLIENT_UNREACHABLE,
    IntegrityError,
    StrongroomError,
)
from strongroom.repository import DATA, TREE, Repository, Snapshot, compression
from strongroom.repository.crypto import blob_id
from strongroom.repository.snapshot import decode_snapshot
from strongroom.repository.tree import decode_tree

REQUESTS = frozenset({"known", "claim", "store", "finish", "discard", "commit", "done", "failed"})


class ClientUnreachable(StrongroomError):
    exit_code = EXIT_CLIENT_UNREACHABLE
    hint = "check the client's network, sshd, and the ssh_command/agent_command in the config"


@dataclass
class AgentBackup:
    """What the director asks of the agent."""

    paths: Sequence[str]
    client: str
    job: str
    tags: Sequence[str] = ()
    excludes: Sequence[str] = ()
    hostname: str = ""
    username: str = ""
    program_version: str = ""
    prerequisites: Sequence[str] = ()


@dataclass
class AgentResult:
    snapshot: Snapshot
    warnings: list[str] = field(default_factory=list)
    log: str = ""


@dataclass
class AgentRestore:
    tree: bytes
    target: str
    includes: Sequence[str] = ()
    excludes: Sequence[str] = ()
    verify: bool = False


class AgentSession:
    """One agent process (usually `ssh HOST strongroom agent`) serving one backup."""

    def __init__(
        self,
        command: Sequence[str],
        repo: Repository,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        self.command = list(command)
        self.repo = repo
        self.clock = clock
        self.timeout_s = timeout_s
        self._before_commit = before_commit
        self._stderr: list[bytes] = []

    def backup(self, request: AgentBackup) -> AgentResult:
        sink = RepositorySink(self.repo, self.clock, before_commit=self._before_commit)
        result = self._with_agent(lambda r, w: self._session(r, w, sink, request), sink.discard)
        assert isinstance(result, AgentResult)
        return result

    def restore(self, request: AgentRestore) -> dict[str, Any]:
        """Restore a tree onto the client; returns the agent's counts and messages."""
        result = self._with_agent(lambda r, w: self._restore(r, w, request), lambda: None)
        assert isinstance(result, dict)
        return result

    def _with_agent(
        self, body: Callable[[Any, Any], object], on_failure: Callable[[], None]
    ) -> object:
        try:
            proc = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
        except OSError as e:
            raise ClientUnreachable(f"cannot start {self.command[0]}: {e.strerror}") from None
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        drain = threading.Thread(target=self._drain, args=(proc.stderr,), daemon=True)
        drain.start()
        self._proc, self._drainer = proc, drain
        timer = None
        if self.timeout_s:
            timer = threading.Timer(self.timeout_s, proc.kill)
            timer.start()
        try:
            return body(proc.stdout, proc.stdin)
        except (SessionClosed, BrokenPipeError, ConnectionResetError):
            on_failure()
            raise self._unreachable("the connection to the agent was lost") from None
        except BaseException:
            on_failure()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            drain.join(timeout=5)

    def _drain(self, stream: IO[bytes]) -> None:
        for line in stream:
            if len(self._stderr) < 1000:
                self._stderr.append(line)
        stream.close()

    @property
    def log(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def _unreachable(self, what: str) -> ClientUnreachable:
        # Let ssh finish and its last words reach the log: they say why.
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._drainer.join(timeout=5)
        detail = self.log.strip().splitlines()[-1:] or ["no output"]
        return ClientUnreachable(f"{what}: {detail[0]}")

    def _hello(self, r: Any, w: Any) -> None:
        try:
            write_frame(w, {"op": "hello", "version": VERSION})
            hello = read_frame(r, frozenset({"hello"}))
        except (SessionClosed, BrokenPipeError, ConnectionResetError):
            raise self._unreachable("the agent did not answer") from None
        if hello.get("version") != VERSION or not hello.get("ok"):
            raise ProtocolError(
                f"the agent speaks protocol {hello.get('version')!r}, this director {VERSION}"
            )

    def _restore(self, r: Any, w: Any, request: AgentRestore) -> dict[str, Any]:
        self._hello(r, w)
        write_frame(w, {
            "op": "restore", "tree": request.tree, "target": request.target,
            "includes": list(request.includes), "excludes": list(request.excludes),
            "verify": request.verify, "id_key": self.repo.master.id_key,
        })  # fmt: skip
        # Only what this snapshot references may be read: a client cannot ask for
        # another client's data by guessing ids.
        allowed = {request.tree}
        while True:
            message = read_frame(r, frozenset({"tree", "blob", "size", "done", "failed"}))
            op = message["op"]
            if op == "done":
                return message
            if op == "failed":
                raise remote_error(message, "on the client: ")
            bid = get(message, "id", bytes)
            if bid not in allowed:
                raise ProtocolError("the agent asked for data outside the snapshot")
            try:
                if op == "tree":
                    data = self.repo.load_blob(bid, TREE)
                    for node in decode_tree(data, f"tree {bid.hex()[:16]}").nodes:
                        allowed.update(c for c in node.content if isinstance(c, bytes))
                        if node.subtree is not None:
                            allowed.add(node.subtree)
                    reply: dict[str, Any] = {"data": data}
                elif op == "blob":
                    reply = {"data": self.repo.load_blob(bid, DATA)}
                else:
                    loc = self.repo.lookup(bid)
                    reply = {"value": None if loc is None else loc.raw_length}
            except StrongroomError as e:
                write_frame(w, {"op": "error", "message": str(e), "exit_code": e.exit_code})
                continue
            write_frame(w, {"op": "ok", **reply})

    def _session(self, r: Any, w: Any, sink: RepositorySink, request: AgentBackup) -> AgentResult:
        self._hello(r, w)
        params = self.repo.chunker_params
        write_frame(w, {
            "op": "backup", "paths": list(request.paths), "client": request.client,
            "job": request.job, "tags": list(request.tags), "excludes": list(request.excludes),
            "hostname": request.hostname, "username": request.username,
            "program_version": request.program_version,
            "cache_key": f"{self.repo.id}-{request.client}-{request.job}",
            "id_key": self.repo.master.id_key,
            "chunker": [params.min_size, params.avg_size, params.max_size,
                        self.repo.master.chunker_seed],
            "compression": self.repo.config.compression_level,
        })  # fmt: skip
        committed: Snapshot | None = None
        while True:
            message = read_frame(r, REQUESTS)
            op = message["op"]
            if op == "done":
                if committed is None:
                    raise ProtocolError("the agent finished without a snapshot")
                warnings = [str(x) for x in message.get("warnings", [])]
                return AgentResult(committed, warnings, self.log)
            if op == "failed":
                raise remote_error(message, "on the client: ")
            try:
                reply, snap = self._answer(sink, message, request)
            except StrongroomError as e:
                write_frame(w, {"op": "error", "message": str(e), "exit_code": e.exit_code})
                raise
            if snap is not None:
                committed = snap
            write_frame(w, {"op": "ok", **reply})

    def _answer(
        self, sink: RepositorySink, message: dict[str, Any], request: AgentBackup
    ) -> tuple[dict[str, Any], Snapshot | None]:
        op = message["op"]
        if op in ("known", "claim"):
            bid = get(message, "id", bytes)
            if len(bid) != 32:
                raise ProtocolError("blob ids are 32 bytes")
            return {"value": sink.known(bid) if op == "known" else sink.claim(bid)}, None
        if op == "store":
            return {"stored": self._store(sink, message)}, None
        if op == "finish":
            sink.finish()
            return {}, None
        if op == "discard":
            sink.discard()
            return {}, None
        # commit: the agent's snapshot, with the director's word on who and when
        try:
            theirs = decode_snapshot(get(message, "snapshot", bytes), "from-agent")
        except IntegrityError as e:
            raise ProtocolError(str(e)) from None
        if not self.repo.has_blob(theirs.tree):
            raise ProtocolError("the agent's snapshot names a tree it never stored")
        snapshot = msgspec.structs.replace(
            theirs,
            client=request.client,
            job=request.job,
            tags=sorted(set(request.tags)),
            time_ns=self.clock.now_ns(),
            prerequisites=list(request.prerequisites),
        )
        snapshot.id = sink.commit(snapshot)
        return {"id": snapshot.id}, snapshot

    def _store(self, sink: RepositorySink, message: dict[str, Any]) -> int:
        blob_type = get(message, "type", int)
        bid = get(message, "id", bytes)
        raw = get(message, "raw", int)
        data = get(message, "data", bytes)
        if blob_type not in (DATA, TREE) or len(bid) != 32 or not 0 <= raw <= 64 << 20:
            raise ProtocolError("malformed store request")
        what = f"blob {bid.hex()[:16]} from the agent"
        plain = compression.decompress(data, raw, what) if message.get("compressed") else data
        if len(plain) != raw or blob_id(self.repo.master.id_key, plain) != bid:
            raise IntegrityError(f"{what}: content does not match its id; refused")
        stored = sink.store(
            blob_type, bid, plain, compressed=data if message.get("compressed") else None
        )
        return stored.stored_length
