"""The manifest: the completion marker written beside each data file, last.

Version 2 describes the file written (``file_bytes``, ``file_sha256``) as well
as the payload AC served (``payload_*``), so the output store's word that a
window is done can be checked: a manifest is believed only if it names the
window and its file has exactly the bytes it claims (``check_stored``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .. import __version__

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_VERSION = 2
# Left out when None: Parquet's fields for an NDJSON file, the request's for a file
# that was not split out of a time-series request.
_OPTIONAL_FIELDS = frozenset(
    {
        "rows",
        "schema_fingerprint",
        "new_columns",
        "unparsed_values",
        "unchanged",
        "request_fromDate",
        "request_toDate",
        "request_windows",
    }
)


def manifest_key(key: PurePosixPath) -> PurePosixPath:
    """The completion marker beside a data file."""
    return key.with_name(key.name + MANIFEST_SUFFIX)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The completion marker written beside each data file (docs/data.md, "Output").

    Its camelCase field names are AC's, and the contract with readers of the output.
    The version fields come first: a reader knows what it reads from line one.
    """

    manifest_version: int = MANIFEST_VERSION
    acexport_version: str = __version__
    job: str | None  # None for a one-off ``acexport export``
    workspace: str
    type: str
    mode: str = "windows"  # or "snapshot": the whole table as of toDate
    fromDate: str
    toDate: str
    createdDate: str | None
    downloadedAt: str
    revision: int = 1  # 2 once the window was exported again (restated)
    previous_sha256: str | None = None  # the file a restatement replaced
    payload_bytes: int
    payload_sha256: str
    payload_format: str  # what AC served: zip, json or ndjson
    file: str
    file_bytes: int
    file_sha256: str
    records: int
    format: str  # the file's: ndjson or parquet
    compression: str  # parquet: the columns' codec
    # Parquet only (left out of an NDJSON file's manifest):
    rows: int | None = None
    schema_fingerprint: str | None = None  # the columns' names and types (tables.py)
    new_columns: list[str] | None = None  # served, but not in AC's table as we know it
    unparsed_values: int | None = None  # values kept in _unparsed: they did not fit
    # A time series' file is cut out of the AC request these name (its dates, and how
    # many windows it covered); payload_* are that request's.
    request_fromDate: str | None = None
    request_toDate: str | None = None
    request_windows: int | None = None
    # A re-export the operator asked for that AC served byte for byte as the revision
    # it replaces: committed anyway as the next revision, so downstream hears it.
    unchanged: bool | None = None

    def to_json(self) -> bytes:
        # What json.dumps(indent=2) writes for these flat fields (a list on one line),
        # without its pure-Python encoder (indent turns the C one off), nor json.dumps
        # per value (38 us a manifest: a JSONEncoder made for each, ensure_ascii=False).
        fields = ",\n".join(
            f'  "{name}": {_json_value(value)}'
            for name, value in vars(self).items()
            if value is not None or name not in _OPTIONAL_FIELDS
        )
        return ("{\n" + fields + "\n}\n").encode("utf-8")


def _json_value(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)``, the common kinds without an encoder."""
    kind = type(value)
    if kind is str:
        return _json_text(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


_json_text = json.encoder.encode_basestring  # the C one where built: quotes and escapes


def read_fields(text: bytes | None) -> dict[str, Any] | str:
    """A stored manifest's fields, or why it proves nothing (gone, not JSON, version 1:
    it names no file_bytes or file_sha256 to check its file by)."""
    if text is None:
        return "its manifest is gone"
    try:
        fields: Any = json.loads(text)
    except (ValueError, RecursionError):
        return "its manifest is not valid JSON"
    if not isinstance(fields, dict):
        return "its manifest is not a JSON object"
    if not isinstance(fields.get("manifest_version"), int) or fields["manifest_version"] < 2:
        return "its manifest is version 1, which cannot prove its file whole"
    return fields


def check_stored(
    text: bytes | None,
    size: int,
    *,
    workspace: str,
    type_: str,
    from_date: str,
    to_date: str,
) -> str | None:
    """Why a stored manifest and its ``size``-byte file do not prove a window done;
    None when they do.

    Version-1 manifests (before ``file_bytes``) prove nothing about their file: a
    truncated file beside one looked done forever. They are not believed; the
    window is exported again once and written with a version-2 manifest.
    """
    fields = read_fields(text)
    if isinstance(fields, str):
        return fields
    wanted = {"workspace": workspace, "type": type_, "fromDate": from_date, "toDate": to_date}
    for name, value in wanted.items():
        if fields.get(name) != value:
            return f"its manifest names {name} {fields.get(name)!r}, not {value!r}"
    claimed = fields.get("file_bytes")
    if not isinstance(claimed, int) or isinstance(claimed, bool):
        return "its manifest has no file_bytes"
    if claimed != size:
        return f"its file has {size} bytes, its manifest says {claimed}"
    return None
