"""The S3 output store: data then manifest, uploaded with checksums the store verifies.

Built on aiobotocore (async botocore on aiohttp, the client stack acexport
already uses): the standard AWS credential chain, SigV4, ``ListMultipartUploads``
and SHA-256 flexible checksums come from botocore, none hand-written. The
library is an optional extra (``acexport[s3]``), imported only when an
``s3://`` output is configured; bench/README.md has the figures behind the choice.

Large files go up in parts, a few at a time, each part's SHA-256 computed in a
worker thread and verified by the store; a failed upload is aborted, and at
the daemon's start the multipart uploads a crashed run left are too (only
under keys the layout can produce, and only old ones: see abort_stale_uploads).
Keys are deterministic, so a retry or a re-run overwrites, never duplicates.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

import structlog

from ..errors import ConfigError, StoreRejected, StoreUnavailable
from .manifest import Manifest, manifest_key
from .store import SMALL_MAX, with_manifests

log = structlog.get_logger("acexport.s3")

# Error codes retrying cannot fix: the bucket, the credentials or the policy are wrong.
# DeleteObjects takes at most this many keys.
_DELETES_PER_REQUEST = 1000
_REJECTED = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "InvalidBucketName",
    "NoSuchBucket",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "PermanentRedirect",
    "NoCredentialsError",  # botocore's own: no credentials anywhere in the chain
    "PartialCredentialsError",
    "403",
    "404",
}


@dataclass(frozen=True)
class S3Target:
    """Where and how to reach the bucket; credentials stay out of every message."""

    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    access_key_id: str | None = None  # None: the standard AWS credential chain
    secret_access_key: str | None = None
    session_token: str | None = None
    part_size: int = 8 * 1024 * 1024
    concurrency: int = 4

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


def _sha256_b64(data: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


def _fill(path: Path, offset: int, buffer: bytearray) -> tuple[bytearray, str]:
    """Read a part into a reused buffer; (the part's bytes, their SHA-256)."""
    with path.open("rb") as handle:
        handle.seek(offset)
        size = handle.readinto(buffer)
    part = buffer if size == len(buffer) else buffer[:size]
    return part, _sha256_b64(part)


@dataclass(frozen=True)
class _Upload:
    """One multipart upload in progress: the local file, its key, and the part buffers."""

    data: Path
    key: str
    upload_id: str
    buffers: asyncio.Queue[bytearray]


class S3Store:
    """An ``s3://bucket/prefix`` output, through one aiobotocore client."""

    def __init__(self, target: S3Target) -> None:
        self.target = target
        self._client: Any = None
        self._errors: tuple[type[Exception], ...] = ()  # botocore's, set by start()

    def location(self, key: PurePosixPath) -> str:
        return f"s3://{self.target.bucket}/{self.target.prefix}{key}"

    def describe(self) -> str:
        return self.target.describe()

    def _key(self, key: PurePosixPath | str) -> str:
        return f"{self.target.prefix}{key}"

    async def start(self, stack: AsyncExitStack) -> None:
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
            from botocore.exceptions import BotoCoreError, ClientError
        except ImportError:
            raise ConfigError(
                f"output.url is {self.target.describe()}, but S3 support is not installed: "
                "pip install 'acexport[s3]'"
            ) from None
        self._errors = (ClientError, BotoCoreError)
        t = self.target
        config = AioConfig(
            region_name=t.region,
            s3={"addressing_style": "path" if t.path_style else "auto"},
            retries={"mode": "standard", "max_attempts": 3},
            # acexport sends SHA-256 itself; botocore need not add a CRC32 of its own.
            request_checksum_calculation="when_required",
            max_pool_connections=max(10, 2 * t.concurrency),
        )
        credentials: dict[str, Any] = {}
        if t.access_key_id is not None:
            credentials = {
                "aws_access_key_id": t.access_key_id,
                "aws_secret_access_key": t.secret_access_key,
                "aws_session_token": t.session_token,
            }
        client_context = get_session().create_client(
            "s3", endpoint_url=t.endpoint_url, config=config, **credentials
        )
        self._client = await stack.enter_async_context(client_context)
        if not t.prefix:
            log.warning(
                "s3_output_is_a_whole_bucket",
                store=t.describe(),
                detail="acexport's keys share the bucket with whatever else is in it; "
                "a prefix (s3://bucket/acexport) keeps listings and clean-ups to its own",
            )
        try:
            await self._call("checking", lambda: self._client.head_bucket(Bucket=t.bucket))
        except StoreUnavailable as exc:
            # Down now is not a reason to stop: commits wait and retry until it is back.
            log.warning("s3_unavailable_at_start", error=str(exc))

    async def _call(self, action: str, request: Callable[[], Awaitable[Any]]) -> Any:
        """One S3 request; its failure becomes StoreRejected or StoreUnavailable."""
        try:
            return await request()
        except self._errors as exc:
            raise self._error(action, exc) from None
        except (OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"{action} {self.target.describe()} failed: {exc}") from None

    def _error(self, action: str, exc: BaseException) -> Exception:
        response = getattr(exc, "response", None) or {}
        error = response.get("Error", {})
        code = str(error.get("Code", "")) or type(exc).__name__
        message = error.get("Message") or str(exc)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return self._failed(action, code, message, status)

    def _failed(self, action: str, code: str, message: str, status: int) -> Exception:
        text = f"{action} {self.target.describe()} failed: {code}: {message}"
        # A 4xx says this request cannot succeed as it is (KeyTooLongError, EntityTooLarge,
        # InvalidArgument, BadDigest, MalformedXML...): retrying it forever kept `run
        # --once` running and /healthz ok. Only timeouts and throttling are worth waiting.
        if code in _REJECTED or (400 <= status < 500 and status not in (408, 429)):
            return StoreRejected(text)
        return StoreUnavailable(text)

    async def abort_stale_uploads(
        self, is_ours: Callable[[str], bool], initiated_before: datetime
    ) -> int:
        """Abort the multipart uploads a crashed run left: only under keys the layout can
        produce (``is_ours`` of the key relative to the prefix) and initiated before
        ``initiated_before``; another writer's uploads, in the bucket or under the
        prefix, are not ours to end."""
        t, aborted = self.target, 0
        paginator = self._client.get_paginator("list_multipart_uploads")

        async def abort_stale() -> None:
            nonlocal aborted
            async for page in paginator.paginate(Bucket=t.bucket, Prefix=t.prefix):
                for upload in page.get("Uploads", []):
                    key = upload["Key"]
                    if upload["Initiated"] >= initiated_before:
                        continue
                    if not key.startswith(t.prefix) or not is_ours(key[len(t.prefix) :]):
                        continue
                    await self._client.abort_multipart_upload(
                        Bucket=t.bucket, Key=key, UploadId=upload["UploadId"]
                    )
                    aborted += 1

        await self._call("listing multipart uploads in", abort_stale)
        if aborted:
            log.info("s3_stale_uploads_aborted", count=aborted, store=t.describe())
        return aborted

    def commit_here(self, data: Path, key: PurePosixPath, manifest: Manifest) -> None:
        """Uploads run on the event loop: the caller awaits ``commit``."""
        return

    async def commit(self, data: Path, key: PurePosixPath, manifest: Manifest) -> str:
        """Upload the data, then the manifest (its existence says the data is complete)."""
        size = await asyncio.to_thread(os.path.getsize, data)
        if size <= self.target.part_size:
            body, checksum = await asyncio.to_thread(_fill, data, 0, bytearray(size))
            await self._put(self._key(key), body, checksum)
        else:
            await self._put_multipart(data, self._key(key), size)
        marker = manifest.to_json()
        await self._put(self._key(manifest_key(key)), marker, _sha256_b64(marker))
        return self.location(manifest_key(key))

    async def _put(self, key: str, body: bytes | bytearray, checksum: str) -> None:
        await self._call(
            f"uploading {key} to",
            lambda: self._client.put_object(
                Bucket=self.target.bucket, Key=key, Body=body, ChecksumSHA256=checksum
            ),
        )

    async def _put_multipart(self, data: Path, key: str, size: int) -> None:
        t = self.target
        created = await self._call(
            f"starting the upload of {key} to",
            lambda: self._client.create_multipart_upload(
                Bucket=t.bucket, Key=key, ChecksumAlgorithm="SHA256"
            ),
        )
        upload = _Upload(data, key, created["UploadId"], self._part_buffers(size))
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._upload_part(upload, index + 1, offset))
                    for index, offset in enumerate(range(0, size, t.part_size))
                ]
            parts = [task.result() for task in tasks]
            await self._call(
                f"completing the upload of {key} to",
                lambda: self._client.complete_multipart_upload(
                    Bucket=t.bucket,
                    Key=key,
                    UploadId=upload.upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException as exc:
            await asyncio.shield(self._abort(key, upload.upload_id))
            if isinstance(exc, BaseExceptionGroup):
                raise exc.exceptions[0] from None
            raise

    def _part_buffers(self, size: int) -> asyncio.Queue[bytearray]:
        """``concurrency`` buffers, allocated once and reused: memory stays flat
        (fresh part-sized allocations in worker threads grow glibc's arenas)."""
        t = self.target
        buffers: asyncio.Queue[bytearray] = asyncio.Queue()
        for _ in range(min(t.concurrency, -(-size // t.part_size))):
            buffers.put_nowait(bytearray(t.part_size))
        return buffers

    async def _upload_part(self, upload: _Upload, number: int, offset: int) -> dict[str, Any]:
        buffer = await upload.buffers.get()
        try:
            body, checksum = await asyncio.to_thread(_fill, upload.data, offset, buffer)
            answer = await self._call(
                f"uploading part {number} of {upload.key} to",
                lambda: self._client.upload_part(
                    Bucket=self.target.bucket,
                    Key=upload.key,
                    UploadId=upload.upload_id,
                    PartNumber=number,
                    Body=body,
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=checksum,
                ),
            )
        finally:
            upload.buffers.put_nowait(buffer)
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}

    async def _abort(self, key: str, upload_id: str) -> None:
        try:
            await self._client.abort_multipart_upload(
                Bucket=self.target.bucket, Key=key, UploadId=upload_id
            )
        except Exception as exc:
            # Best effort, whatever went wrong: the next start-up (or a lifecycle rule)
            # aborts what is left.
            log.warning("s3_abort_failed", key=key, error=str(exc))

    async def stored_under(self, prefix: str) -> dict[PurePosixPath, int]:
        return with_manifests(await self.listed_under(prefix), prefix)

    async def listed_under_each(self, prefixes: Sequence[str]) -> list[dict[str, int]]:
        return list(await asyncio.gather(*(self.listed_under(p) for p in prefixes)))

    async def listed_under(self, prefix: str) -> dict[str, int]:
        t, sizes = self.target, dict[str, int]()
        paginator = self._client.get_paginator("list_objects_v2")

        async def list_all() -> None:
            async for page in paginator.paginate(Bucket=t.bucket, Prefix=self._key(prefix)):
                for item in page.get("Contents", []):
                    sizes[item["Key"][len(t.prefix) :]] = int(item["Size"])

        await self._call("listing", list_all)
        return sizes

    async def _read(
        self, key: PurePosixPath, consume: Callable[[Any], Awaitable[Any]]
    ) -> Any | None:
        """``consume(body)`` of the object at ``key``; None if there is none."""

        async def get() -> Any | None:
            try:
                answer = await self._client.get_object(
                    Bucket=self.target.bucket, Key=self._key(key)
                )
            except self._client.exceptions.NoSuchKey:
                return None
            async with answer["Body"] as body:
                return await consume(body)

        return await self._call(f"reading {self._key(key)} in", get)

    async def read_small(self, key: PurePosixPath) -> bytes | None:
        async def whole(body: Any) -> bytes:
            return bytes(await body.read(SMALL_MAX + 1))

        result: bytes | None = await self._read(key, whole)
        return result

    @contextlib.asynccontextmanager
    async def local_copy(self, key: PurePosixPath) -> AsyncIterator[Path | None]:
        with tempfile.TemporaryDirectory(prefix="acexport-verify-") as directory:
            path = Path(directory) / "data"

            async def to_file(body: Any) -> bool:
                with path.open("wb") as file:
                    while chunk := await body.read(1 << 20):
                        await asyncio.to_thread(file.write, chunk)
                return True

            found = await self._read(key, to_file)
            yield path if found else None

    async def write_small(self, key: PurePosixPath, data: bytes) -> None:
        await self._put(self._key(key), data, _sha256_b64(data))

    async def delete(self, key: PurePosixPath) -> None:
        await self._call(
            f"deleting {self._key(key)} in",
            lambda: self._client.delete_object(Bucket=self.target.bucket, Key=self._key(key)),
        )

    async def delete_many(self, keys: Sequence[PurePosixPath]) -> None:
        for start in range(0, len(keys), _DELETES_PER_REQUEST):
            batch = [{"Key": self._key(key)} for key in keys[start : start + _DELETES_PER_REQUEST]]
            request = functools.partial(
                self._client.delete_objects,
                Bucket=self.target.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
            answer = await self._call(f"deleting {len(batch)} objects in", request)
            # The request succeeds when some keys fail: the first says why.
            if errors := answer.get("Errors"):
                failed = errors[0]
                code, message = str(failed.get("Code", "")), str(failed.get("Message", ""))
                raise self._failed(f"deleting {failed.get('Key')} in", code, message, 0)


def read_secret_file(path: Path, what: str) -> str:
    """A credential from a file (systemd credentials, container secrets), stripped."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"output.s3.{what}: cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"output.s3.{what}: {path} is empty")
    return value
