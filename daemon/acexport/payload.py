"""A payload's bytes: sniffed, hashed as served, converted to NDJSON in a temp file.

The format is sniffed from the first bytes (never from a name): NDJSON passes
through, a JSON array is split into NDJSON lines while streaming, a ZIP is
spooled and its JSON/NDJSON members converted once complete. ``payload_*``
fields describe the served bytes; the output is NDJSON, optionally gzip.
Everything here blocks: the sink runs it in worker threads.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import secrets
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, cast

from .errors import PayloadError, PayloadTooLarge
from .records import ArrayToLines, NdjsonLines

Compression = Literal["none", "gzip"]
_GZIP_LEVEL = 1  # throughput first: level 1 still shrinks JSON 4-6x
_BOM = b"\xef\xbb\xbf"
INFLATE_SLACK_BYTES = 64 * 1024
DEFAULT_INFLATE_RATIO = 200  # a gzip body or ZIP member may expand this many times
# Every temp file acexport makes is named so, and only such names are ever cleaned up.
TEMP_NAME = re.compile(r"acexport-(\d+)-[0-9a-f]{16}\.(part|spool|manifest)")


def temp_stem() -> str:
    """A fresh temp-file stem: this pid (for cleanup) and 64 unguessable bits."""
    return f"acexport-{os.getpid()}-{secrets.token_hex(8)}"


def create_new(path: Path, buffering: int = -1, dir_fd: int | None = None) -> IO[bytes]:
    """Open a file that must not exist yet, never through a symbolic link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, 0o666, dir_fd=dir_fd), "wb", buffering=buffering)


@dataclass(frozen=True)
class PayloadSummary:
    """A finished payload: the output temp file and what the served bytes were."""

    path: Path
    records: int
    payload_bytes: int
    payload_sha256: str
    format: str


def _writeback_starter() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which os does not expose; None elsewhere."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


# Asking the kernel to start writing each batch back at once (SYNC_FILE_RANGE_WRITE,
# which does not wait) keeps dirty pages few: writes no longer stall on dirty-page
# throttling, and the final fsync finds almost nothing left to do. Measured here:
# 1 GiB written and fsynced in 0.4 s steadily, against 0.6 to 3.2 s without.
_sync_file_range = _writeback_starter()
_SYNC_FILE_RANGE_WRITE = 2
_IOV_MAX = 1024


class _Output:
    """The NDJSON output temp file, gzip-compressed or not."""

    def __init__(self, path: Path, compression: Compression) -> None:
        self.path = path
        self._file: IO[bytes] = create_new(path, buffering=0)
        self._gzip = (
            zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31) if compression == "gzip" else None
        )
        self._written = 0

    def write_many(self, chunks: list[bytes]) -> None:
        """Write the chunks in order, without joining them first (one copy fewer)."""
        if self._gzip is not None:
            chunks = [self._gzip.compress(chunk) for chunk in chunks]
        chunks = [chunk for chunk in chunks if chunk]
        if not chunks:
            return
        fd = self._file.fileno()
        total = sum(map(len, chunks))
        done = 0
        for start in range(0, len(chunks), _IOV_MAX):
            done += os.writev(fd, chunks[start : start + _IOV_MAX])
        if done < total:
            # A short write (file size limit, full disk): write the rest plainly, so
            # the error, if any, is raised with its errno.
            self._file.write(b"".join(chunks)[done:])
        if _sync_file_range is not None:
            _sync_file_range(fd, self._written, total, _SYNC_FILE_RANGE_WRITE)
        self._written += total

    def close(self) -> None:
        if self._gzip is not None:
            self._file.write(self._gzip.flush())
            self._gzip = None
        os.fsync(self._file.fileno())
        self._file.close()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class _ZipSpool:
    """ZIP needs its central directory, at the end: spool, then convert the members."""

    def __init__(self, out: _Output, spool_path: Path, limits: PayloadLimits) -> None:
        self._out = out
        self._spool_path = spool_path
        self._spool: IO[bytes] = create_new(spool_path)
        self._limits = limits
        self._spooled = 0
        self.records = 0

    def feed_many(self, chunks: list[bytes]) -> None:
        for data in chunks:
            self._spool.write(data)
            self._spooled += len(data)

    def finish(self) -> None:
        self._spool.close()
        # Inflating may yield at most this much (zip bombs), with slack for tiny ZIPs.
        budget = _Budget(
            min(self._limits.max_bytes, self._limits.inflated_max(self._spooled)),
            f"inflates beyond http.max_payload ({self._limits.max_bytes} bytes) or "
            f"{self._limits.max_ratio} times its size (http.max_inflate_ratio)",
        )
        try:
            with zipfile.ZipFile(self._spool_path) as archive:
                for info in archive.infolist():
                    if info.is_dir():
                        continue
                    with archive.open(info) as member:
                        self.records += _convert_member(member, self._out, info.filename, budget)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as exc:
            raise PayloadError(f"the ZIP payload is damaged or cut short: {exc}") from None
        except (RuntimeError, NotImplementedError) as exc:
            # zipfile's word for encrypted members and unknown compression methods.
            raise PayloadError(f"the ZIP payload cannot be read: {exc}") from None
        finally:
            self._spool_path.unlink(missing_ok=True)

    def discard(self) -> None:
        self._spool.close()
        self._spool_path.unlink(missing_ok=True)


@dataclass
class _Budget:
    """Bytes that may still be produced; past them, ``PayloadTooLarge`` says why."""

    left: int
    why: str

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise PayloadTooLarge(f"the payload {self.why}; nothing was kept")


_WHITESPACE = b" \t\r\n"


def _convert_member(member: IO[bytes], out: _Output, name: str, budget: _Budget) -> int:
    """One ZIP member's JSON or JSON Lines into the output; returns its records."""
    block = b""
    while not block:  # skip leading whitespace block by block: linear however much there is
        block = member.read(1 << 20)
        if not block:
            return 0
        budget.spend(len(block))
        block = block.lstrip(_WHITESPACE).removeprefix(_BOM).lstrip(_WHITESPACE)
    converter: NdjsonLines | ArrayToLines
    if block.startswith(b"["):
        converter = ArrayToLines(out.write_many)
    elif block.startswith(b"{"):
        # zipfile checks the member's CRC-32: its lines arrived as AC wrote them.
        converter = NdjsonLines(out.write_many, check_lines=False)
    else:
        raise PayloadError(f"ZIP member {name!r} is neither JSON nor JSON Lines")
    while block:
        converter.feed_many([block])
        block = member.read(4 << 20)
        budget.spend(len(block))
    converter.finish()
    return converter.records


@dataclass(frozen=True)
class PayloadLimits:
    """How large a payload may be (decoded bytes), and how far a ZIP may inflate."""

    max_bytes: int = 50 * 1024**3
    max_ratio: int = DEFAULT_INFLATE_RATIO

    def inflated_max(self, compressed_bytes: int) -> int:
        """What ``compressed_bytes`` may inflate to; small inputs get 64 KiB of slack."""
        return self.max_ratio * max(compressed_bytes, INFLATE_SLACK_BYTES)


class PayloadWriter:
    """One download's bytes: hashed as served, converted to the output temp file.

    Its methods block. ``digest`` and ``convert`` touch disjoint state, so one
    thread may hash a batch while another converts and writes it.
    """

    def __init__(
        self, temp_dir: Path, compression: Compression, limits: PayloadLimits | None = None
    ) -> None:
        stem = temp_stem()
        self._limits = limits or PayloadLimits()
        self._out = _Output(temp_dir / f"{stem}.part", compression)
        self._spool_path = temp_dir / f"{stem}.spool"
        self._sha = hashlib.sha256()
        self.payload_bytes = 0
        self._head = b""
        self._converter: NdjsonLines | ArrayToLines | _ZipSpool | None = None
        self.format = "unknown"

    def feed(self, data: bytes) -> None:
        self.digest([data])
        self.convert([data])

    def digest(self, chunks: list[bytes]) -> None:
        for data in chunks:
            self._sha.update(data)
            self.payload_bytes += len(data)
        if self.payload_bytes > self._limits.max_bytes:
            raise PayloadTooLarge(
                f"the payload is larger than http.max_payload ({self._limits.max_bytes} "
                "bytes); nothing was kept"
            )

    def convert(self, chunks: list[bytes]) -> None:
        index = 0
        while self._converter is None and index < len(chunks):
            self._head += chunks[index]
            index += 1
            start = self._head.lstrip(_WHITESPACE).removeprefix(_BOM).lstrip(_WHITESPACE)
            if len(start) < 4 and len(self._head) < 4096:
                continue  # too little to tell yet
            self._converter = self._choose(start[:4])
            chunks = [self._head.lstrip(_WHITESPACE).removeprefix(_BOM), *chunks[index:]]
            index, self._head = 0, b""
        if self._converter is not None:
            self._converter.feed_many(chunks[index:])

    def _choose(self, magic: bytes) -> NdjsonLines | ArrayToLines | _ZipSpool:
        if magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            self.format = "zip"
            return _ZipSpool(self._out, self._spool_path, self._limits)
        if magic.startswith(b"["):
            self.format = "json"
            return ArrayToLines(self._out.write_many)
        if magic.startswith(b"{"):
            self.format = "ndjson"
            return NdjsonLines(self._out.write_many)
        raise PayloadError(f"the payload is not JSON, JSON Lines or ZIP (starts {magic!r})")

    def finish(self) -> PayloadSummary:
        if self._converter is None:
            head = self._head.strip(_WHITESPACE + _BOM)
            if head:
                self._converter = self._choose(head[:4])
                self._converter.feed_many([head])
            else:
                self.format = "ndjson"  # an export with no records
        if self._converter is not None:
            self._converter.finish()
        self._out.close()
        records = self._converter.records if self._converter else 0
        return PayloadSummary(
            self._out.path, records, self.payload_bytes, self._sha.hexdigest(), self.format
        )

    def discard(self) -> None:
        if isinstance(self._converter, _ZipSpool):
            self._converter.discard()
        self._out.discard()
        self._spool_path.unlink(missing_ok=True)
