"""A backend on S3-compatible object storage (AWS, MinIO, Ceph, rclone) through boto3.

    s3://BUCKET[/PREFIX][?endpoint=URL&region=R&object_lock_days=N&object_lock_mode=M]

Objects live under ``PREFIX/`` in the bucket, named exactly as on a local backend.
Writes are atomic on S3: a single PUT (with Content-MD5, so the server rejects bytes
damaged on the way) for small objects, a multipart upload that is completed or aborted
for large ones. Reads check the length of what came back, so a truncated answer is an
error, never data. boto3 retries nothing itself; wrap this backend in
``RetryingBackend`` (``open_backend`` does) so retries stay bounded and countable.
Credentials come from boto3's usual chain (environment, files, instance roles) and are
never part of the URL, the location, an error message or the repr.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.client import HTTPException
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.exceptions as boto_errors
from botocore.config import Config
from urllib3.exceptions import HTTPError as Urllib3Error

from strongroom.backend.base import (
    BackendError,
    NoSpace,
    ObjectInfo,
    ObjectNotFound,
    PermanentError,
    TransientError,
    validate_name,
)
from strongroom.backend.retry import MaybeApplied
from strongroom.clock import Clock, SystemClock
from strongroom.errors import UsageError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, GetObjectOutputTypeDef

MiB = 1024 * 1024
# A full pack (16 MiB target) goes up as a multipart upload in 8 MiB parts, as the AWS
# CLI would send it; indexes, snapshots, keys and small packs go in one PUT.
DEFAULT_MULTIPART_THRESHOLD = 8 * MiB
DEFAULT_PART_SIZE = 8 * MiB
SPOOL_IN_MEMORY = 1 * MiB
# Lock objects are rewritten every ten minutes; retaining each version would only pile up.
UNRETAINED_PREFIXES = ("locks/",)

NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "404", "NoSuchBucket"}
QUOTA_CODES = {"QuotaExceeded", "XMinioStorageFull", "InsufficientStorage", "StorageFull"}
TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    # the bytes were damaged on the way: sending them again helps
    "BadDigest",
    "IncompleteBody",
    "XAmzContentSHA256Mismatch",
}
CREDENTIAL_HINT = (
    "check the S3 credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE) "
    "and that they may use this bucket"
)
OBJECT_LOCK_HINT = (
    "Object Lock must be enabled when the bucket is created (`strongroom init` does so "
    "when object_lock_days is set); or remove object_lock_days from the repository URL"
)
URL_PARAMETERS = {"endpoint", "region", "object_lock_days", "object_lock_mode"}


class QuotaExceeded(NoSpace, PermanentError):
    """The bucket's quota is used up: "full" for the user, never retried."""


@dataclass(frozen=True)
class S3Location:
    """Where a repository lives in S3, parsed from its URL (which holds no secrets)."""

    bucket: str
    prefix: str = ""  # "" or "some/path/"
    endpoint: str | None = None
    region: str | None = None
    object_lock_days: int | None = None
    object_lock_mode: str = "GOVERNANCE"

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise UsageError("an S3 repository URL starts with s3://")
        if "@" in parts.netloc:
            raise UsageError(
                "credentials do not belong in the repository URL",
                hint="use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS profile",
            )
        bucket = parts.netloc
        if not bucket or ":" in bucket:
            raise UsageError(f"no valid bucket name in S3 URL s3://{bucket}")
        prefix = parts.path.strip("/")
        if prefix:
            try:
                validate_name(prefix)
            except PermanentError:
                raise UsageError(f"invalid prefix {prefix!r} in S3 URL") from None
            prefix += "/"
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - URL_PARAMETERS)
        if unknown:
            raise UsageError(
                f"unknown S3 URL parameter(s): {', '.join(unknown)}",
                hint=f"known: {', '.join(sorted(URL_PARAMETERS))}",
            )
        single: dict[str, str] = {}
        for key, values in query.items():
            if len(values) != 1 or not values[0]:
                raise UsageError(f"S3 URL parameter {key} needs exactly one value")
            single[key] = values[0]
        return cls(
            bucket,
            prefix,
            _endpoint(single.get("endpoint")),
            single.get("region"),
            _lock_days(single.get("object_lock_days")),
            _lock_mode(single.get("object_lock_mode"), "object_lock_days" in single),
        )

    def __str__(self) -> str:
        text = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{text}?endpoint={self.endpoint}" if self.endpoint else text


def _endpoint(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError("the S3 endpoint must be an http:// or https:// URL")
    if "@" in parts.netloc:
        raise UsageError("credentials do not belong in the S3 endpoint URL")
    return value.rstrip("/")


def _lock_days(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UsageError("object_lock_days must be a whole number of days, at least 1")
    return int(value)


def _lock_mode(value: str | None, have_days: bool) -> str:
    if value is None:
        return "GOVERNANCE"
    if not have_days:
        raise UsageError("object_lock_mode needs object_lock_days")
    if value.upper() not in ("GOVERNANCE", "COMPLIANCE"):
        raise UsageError("object_lock_mode is GOVERNANCE or COMPLIANCE")
    return value.upper()


def _content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


# --- errors ---------------------------------------------------------------------------

# What a boto3 call can raise; the second group is worth another try.
TRANSPORT_ERRORS = (
    boto_errors.BotoCoreError,
    boto_errors.ClientError,
    Urllib3Error,
    HTTPException,
    ConnectionError,
    TimeoutError,
)
TRANSIENT_TRANSPORT_ERRORS = (
    boto_errors.HTTPClientError,  # resets, read timeouts, cut streams
    boto_errors.ConnectionError,  # refused, DNS, connect timeouts
    boto_errors.IncompleteReadError,
    boto_errors.ChecksumError,
    boto_errors.FlexibleChecksumError,
    Urllib3Error,
    HTTPException,
    ConnectionError,
    TimeoutError,
)


def _code_and_status(err: boto_errors.ClientError) -> tuple[str, int]:
    code = str(err.response.get("Error", {}).get("Code", ""))
    status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _is_forbidden(err: Exception) -> bool:
    return isinstance(err, boto_errors.ClientError) and _code_and_status(err)[1] == 403


def translate(err: Exception, what: str) -> BackendError:
    """One S3 or transport failure as a backend error: not found, full, permanent, transient."""
    if isinstance(err, boto_errors.ClientError):
        code, status = _code_and_status(err)
        message = str(err.response.get("Error", {}).get("Message", "")).strip()[:200]
        detail = f"{what}: S3 {code or status}" + (f" ({message})" if message else "")
        if code == "NoSuchBucket":
            return ObjectNotFound(f"{what}: the bucket does not exist")
        if code in NOT_FOUND_CODES or status == 404:
            return ObjectNotFound(f"{what}: not found")
        if code in QUOTA_CODES or status == 507:
            return QuotaExceeded(f"{detail}: the bucket's quota is used up")
        if code in TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientError(detail)
        if status == 403:
            return PermanentError(detail, hint=CREDENTIAL_HINT)
        return PermanentError(detail)
    if isinstance(err, boto_errors.NoCredentialsError | boto_errors.PartialCredentialsError):
        return PermanentError(f"{what}: no usable S3 credentials", hint=CREDENTIAL_HINT)
    if isinstance(err, boto_errors.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(err):
        return PermanentError(f"{what}: the S3 endpoint's TLS certificate is not trusted")
    if isinstance(err, TRANSIENT_TRANSPORT_ERRORS):
        return TransientError(f"{what}: {type(err).__name__}: {err}")
    return PermanentError(f"{what}: {type(err).__name__}: {err}")


# --- the backend ----------------------------------------------------------------------


class S3Backend:
    """The Backend verbs over one bucket and prefix."""

    def __init__(
        self,
        location: S3Location,
        *,
        session: boto3.session.Session | None = None,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        list_page_size: int = 1000,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_connections: int = 32,
        clock: Clock | None = None,
    ) -> None:
        if not 0 < part_size <= multipart_threshold:
            raise ValueError("need 0 < part_size <= multipart_threshold")
        self.target = location
        self.location = str(location)
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.list_page_size = list_page_size
        self._clock = clock or SystemClock()
        session = session or boto3.session.Session()
        config = Config(
            s3={"addressing_style": "path"} if location.endpoint else {},
            # One attempt per call: RetryingBackend decides, so every retry is visible.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_connections,
            # Content-MD5 instead of the newer checksum trailers many S3 servers lack.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            self._s3: S3Client = session.client(
                "s3",
                endpoint_url=location.endpoint,
                region_name=location.region or session.region_name or "us-east-1",
                config=config,
            )
        except boto_errors.BotoCoreError as e:
            raise translate(e, f"connecting to {self.location}") from e

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Backend:
        return cls(S3Location.parse(url), **options)

    def __repr__(self) -> str:
        return f"S3Backend({self.location!r})"

    def _key(self, name: str) -> str:
        return self.target.prefix + validate_name(name)

    # --- bucket ---------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the bucket exists. Credentials limited to the prefix may be refused
        HeadBucket; if they may list the prefix, the bucket is there all the same."""
        what = f"checking bucket {self.target.bucket}"
        try:
            self._s3.head_bucket(Bucket=self.target.bucket)
        except TRANSPORT_ERRORS as e:
            err = translate(e, what)
            if isinstance(err, ObjectNotFound):
                return False
            if not _is_forbidden(e):
                raise err from e
            try:
                self._s3.list_objects_v2(
                    Bucket=self.target.bucket, Prefix=self.target.prefix, MaxKeys=1
                )
            except TRANSPORT_ERRORS:
                raise err from e
        return True

    def create(self) -> None:
        """Create the bucket unless it exists; the prefix needs nothing (S3 has no dirs)."""
        if self.exists():
            return
        what = f"creating bucket {self.target.bucket}"
        options: dict[str, Any] = {}
        region = self._s3.meta.region_name
        if region and region != "us-east-1":
            options["CreateBucketConfiguration"] = {"LocationConstraint": region}
        if self.target.object_lock_days is not None:
            options["ObjectLockEnabledForBucket"] = True
        try:
            self._s3.create_bucket(Bucket=self.target.bucket, **options)
        except boto_errors.ClientError as e:
            code, _ = _code_and_status(e)
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists") and self.exists():
                return  # created meanwhile, by us or another writer
            if code == "BucketAlreadyExists":
                raise PermanentError(f"{what}: the name is taken by another account") from e
            raise translate(e, what) from e
        except TRANSPORT_ERRORS as e:
            raise translate(e, what) from e

    # --- writing --------------------------------------------------------------------

    def save(self, name: str, data: bytes | bytearray | memoryview) -> None:
        key = self._key(name)
        view = memoryview(data).cast("B")
        if view.nbytes < self.multipart_threshold:
            self._put(name, key, bytes(view))
            return
        size = self.part_size
        parts = (bytes(view[o : o + size]) for o in range(0, view.nbytes, size))
        self._multipart(name, key, lambda: next(parts, b""))

    def stage(self, prefix: str) -> _S3Staged:
        """A spooled temporary file, uploaded on publish: S3 needs the name up front."""
        return _S3Staged(self, prefix)

    def _retention(self, name: str) -> dict[str, Any]:
        days = self.target.object_lock_days
        if days is None or name.startswith(UNRETAINED_PREFIXES):
            return {}
        now = datetime.fromtimestamp(self._clock.now_ns() / 1e9, UTC)
        return {
            "ObjectLockMode": self.target.object_lock_mode,
            "ObjectLockRetainUntilDate": now + timedelta(days=days),
        }

    def _write_error(self, err: Exception, what: str, retention: dict[str, Any]) -> BackendError:
        """A bad request while asking for retention is most likely about the retention."""
        if retention and isinstance(err, boto_errors.ClientError):
            code, status = _code_and_status(err)
            if status in (400, 501) and code not in TRANSIENT_CODES:
                return PermanentError(
                    f"{what}: the S3 server refused object-lock retention ({code or status})",
                    hint=OBJECT_LOCK_HINT,
                )
        return translate(err, what)

    def _put(self, name: str, key: str, data: bytes) -> None:
        retention = self._retention(name)
        try:
            self._s3.put_object(
                Bucket=self.target.bucket,
                Key=key,
                Body=data,
                ContentMD5=_content_md5(data),
                **retention,
            )
        except TRANSPORT_ERRORS as e:
            raise self._write_error(e, f"saving {name}", retention) from e

    def _multipart(self, name: str, key: str, next_part: Callable[[], bytes]) -> None:
        """Upload parts from ``next_part`` (b"" ends), complete, check the size; on any
        failure abort, so no half object and no orphaned parts are left behind."""
        what = f"saving {name}"
        retention = self._retention(name)
        bucket = self.target.bucket
        try:
            upload_id = self._s3.create_multipart_upload(Bucket=bucket, Key=key, **retention)[
                "UploadId"
            ]
        except TRANSPORT_ERRORS as e:
            raise self._write_error(e, what, retention) from e
        parts: list[CompletedPartTypeDef] = []
        total = 0
        try:
            while part := next_part():
                number = len(parts) + 1
                answer = self._s3.upload_part(
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=part,
                    ContentMD5=_content_md5(part),
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
                total += len(part)
            self._s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException as e:
            self._abort(key, upload_id)
            if isinstance(e, TRANSPORT_ERRORS):
                raise translate(e, what) from e
            raise
        size = self.stat(name).size
        if size != total:
            raise TransientError(f"{what}: the completed upload has {size} bytes, not {total}")

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self._s3.abort_multipart_upload(Bucket=self.target.bucket, Key=key, UploadId=upload_id)
        except TRANSPORT_ERRORS:
            pass  # best effort: a lifecycle rule or the server's expiry cleans up the rest

    # --- reading --------------------------------------------------------------------

    def load(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Always a ranged GET, even for a whole object: the Content-Range the server
        sends back tells a complete answer from a cut one whatever the Content-Length."""
        key = self._key(name)
        what = f"loading {name}"
        if length == 0:
            if offset > self.stat(name).size:
                raise ObjectNotFound(f"{what}: short read (the object ends before {offset})")
            return b""
        wanted = f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))
        try:
            answer = self._s3.get_object(Bucket=self.target.bucket, Key=key, Range=wanted)
            body = answer["Body"].read()
        except TRANSPORT_ERRORS as e:
            mapped = translate(e, what)
            if isinstance(e, boto_errors.ClientError) and _code_and_status(e)[1] == 416:
                self.stat(name)  # ObjectNotFound if it is not there at all
                if length is None:
                    return b""  # from the end (or an empty object): nothing, like a file
                mapped = ObjectNotFound(f"{what}: short read (the object ends before {offset})")
            raise mapped from e
        return _checked(what, answer, body, offset, length)

    def stat(self, name: str) -> ObjectInfo:
        try:
            head = self._s3.head_object(Bucket=self.target.bucket, Key=self._key(name))
        except TRANSPORT_ERRORS as e:
            raise translate(e, f"stat {name}") from e
        return ObjectInfo(name, head["ContentLength"], head["LastModified"].timestamp())

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """The complete listing, sorted by name, or an error: never a partial answer."""
        what = f"listing {prefix or 'everything'}"
        cut = len(self.target.prefix)
        infos: list[ObjectInfo] = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.target.bucket,
                Prefix=self.target.prefix + prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][cut:]
                    if name and not name.endswith("/"):  # not a console's "folder" marker
                        infos.append(ObjectInfo(name, obj["Size"], obj["LastModified"].timestamp()))
                if page.get("IsTruncated") and not page.get("NextContinuationToken"):
                    # botocore would stop here quietly: that would read as "nothing more"
                    raise TransientError(f"{what}: a truncated page without a continuation token")
        except TRANSPORT_ERRORS as e:
            raise translate(e, what) from e
        infos.sort(key=lambda info: info.name)
        return iter(infos)

    def remove(self, name: str) -> None:
        """Delete; ObjectNotFound if absent (S3's DELETE alone cannot tell)."""
        self.stat(name)
        try:
            self._s3.delete_object(Bucket=self.target.bucket, Key=self._key(name))
        except TRANSPORT_ERRORS as e:
            mapped = translate(e, f"removing {name}")
            if isinstance(mapped, TransientError):
                mapped = MaybeApplied(str(mapped))
            raise mapped from e

    def close(self) -> None:
        self._s3.close()


CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def _checked(
    what: str, answer: GetObjectOutputTypeDef, body: bytes, offset: int, length: int | None
) -> bytes:
    """The requested bytes of a ranged GET, checked against what the server says it sent.

    A cut answer is a TransientError (asking again helps); an object shorter than the
    range is ObjectNotFound, as a short read is on a local backend.
    """
    declared = answer.get("ContentLength")
    if declared is not None and declared != len(body):
        raise TransientError(f"{what}: truncated answer ({len(body)} of {declared} bytes)")
    content_range = answer.get("ContentRange")
    if not content_range:
        # The server ignored Range and sent the whole object (HTTP allows it): slice it.
        if answer["ResponseMetadata"]["HTTPStatusCode"] != 200:
            raise TransientError(f"{what}: a partial answer without Content-Range")
        end = len(body) if length is None else offset + length
        if end > len(body):
            raise ObjectNotFound(f"{what}: short read ({len(body)} bytes in the object)")
        return body[offset:end]
    match = CONTENT_RANGE.fullmatch(content_range.strip())
    if match is None or int(match[1]) != offset:
        raise TransientError(f"{what}: unexpected Content-Range {content_range!r}")
    first, last, total = int(match[1]), int(match[2]), int(match[3])
    if len(body) != last - first + 1:
        raise TransientError(f"{what}: truncated answer ({len(body)} of {last - first + 1} bytes)")
    wanted = total - offset if length is None else length
    if len(body) != wanted:
        if total < offset + wanted:
            raise ObjectNotFound(f"{what}: short read (the object has {total} bytes)")
        raise TransientError(f"{what}: got {len(body)} bytes, asked for {wanted}")
    return body


class _S3Staged:
    """A pack being written: spooled to memory, then to a temporary file, uploaded on
    publish. A failed publish keeps the spool, so publishing again retries the upload."""

    def __init__(self, backend: S3Backend, prefix: str) -> None:
        self._backend = backend
        self._what = f"a new object under {prefix}"
        # Closed by publish or discard, not by a with-block: it outlives this call.
        spool = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, prefix="strongroom-s3-")  # noqa: SIM115
        self._spool: tempfile.SpooledTemporaryFile[bytes] | None = spool
        self._size = 0

    def _open(self) -> tempfile.SpooledTemporaryFile[bytes]:
        if self._spool is None:
            raise PermanentError(f"saving {self._what}: already published or discarded")
        return self._spool

    def write(self, data: bytes | bytearray | memoryview) -> None:
        spool = self._open()
        try:
            self._size += spool.write(data)
        except OSError as e:
            self.discard()
            what = f"saving {self._what}: cannot spool to {tempfile.gettempdir()}"
            if e.errno == errno.ENOSPC:
                raise NoSpace(f"{what}: no space left") from e
            raise PermanentError(f"{what}: {e.strerror}") from e

    def publish(self, name: str) -> None:
        spool = self._open()
        backend = self._backend
        key = backend._key(name)
        spool.seek(0)
        if self._size < backend.multipart_threshold:
            backend._put(name, key, spool.read())
        else:
            backend._multipart(name, key, lambda: spool.read(backend.part_size))
        self.discard()

    def discard(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
