"""The director's side of an agent session: serve one agent's backup into a repository,
restore through it, or have it check a file or run a command on the client.

The agent proposes chunk ids; the director says which it lacks; for those the agent
sends zstd-compressed data, which the director decompresses (bounded), checks against
the keyed id (a client cannot poison the repository with wrong data under another
client's id), encrypts and packs. The snapshot's client and job are the director's,
never the agent's word. Streams the job runs on the director are read here, into the
same packs, while the agent walks the client, and grafted below /stdin of the agent's
tree before the snapshot is written; any failing stream means no snapshot.
"""

from __future__ import annotations

import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec

from strongroom.agent.protocol import (
    MAX_IDS,
    MINOR,
    MINOR_CLIENT_CHECKS,
    MINOR_STREAMS,
    RESTORE_BATCH,
    RESTORE_BATCH_BYTES,
    STORE_BATCH,
    VERSION,
    ProtocolError,
    SessionClosed,
    announced_minor,
    read_frame,
    remote_error,
    write_frame,
)
from strongroom.agent.protocol import (
    field as get,
)
from strongroom.clock import Clock
from strongroom.engine.archiver import Archiver
from strongroom.engine.fsmeta import display_path
from strongroom.engine.sink import RepositorySink
from strongroom.engine.streams import CommandStream, StreamSource, graft, stream_path
from strongroom.errors import (
    EXIT_CLIENT_UNREACHABLE,
    IntegrityError,
    StrongroomError,
)
from strongroom.repository import DATA, TREE, Node, Repository, Snapshot, Summary, compression
from strongroom.repository.crypto import blob_id
from strongroom.repository.snapshot import decode_snapshot
from strongroom.repository.tree import FILE, decode_tree, encode_tree

REQUESTS = frozenset({
    "known", "claim", "known_many", "claim_many", "store", "store_many", "finish", "discard",
    "commit", "done", "failed",
})  # fmt: skip


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
    # Run by the agent on the client (name, command and timeout are sent), and here.
    client_streams: Sequence[CommandStream] = ()
    director_streams: Sequence[StreamSource] = ()


@dataclass
class AgentResult:
    snapshot: Snapshot
    warnings: list[str] = field(default_factory=list)
    log: str = ""
    # The agent's requests by op (each one a round trip).
    requests: Counter[str] = field(default_factory=Counter)


@dataclass
class AgentRestore:
    tree: bytes
    target: str
    includes: Sequence[str] = ()
    excludes: Sequence[str] = ()
    verify: bool = False


class _DirectorStreams:
    """A job's director-side streams, read on a thread while the agent walks the client,
    into the session's packs; waited for before those packs are finished."""

    def __init__(self, streams: Sequence[StreamSource], sink: RepositorySink, clock: Clock):
        self._streams = list(streams)
        self._archiver = Archiver(None, clock, sink=sink, workers=1)
        self._nodes: list[tuple[str, Node]] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._read, name="strongroom-stream", daemon=True)

    def start(self) -> None:
        if self._streams:
            self._thread.start()

    def _read(self) -> None:
        try:
            for stream in self._streams:
                self._nodes.append((stream.name, self._archiver.archive_stream(stream)))
        except BaseException as e:
            self._error = e

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def wait(self) -> list[tuple[str, Node]]:
        """Each stream's name and file node, once all are stored; or the failure."""
        if self._thread.ident is not None:
            self._thread.join()
        self.raise_if_failed()
        return self._nodes

    def stop(self) -> None:
        """The session failed: stop the commands, and wait until nothing writes."""
        for stream in self._streams:
            stream.stop()
        if self._thread.ident is not None:
            self._thread.join()

    @property
    def summary(self) -> Summary:
        return self._archiver.summary


@dataclass(frozen=True)
class ClientFile:
    """What the agent's ``stat`` found at a path on the client (following links)."""

    mtime_ns: int = 0
    size: int = 0
    regular: bool = False
    error: str | None = None  # why it could not be read (no such file...), else None


@dataclass(frozen=True)
class ClientCommand:
    """How a command the agent ran on the client ended."""

    exit_code: int
    timed_out: bool
    output: str  # the last lines of its stderr (else stdout), for the reason


class AgentProcess:
    """One agent process (usually `ssh HOST strongroom agent`) serving one request."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        timeout_s: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.command = list(command)
        self.timeout_s = timeout_s
        self.env = None if env is None else dict(env)  # of ssh; None: this process's
        self._stderr: list[bytes] = []

    def stat(self, path: str) -> ClientFile:
        """The size and mtime of ``path`` on the client, as the agent sees it."""

        def body(r: Any, w: Any) -> ClientFile:
            self._require(self._hello(r, w), MINOR_CLIENT_CHECKS, "checking a file there")
            write_frame(w, {"op": "stat", "path": path})
            reply = read_frame(r, frozenset({"stat"}))
            if (error := reply.get("error")) is not None:
                return ClientFile(error=str(error))
            return ClientFile(get(reply, "mtime_ns", int), get(reply, "size", int),
                              bool(reply.get("regular")))  # fmt: skip

        result = self._with_agent(body, lambda: None)
        assert isinstance(result, ClientFile)
        return result

    def run(
        self, command: Sequence[str], timeout_s: float, env: Mapping[str, str]
    ) -> ClientCommand:
        """Run ``command`` on the client (no shell, stdin from /dev/null, killed with all
        it started at ``timeout_s``), with ``env`` added to the agent's environment."""

        def body(r: Any, w: Any) -> ClientCommand:
            self._require(self._hello(r, w), MINOR_CLIENT_CHECKS, "running a command there")
            write_frame(w, {"op": "run", "command": list(command), "timeout": timeout_s,
                            "env": dict(env)})  # fmt: skip
            reply = read_frame(r, frozenset({"ran"}))
            return ClientCommand(get(reply, "exit_code", int), bool(reply.get("timed_out")),
                                 str(reply.get("output", "")))  # fmt: skip

        result = self._with_agent(body, lambda: None)
        assert isinstance(result, ClientCommand)
        return result

    @staticmethod
    def _require(minor: int, needed: int, what: str) -> None:
        if minor < needed:
            raise ProtocolError(
                f"the client's agent speaks protocol {VERSION}.{minor}, and {what} needs "
                f"{VERSION}.{needed}",
                hint="upgrade strongroom on the client",
            )

    def _with_agent(
        self, body: Callable[[Any, Any], object], on_failure: Callable[[], None]
    ) -> object:
        try:
            proc = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, env=self.env,
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

    def _hello(self, r: Any, w: Any) -> int:
        """Exchange hellos; the agent's minor version (0 when it predates them)."""
        try:
            write_frame(w, {"op": "hello", "version": VERSION, "minor": MINOR})
            hello = read_frame(r, frozenset({"hello"}))
        except (SessionClosed, BrokenPipeError, ConnectionResetError):
            raise self._unreachable("the agent did not answer") from None
        if hello.get("version") != VERSION or not hello.get("ok"):
            raise ProtocolError(
                f"the agent speaks protocol {hello.get('version')!r}, this director {VERSION}"
            )
        return announced_minor(hello)


class AgentSession(AgentProcess):
    """One agent process serving one backup or restore into or from ``repo``."""

    def __init__(
        self,
        command: Sequence[str],
        repo: Repository,
        clock: Clock,
        *,
        timeout_s: float | None = None,
        before_commit: Callable[[], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(command, timeout_s=timeout_s, env=env)
        self.repo = repo
        self.clock = clock
        self._before_commit = before_commit

    def backup(self, request: AgentBackup) -> AgentResult:
        sink = RepositorySink(self.repo, self.clock, before_commit=self._before_commit)
        streams = _DirectorStreams(request.director_streams, sink, self.clock)

        def on_failure() -> None:
            streams.stop()  # first: a stream's thread may be writing into the sink
            sink.discard()

        result = self._with_agent(
            lambda r, w: self._session(r, w, sink, request, streams), on_failure
        )
        assert isinstance(result, AgentResult)
        return result

    def restore(self, request: AgentRestore) -> dict[str, Any]:
        """Restore a tree onto the client; returns the agent's counts and messages."""
        result = self._with_agent(lambda r, w: self._restore(r, w, request), lambda: None)
        assert isinstance(result, dict)
        return result

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
        requests: Counter[str] = Counter()
        while True:
            message = read_frame(r, frozenset({"tree", "blob", "blobs", "size", "done", "failed"}))
            op = message["op"]
            requests[op] += 1
            if op == "done":
                return {**message, "requests": requests}
            if op == "failed":
                raise remote_error(message, "on the client: ")
            if op == "blobs":
                write_frame(w, {"op": "ok", "data": self._blobs(message, allowed)})
                continue
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

    def _blobs(self, message: dict[str, Any], allowed: set[bytes]) -> list[bytes | dict[str, Any]]:
        """The data of the blobs a ``blobs`` request names, in order, as many as fit in
        RESTORE_BATCH_BYTES (at least one); for a blob that cannot be read, why."""
        ids = get(message, "ids", list)
        if not 1 <= len(ids) <= RESTORE_BATCH:
            raise ProtocolError(f"blobs takes 1 to {RESTORE_BATCH} ids")
        if not all(isinstance(bid, bytes) and bid in allowed for bid in ids):
            raise ProtocolError("the agent asked for data outside the snapshot")
        out: list[bytes | dict[str, Any]] = []
        size = 0
        for bid in ids:
            try:
                data = self.repo.load_blob(bid, DATA)
            except StrongroomError as e:
                out.append({"message": str(e), "exit_code": e.exit_code})
                continue
            out.append(data)
            size += len(data)
            if size >= RESTORE_BATCH_BYTES:
                break
        return out

    def _session(
        self,
        r: Any,
        w: Any,
        sink: RepositorySink,
        request: AgentBackup,
        streams: _DirectorStreams,
    ) -> AgentResult:
        minor = self._hello(r, w)
        if request.client_streams and minor < MINOR_STREAMS:
            raise ProtocolError(
                f"the client's agent speaks protocol {VERSION}.{minor}, and streams run on "
                f"the client need {VERSION}.{MINOR_STREAMS}",
                hint='upgrade strongroom on the client, or run the stream with on = "director"',
            )
        params = self.repo.chunker_params
        extra: dict[str, Any] = {}
        if request.client_streams:  # only then: an agent before 1.1 would not know it
            extra["streams"] = [
                {"name": s.name, "command": list(s.command), "timeout": s.timeout_s}
                for s in request.client_streams
            ]
        write_frame(w, {
            "op": "backup", "paths": list(request.paths), "client": request.client,
            "job": request.job, "tags": list(request.tags), "excludes": list(request.excludes),
            "hostname": request.hostname, "username": request.username,
            "program_version": request.program_version,
            "cache_key": f"{self.repo.id}-{request.client}-{request.job}",
            "id_key": self.repo.master.id_key,
            "chunker": [params.min_size, params.avg_size, params.max_size,
                        self.repo.master.chunker_seed],
            "compression": self.repo.config.compression_level, **extra,
        })  # fmt: skip
        streams.start()
        committed: Snapshot | None = None
        requests: Counter[str] = Counter()
        while True:
            message = read_frame(r, REQUESTS)
            op = message["op"]
            requests[op] += 1
            if op == "done":
                if committed is None:
                    raise ProtocolError("the agent finished without a snapshot")
                warnings = [str(x) for x in message.get("warnings", [])]
                return AgentResult(committed, warnings, self.log, requests)
            if op == "failed":
                raise remote_error(message, "on the client: ")
            try:
                reply, snap = self._answer(sink, message, request, streams)
            except StrongroomError as e:
                write_frame(w, {"op": "error", "message": str(e), "exit_code": e.exit_code})
                raise
            if snap is not None:
                committed = snap
            write_frame(w, {"op": "ok", **reply})

    def _answer(
        self,
        sink: RepositorySink,
        message: dict[str, Any],
        request: AgentBackup,
        streams: _DirectorStreams,
    ) -> tuple[dict[str, Any], Snapshot | None]:
        streams.raise_if_failed()  # a failed stream ends the session at once
        op = message["op"]
        if op in ("known", "claim"):
            bid = get(message, "id", bytes)
            if len(bid) != 32:
                raise ProtocolError("blob ids are 32 bytes")
            return {"value": sink.known(bid) if op == "known" else sink.claim(bid)}, None
        if op in ("known_many", "claim_many"):
            ids = get(message, "ids", list)
            if len(ids) > MAX_IDS or not all(isinstance(b, bytes) and len(b) == 32 for b in ids):
                raise ProtocolError(f"{op} takes at most {MAX_IDS} ids of 32 bytes")
            ask = sink.known if op == "known_many" else sink.claim
            return {"values": [ask(bid) for bid in ids]}, None
        if op == "store":
            return {"stored": self._store(sink, message)}, None
        if op == "store_many":
            blobs = get(message, "blobs", list)
            if len(blobs) > STORE_BATCH or not all(isinstance(b, dict) for b in blobs):
                raise ProtocolError(f"store_many takes at most {STORE_BATCH} blobs")
            return {"stored": [self._store(sink, blob) for blob in blobs]}, None
        if op == "finish":
            streams.wait()  # their packs are finished with the agent's
            sink.finish()
            return {}, None
        if op == "discard":
            streams.stop()
            sink.discard()
            return {}, None
        # commit: the agent's snapshot, with the director's word on who and when
        try:
            theirs = decode_snapshot(get(message, "snapshot", bytes), "from-agent")
        except IntegrityError as e:
            raise ProtocolError(str(e)) from None
        if not self.repo.has_blob(theirs.tree):
            raise ProtocolError("the agent's snapshot names a tree it never stored")
        for stream in request.client_streams:  # a snapshot without its dump must not look good
            if not self._has_file(theirs.tree, stream_path(stream.name)):
                raise ProtocolError(f"the agent's snapshot lacks the stream {stream.name}")
        tree, paths, summary = theirs.tree, list(theirs.paths), theirs.summary
        nodes = streams.wait()
        if nodes:
            now = self.clock.now_ns()
            tree = graft(tree, nodes, self._agent_tree, lambda n: _save_tree(sink, n), now)
            sink.finish()  # the grafted trees
            paths += [display_path(stream_path(name)) for name, _ in nodes]
            summary = _add(summary, streams.summary)
        snapshot = msgspec.structs.replace(
            theirs,
            tree=tree,
            paths=paths,
            summary=summary,
            client=request.client,
            job=request.job,
            tags=sorted(set(request.tags)),
            time_ns=self.clock.now_ns(),
            prerequisites=list(request.prerequisites),
        )
        snapshot.id = sink.commit(snapshot)
        return {"id": snapshot.id}, snapshot

    def _has_file(self, tree_id: bytes, path: bytes) -> bool:
        current: bytes | None = tree_id
        node: Node | None = None
        for part in path.strip(b"/").split(b"/"):
            if current is None:
                return False
            node = next((n for n in self._agent_tree(current) if n.name == part), None)
            if node is None:
                return False
            current = node.subtree
        return node is not None and node.type == FILE

    def _agent_tree(self, tree_id: bytes) -> list[Node]:
        data = self.repo.load_blob(tree_id, TREE)
        try:
            return decode_tree(data, f"tree {tree_id.hex()[:16]} from the agent").nodes
        except IntegrityError as e:
            raise ProtocolError(str(e)) from None

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


def _save_tree(sink: RepositorySink, nodes: list[Node]) -> bytes:
    data = encode_tree(nodes)
    bid = blob_id(sink.id_key, data)
    if sink.claim(bid):
        sink.store(TREE, bid, data)
    return bid


def _add(agent: Summary, director: Summary) -> Summary:
    """The agent's counts plus those of the streams read on the director."""
    return msgspec.structs.replace(
        agent,
        **{
            name: getattr(agent, name) + getattr(director, name)
            for name in agent.__struct_fields__
            if name != "duration_s" and isinstance(getattr(agent, name), int)
        },
    )
