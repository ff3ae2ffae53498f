"""AC's tables: each export type's columns, their BigQuery types, required or not.

Written once, from the engine's ``bigquery_tables.json`` and ``segment`` table
(design section 1.1). The Parquet writer types its columns from here, and the
JSON Schema files published in ``schemas/`` are generated from here
(``python -m acexport.tables schemas``; a test fails when they drift).

The tables gain columns over time: a column not listed here is kept as text
by the writer and reported, never dropped.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class Kind(enum.StrEnum):
    """A column's type as AC's table declares it."""

    STRING = "STRING"
    INT64 = "INT64"
    TIMESTAMP = "TIMESTAMP"
    BOOL = "BOOL"
    # AC's ``eventProperties``: a STRING built as {"name":"value",...} by concatenation,
    # nothing escaped; typed as a map of strings (the older ``properties`` array too).
    PROPERTIES = "PROPERTIES"
    FIELDS = "ARRAY<STRUCT<dataSourceId INT64, name STRING, value STRING>>"
    MEMBERSHIPS = "ARRAY<STRUCT<ids ARRAY<STRING>, name STRING>>"


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind = Kind.STRING
    required: bool = False


def _columns(spec: str) -> tuple[Column, ...]:
    """``"id! views:INT64 eventDate:TIMESTAMP!"``: name, ``:KIND``, ``!`` when REQUIRED."""
    out = []
    for word in spec.split():
        required = word.endswith("!")
        name, _, kind = word.rstrip("!").partition(":")
        out.append(Column(name, Kind[kind] if kind else Kind.STRING, required))
    return tuple(out)


TABLES: dict[str, tuple[Column, ...]] = {
    "event": _columns(
        "applicationId! assetId assetTitle browserName canonicalUrl channelId:INT64! city "
        "contentLanguageId context country createDate:TIMESTAMP! dataSourceId:INT64! "
        "description deviceType emailAddressHashed eventDate:TIMESTAMP! eventId! "
        "experienceId experimentId:INT64 externalReferenceCode id! keywords languageId "
        "objectDefinitionName platformName projectId! projectTimeZoneId referrer region "
        "sessionId! timezoneOffset title url userId! variantId eventProperties:PROPERTIES"
    ),
    "page": _columns(
        "bounce:INT64 browserName canonicalUrl! channelId:INT64! city country "
        "ctaClicks:INT64 description deviceType directAccess:INT64 entrances:INT64 "
        "eventDate:TIMESTAMP! exits:INT64 experimentId indirectAccess:INT64 platformName "
        "reads:INT64 region sessionId! timeOnPage:INT64 title! userId! views:INT64 variantId"
    ),
    "identity": _columns("createDate:TIMESTAMP! id! individualId projectId!"),
    "individual": _columns(
        "birthday:TIMESTAMP createDate:TIMESTAMP! emailAddress! fields:FIELDS firstName "
        "gender id! jobTitle languageId lastName memberships:MEMBERSHIPS middleName "
        "modifiedDate:TIMESTAMP! screenName suppressed:BOOL"
    ),
    "membership": _columns(
        "channelId:INT64! createDate:TIMESTAMP! identityId! individualId "
        "modifiedDate:TIMESTAMP! segmentId:INT64! status"
    ),
    # A PostgreSQL row as JSON; its columns vary by AC's version, so none is required.
    "segment": _columns(
        "id:INT64 name filter filterMetadata individualCount:INT64 knownIndividualCount:INT64 "
        "anonymousIndividualCount:INT64 activeIndividualCount:INT64 activitiesCount:INT64 "
        "authorId authorName channelId:INT64 createDate:TIMESTAMP modifiedDate:TIMESTAMP "
        "lastActivityDate:TIMESTAMP includeAnonymousUsers:BOOL scope state status type"
    ),
}

# Read as input but not an output column: the older form of eventProperties.
LEGACY_PROPERTIES = "properties"
# The output column holding, per row, each value that did not fit its column.
UNPARSED = "_unparsed"

_TIMESTAMP = {
    "type": "string",
    "description": "BigQuery's '2024-01-05 13:00:00[.123456] UTC', or ISO 8601",
}
_INT64 = {
    "type": ["string", "integer"],
    "pattern": "^-?[0-9]+$",
    "description": "INT64, which BigQuery's JSON export writes as a string",
}
_JSON_SCHEMA: dict[Kind, dict[str, Any]] = {
    Kind.STRING: {"type": "string"},
    Kind.INT64: _INT64,
    Kind.TIMESTAMP: _TIMESTAMP,
    Kind.BOOL: {"type": "boolean"},
    Kind.PROPERTIES: {
        "type": "string",
        "description": 'the event\'s properties, {"name":"value",...} concatenated without '
        "escaping (it may not be valid JSON); Parquet: map<string, string>",
    },
    Kind.FIELDS: {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "dataSourceId": _INT64,
                "name": {"type": "string"},
                "value": {"type": "string"},
            },
        },
    },
    Kind.MEMBERSHIPS: {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "ids": {"type": "array", "items": {"type": "string"}},
                "name": {"type": "string"},
            },
        },
    },
}


def json_schema(type_: str) -> dict[str, Any]:
    """The JSON Schema of one record of ``type_`` as AC serves it (a JSON Lines row)."""
    columns = TABLES[type_]
    properties = {column.name: _JSON_SCHEMA[column.kind] for column in columns}
    if type_ == "event":
        properties[LEGACY_PROPERTIES] = {
            "type": "array",
            "description": "older exports' form of eventProperties",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
            },
        }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Liferay Analytics Cloud export record: {type_}",
        "description": "Generated from acexport.tables; AC adds columns over time, so "
        "other properties are allowed (acexport keeps them as text).",
        "type": "object",
        "properties": properties,
        "required": [column.name for column in columns if column.required],
        "additionalProperties": True,
    }


# Each kind as a Parquet file written by acexport holds it: DuckDB's type (as DESCRIBE
# names it) and Arrow's (as pyarrow prints it).
_PARQUET_TYPES = {
    Kind.STRING: ("VARCHAR", "string"),
    Kind.INT64: ("BIGINT", "int64"),
    Kind.TIMESTAMP: ("TIMESTAMP WITH TIME ZONE", "timestamp[us, tz=UTC]"),
    Kind.BOOL: ("BOOLEAN", "bool"),
    Kind.PROPERTIES: ("MAP(VARCHAR, VARCHAR)", "map<string, string>"),
    Kind.FIELDS: (
        'STRUCT(dataSourceId BIGINT, "name" VARCHAR, "value" VARCHAR)[]',
        "list<element: struct<dataSourceId: int64, name: string, value: string>>",
    ),
    Kind.MEMBERSHIPS: (
        'STRUCT(ids VARCHAR[], "name" VARCHAR)[]',
        "list<element: struct<ids: list<element: string>, name: string>>",
    ),
}


def parquet_schema(type_: str) -> dict[str, Any]:
    """The columns of a Parquet file of ``type_`` as acexport writes it (``format =
    "parquet"``): the table's, in order, typed; columns AC adds later follow as text;
    ``_unparsed`` last (JSON: each value that did not fit its column, as served)."""
    columns = [
        {
            "name": column.name,
            "duckdb": _PARQUET_TYPES[column.kind][0],
            "arrow": _PARQUET_TYPES[column.kind][1],
            "required_by_ac": column.required,
        }
        for column in TABLES[type_]
    ]
    columns.append(
        {
            "name": UNPARSED,
            "duckdb": "JSON",
            "arrow": "extension<arrow.json>",
            "required_by_ac": False,
        }
    )
    return {
        "title": f"acexport Parquet file: {type_}",
        "description": "Generated from acexport.tables. Every column is nullable; AC's "
        "new columns are kept as VARCHAR before _unparsed and named in the manifest's "
        "new_columns; timestamps are UTC instants in microseconds.",
        "columns": columns,
    }


def fingerprint(columns: list[tuple[str, str]]) -> str:
    """A short, stable name for an output schema: its columns' names and types in order."""
    text = "\n".join(f"{name} {kind}" for name, kind in columns)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_schemas(directory: Path) -> list[Path]:
    """``<type>.json`` (a record as AC serves it) and ``parquet/<type>.json`` (a Parquet
    file's columns) for every type into ``directory``; returns the files written."""
    (directory / "parquet").mkdir(parents=True, exist_ok=True)
    written = []
    for type_ in TABLES:
        for path, schema in (
            (directory / f"{type_}.json", json_schema(type_)),
            (directory / "parquet" / f"{type_}.json", parquet_schema(type_)),
        ):
            path.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")
            written.append(path)
    return written


if __name__ == "__main__":  # python -m acexport.tables schemas
    for written_path in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas")):
        print(written_path)
