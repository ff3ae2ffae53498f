"""Output stores: where committed data lives, chosen by ``output.url``.

``local`` (a directory, the default) and ``s3`` (any S3-compatible store) take
the same keys and give the same guarantees; see ``output.OutputStore``.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Settings
from ..ops.logging import register_secret
from .local import LocalStore
from .s3 import S3Store, S3Target, read_secret_file
from .store import OutputStore


def open_store(settings: Settings, temp_dir: Path) -> OutputStore:
    """The store ``settings`` name; credential files are read (and redacted) now."""
    location = settings.output.s3_location()
    if location is None:
        return LocalStore(settings.output_dir(), temp_dir)
    bucket, prefix = location
    s3 = settings.output.s3
    secrets: dict[str, str | None] = {}
    for name in ("access_key_id_file", "secret_access_key_file", "session_token_file"):
        path = getattr(s3, name)
        secrets[name] = None if path is None else read_secret_file(path, name)
    for value in (secrets["secret_access_key_file"], secrets["session_token_file"]):
        if value:
            register_secret(value)
    return S3Store(
        S3Target(
            bucket=bucket,
            prefix=prefix,
            endpoint_url=s3.endpoint_url,
            region=s3.region,
            path_style=s3.path_style,
            access_key_id=secrets["access_key_id_file"],
            secret_access_key=secrets["secret_access_key_file"],
            session_token=secrets["session_token_file"],
            part_size=int(s3.part_size),
            concurrency=s3.concurrency,
        )
    )


__all__ = ["LocalStore", "OutputStore", "S3Store", "S3Target", "open_store"]
