"""RetryingBackend: which errors are retried, how often, how long it waits, and the
verbs whose retries need care (listings, removes, staged objects)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from strongroom.backend import (
    BackendError,
    MemoryBackend,
    NoSpace,
    ObjectInfo,
    ObjectNotFound,
    PermanentError,
    StagedObject,
    TransientError,
)
from strongroom.backend.retry import MaybeApplied, RetryingBackend


class Scripted(MemoryBackend):
    """A memory backend whose verbs first raise the errors queued for them, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.script: dict[str, list[BackendError]] = {}
        self.calls: dict[str, int] = {}

    def fail(self, verb: str, *errors: BackendError) -> Scripted:
        self.script.setdefault(verb, []).extend(errors)
        return self

    def _step(self, verb: str) -> None:
        self.calls[verb] = self.calls.get(verb, 0) + 1
        queued = self.script.get(verb)
        if queued:
            raise queued.pop(0)

    def save(self, name: str, data: bytes | bytearray | memoryview) -> None:
        self._step("save")
        super().save(name, data)

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._step("load")
        return super().load(name, offset, length)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._step("list")
        yield from super().list(prefix)

    def remove(self, name: str) -> None:
        self._step("remove")
        super().remove(name)

    def stat(self, name: str) -> ObjectInfo:
        self._step("stat")
        return super().stat(name)

    def exists(self) -> bool:
        self._step("exists")
        return super().exists()

    def create(self) -> None:
        self._step("create")
        super().create()

    def stage(self, prefix: str) -> _ScriptedStaged:  # type: ignore[override]
        return _ScriptedStaged(self, super().stage(prefix))


class _ScriptedStaged:
    def __init__(self, backend: Scripted, inner: StagedObject) -> None:
        self._backend, self._inner = backend, inner

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.write(data)

    def publish(self, name: str) -> None:
        self._backend._step("publish")
        self._inner.publish(name)

    def discard(self) -> None:
        self._inner.discard()


@pytest.fixture
def inner() -> Scripted:
    b = Scripted()
    b.create()
    b.save("data/p", b"pack")
    b.calls.clear()
    return b


def retried(inner: Scripted, attempts: int = 4) -> tuple[RetryingBackend, list[float]]:
    sleeps: list[float] = []
    b = RetryingBackend(
        inner, attempts=attempts, base_delay=1.0, max_delay=5.0, sleep=sleeps.append
    )
    return b, sleeps


def test_transient_errors_are_retried_until_success(inner: Scripted) -> None:
    b, sleeps = retried(inner)
    inner.fail("load", TransientError("reset"), TransientError("503"))
    assert b.load("data/p") == b"pack"
    assert inner.calls["load"] == 3
    assert b.retries == len(sleeps) == 2


def test_attempts_are_bounded_and_the_last_error_says_so(inner: Scripted) -> None:
    b, sleeps = retried(inner, attempts=4)
    inner.fail("load", *[TransientError(f"503 #{i}") for i in range(10)])
    with pytest.raises(TransientError, match=r"503 #3 \(gave up after 4 attempts\)"):
        b.load("data/p")
    assert inner.calls["load"] == 4
    assert b.retries == len(sleeps) == 3


@pytest.mark.parametrize(
    "error", [PermanentError("403"), ObjectNotFound("gone"), NoSpace("full")], ids=type
)
def test_other_errors_are_never_retried(inner: Scripted, error: BackendError) -> None:
    b, sleeps = retried(inner)
    inner.fail("load", error)
    with pytest.raises(type(error)) as info:
        b.load("data/p")
    assert info.value is error
    assert inner.calls["load"] == 1 and sleeps == [] and b.retries == 0


def test_delays_grow_exponentially_with_jitter_up_to_the_cap() -> None:
    b = RetryingBackend(MemoryBackend(), base_delay=1.0, max_delay=5.0, rng=random.Random(1))
    for _ in range(200):
        delays = [b.delay(n) for n in range(1, 7)]
        caps = [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
        assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    spread = {round(b.delay(3), 3) for _ in range(50)}
    assert len(spread) > 10  # jittered: many writers do not retry in lockstep


def test_a_listing_is_retried_whole(inner: Scripted) -> None:
    for i in range(5):
        inner.save(f"index/{i}", b"i")
    b, _ = retried(inner)
    inner.fail("list", TransientError("page 2 failed"))
    assert [i.name for i in b.list("index/")] == [f"index/{i}" for i in range(5)]
    assert inner.calls["list"] == 2


def test_a_listing_that_keeps_failing_raises(inner: Scripted) -> None:
    b, _ = retried(inner, attempts=2)
    inner.fail("list", TransientError("a"), TransientError("b"))
    with pytest.raises(TransientError):
        b.list("")


def test_not_found_after_a_remove_that_may_have_happened_is_success(inner: Scripted) -> None:
    b, _ = retried(inner)
    inner.fail("remove", MaybeApplied("answer lost"))
    inner.objects.pop("data/p")  # as if the lost DELETE went through
    b.remove("data/p")
    assert inner.calls["remove"] == 2


def test_not_found_after_a_remove_that_surely_failed_is_not_found(inner: Scripted) -> None:
    b, _ = retried(inner)
    inner.fail("remove", TransientError("refused before anything happened"))
    inner.objects.pop("data/p")
    with pytest.raises(ObjectNotFound):
        b.remove("data/p")


def test_publishing_a_staged_object_is_retried(inner: Scripted) -> None:
    b, _ = retried(inner)
    staged = b.stage("data/")
    staged.write(b"pa")
    staged.write(b"ck2")
    inner.fail("publish", TransientError("reset"), TransientError("reset"))
    staged.publish("data/p2")
    assert inner.load("data/p2") == b"pack2"
    assert inner.calls["publish"] == 3


@pytest.mark.parametrize(
    ("verb", "call"),
    [
        ("save", lambda b: b.save("x", b"1")),
        ("load", lambda b: b.load("data/p", 1, 2)),
        ("stat", lambda b: b.stat("data/p")),
        ("exists", lambda b: b.exists()),
        ("create", lambda b: b.create()),
    ],
)
def test_every_verb_is_retried(
    inner: Scripted, verb: str, call: Callable[[RetryingBackend], object]
) -> None:
    b, _ = retried(inner)
    inner.fail(verb, TransientError("once"))
    call(b)
    assert inner.calls[verb] == 2 and b.retries == 1
