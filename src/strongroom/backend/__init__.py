"""Storage backends: a local directory, S3, memory, and wrappers around any backend."""

from __future__ import annotations

from strongroom.backend.base import (
    Backend,
    BackendError,
    NoSpace,
    ObjectInfo,
    ObjectNotFound,
    PermanentError,
    StagedObject,
    TransientError,
    load_into,
)
from strongroom.backend.local import LocalBackend
from strongroom.backend.memory import MemoryBackend
from strongroom.errors import UsageError

__all__ = [
    "Backend",
    "BackendError",
    "LocalBackend",
    "MemoryBackend",
    "NoSpace",
    "ObjectInfo",
    "ObjectNotFound",
    "PermanentError",
    "StagedObject",
    "TransientError",
    "load_into",
    "open_backend",
]


def open_backend(url: str) -> Backend:
    """A backend for a repository URL: a path, ``file://path``, ``s3://bucket/prefix``
    (retried on transient errors) or ``memory:``."""
    if url.startswith("s3://"):
        # Imported here: boto3 is slow to import and most commands never need it.
        from strongroom.backend.retry import RetryingBackend
        from strongroom.backend.s3 import S3Backend

        return RetryingBackend(S3Backend.from_url(url))
    if url.startswith("file://"):
        return LocalBackend(url[len("file://") :])
    if url.startswith("memory:"):
        return MemoryBackend(url)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise UsageError(f"unsupported repository URL scheme {scheme!r} in {url!r}")
    return LocalBackend(url)
