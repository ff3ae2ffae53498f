"""JSON Lines as AC serves them to a typed Parquet file, one schema per type.

The engine is DuckDB (bench/README.md, "Parquet", says why): its JSON reader
takes every column as text whatever JSON kind a row holds, so no row can fail
the read, and the typing is SQL over whole vectors. Each column is typed from
AC's table definitions (``acexport.tables``): INT64 strings or numbers to
int64, BigQuery's ``... UTC`` timestamps or ISO 8601 to timestamp[us, UTC],
``eventProperties`` (or the older ``properties`` array) to map<string,
string>. A value that does not fit its column leaves the column null and is
kept, as served, in the row's ``_unparsed`` (a JSON object: column -> text); a
column the table does not list is kept as text. No row is ever dropped: the
row count is checked against the records counted while downloading.

Memory is bounded by DuckDB's ``memory_limit`` (it streams the COPY in row
groups and spills beyond it), and one conversion runs at a time per process:
each already uses both cores. Everything here blocks.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ConversionError, PayloadError
from ..formats import Compression
from ..tables import LEGACY_PROPERTIES, TABLES, UNPARSED, Column, Kind, fingerprint
from .oddkeys import has_odd_keys, rename_odd_keys

MEMORY_LIMIT = "256MB"
# Small row groups keep the writer inside the memory limit: with DuckDB's default
# (122,880 rows) at 256 MB it spilled and took 3x as long (bench/README.md). Sized by
# bytes: 20,000 rows of 4 kB (40 custom fields an individual) ran out of 256 MB.
_ROW_GROUP_ROWS = 20_000
_ROW_GROUP_BYTES = 8 * 1024 * 1024  # of the records' JSON text
_MIN_ROW_GROUP_ROWS = 16  # out of memory below this: the records are too large
# A record larger than this fails the conversion (DuckDB keeps two such buffers a thread).
_MAX_RECORD_BYTES = 16 * 1024 * 1024
_one_at_a_time = threading.Lock()

_CODECS = {Compression.NONE: "uncompressed", Compression.GZIP: "gzip", Compression.ZSTD: "zstd"}

# AC's eventProperties: '{"name":"value",...}' concatenated without escaping. The text
# between the quotes is the value as it was, quotes and backslashes included; it is
# split on '","' and '":"', and refused (kept in _unparsed) where that is ambiguous:
# a piece without '":"', a name holding a quote, a repeated name.
_PROPERTIES_MACRO = r"""
CREATE MACRO ac_pairs(p) AS CASE
  WHEN list_bool_and(list_transform(p, lambda e:
         contains(e, '":"') AND NOT contains(split_part(e, '":"', 1), '"')))
  THEN TRY(map_from_entries(list_transform(p, lambda e:
         {'k': split_part(e, '":"', 1), 'v': e[length(split_part(e, '":"', 1)) + 4:]})))
  END;
CREATE MACRO ac_properties(s) AS CASE
  WHEN s = '{}' THEN MAP {}
  WHEN NOT contains(s, '\') AND json_valid(s) THEN TRY_CAST(s::JSON AS MAP(VARCHAR, VARCHAR))
  WHEN starts_with(s, '{"') AND ends_with(s, '"}') AND length(s) >= 7
  THEN ac_pairs(string_split(s[3:-3], '","'))
  END
"""
_LEGACY_PROPERTIES = (
    "TRY(map_from_entries(list_transform("
    "TRY_CAST(TRY_CAST({raw} AS JSON) AS STRUCT(name VARCHAR, value VARCHAR)[]), "
    "lambda e: {{'k': e.name, 'v': e.value}})))"
)
_TYPED = {
    Kind.STRING: "{raw}",
    # Only whole integers: a cast alone would round "3.5" to 4.
    Kind.INT64: "CASE WHEN regexp_full_match({raw}, '-?[0-9]+') THEN TRY_CAST({raw} AS BIGINT) END",
    # The session's zone is UTC, so a time without a zone is read as UTC, as AC means it.
    Kind.TIMESTAMP: "TRY_CAST(replace({raw}, ' UTC', 'Z') AS TIMESTAMPTZ)",
    Kind.BOOL: "TRY_CAST({raw} AS BOOLEAN)",
    Kind.PROPERTIES: "ac_properties({raw})",
    Kind.FIELDS: "TRY_CAST(TRY_CAST({raw} AS JSON) AS "
    "STRUCT(dataSourceId BIGINT, name VARCHAR, value VARCHAR)[])",
    Kind.MEMBERSHIPS: "TRY_CAST(TRY_CAST({raw} AS JSON) AS STRUCT(ids VARCHAR[], name VARCHAR)[])",
}


@dataclass(frozen=True)
class TypedFile:
    """What a conversion wrote: the manifest's Parquet fields."""

    rows: int
    schema_fingerprint: str
    new_columns: tuple[str, ...]  # columns AC served that its table did not list
    unparsed_values: int  # values kept in _unparsed because they did not fit
    file_bytes: int
    file_sha256: str


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def require_engine() -> None:
    """ConfigError unless DuckDB (the ``parquet`` extra) is installed: said at start,
    not at the first export."""
    _duckdb()


def _duckdb() -> Any:
    try:
        import duckdb  # only a Parquet output needs it: imported when used
    except ImportError:
        raise ConfigError(
            "output format parquet needs DuckDB: pip install 'acexport[parquet]'"
        ) from None
    return duckdb


def _connect(temp_dir: Path, threads: int = 2) -> Any:
    duckdb = _duckdb()
    con = duckdb.connect(
        config={
            "threads": threads,
            "memory_limit": MEMORY_LIMIT,
            "temp_directory": str(temp_dir),
            "preserve_insertion_order": False,  # AC's order means nothing; lets it stream
            "autoinstall_known_extensions": False,  # json, parquet and icu are built in
        }
    )
    # A time without a zone is read as UTC, as AC means it (not the host's zone).
    con.execute("SET TimeZone = 'UTC'")
    # Its progress bar would write into the daemon's log stream.
    con.execute("SET enable_progress_bar = false")
    return con


def _served_keys(con: Any, source: str) -> set[str]:
    """Every top-level key any record has: a column AC added is found wherever it is."""
    rows = con.execute(
        "SELECT DISTINCT unnest(json_keys(json)) FROM read_json_objects("
        f"{_literal(source)}, format = 'newline_delimited', "
        f"maximum_object_size = {_MAX_RECORD_BYTES})"
    ).fetchall()
    return {row[0] for row in rows}


def _query(type_: str, source: str, new_columns: list[str]) -> tuple[str, list[tuple[str, str]]]:
    """The SELECT producing the typed rows, and the output's (column, type) list."""
    table = TABLES[type_]
    inputs = [column.name for column in table] + new_columns
    if any(column.kind is Kind.PROPERTIES for column in table):
        inputs.append(LEGACY_PROPERTIES)
    read_columns = "{" + ", ".join(f"{_literal(name)}: 'VARCHAR'" for name in inputs) + "}"
    typed, checks, schema = [], [], []
    for index, column in enumerate(table):
        raw = _ident(column.name)
        expression = _TYPED[column.kind].format(raw=raw)
        if column.kind is Kind.PROPERTIES:
            legacy = _LEGACY_PROPERTIES.format(raw=_ident(LEGACY_PROPERTIES))
            expression = f"coalesce({expression}, {legacy})"
            raw = f"coalesce({raw}, {_ident(LEGACY_PROPERTIES)})"
        typed.append(f"{expression} AS t{index}, {raw} AS r{index}")
        schema.append((column.name, column.kind.value))
        if column.kind is not Kind.STRING:
            checks.append(
                (
                    column.name,
                    f"CASE WHEN t{index} IS NULL AND r{index} IS NOT NULL THEN r{index} END",
                )
            )
    extra = [f"{_ident(name)} AS n{index}" for index, name in enumerate(new_columns)]
    schema += [(name, "STRING") for name in new_columns]
    schema.append((UNPARSED, "JSON"))
    entries = ", ".join(f"{{'k': {_literal(name)}, 'v': {check}}}" for name, check in checks)
    unparsed = (
        f"CASE WHEN {' OR '.join(f'({check}) IS NOT NULL' for _, check in checks)} THEN "
        f"to_json(map_from_entries(list_filter([{entries}], lambda e: e.v IS NOT NULL))) END"
        if checks
        else "NULL::VARCHAR"
    )
    outputs = [f"t{index} AS {_ident(column.name)}" for index, column in enumerate(table)]
    outputs += [f"n{index} AS {_ident(name)}" for index, name in enumerate(new_columns)]
    outputs.append(f"{unparsed} AS {_ident(UNPARSED)}")
    query = (
        f"SELECT {', '.join(outputs)} FROM (SELECT {', '.join(typed + extra)} FROM read_json("
        f"{_literal(source)}, format = 'newline_delimited', columns = {read_columns}, "
        f"maximum_object_size = {_MAX_RECORD_BYTES}))"
    )
    return query, schema


def output_columns(type_: str, new_columns: list[str] | None = None) -> list[tuple[str, str]]:
    """The Parquet file's columns (name, AC's type) for ``type_``, in order."""
    return _query(type_, "x", new_columns or [])[1]


def known_columns(type_: str) -> set[str]:
    table: tuple[Column, ...] = TABLES[type_]
    names = {column.name for column in table}
    if any(column.kind is Kind.PROPERTIES for column in table):
        names.add(LEGACY_PROPERTIES)
    return names


def ndjson_to_parquet(
    source: Path,
    target: Path,
    type_: str,
    records: int,
    compression: Compression,
    temp_dir: Path,
) -> TypedFile:
    """Write ``source`` (checked JSON Lines of ``records`` rows) to ``target`` as
    Parquet typed for ``type_``, synced; raises PayloadError if a row went missing."""
    if type_ not in TABLES:
        raise PayloadError(f"no table is known for type {type_!r}")
    try:
        rows, unparsed, schema, new_columns = _within_memory(
            source, target, type_, records, compression, temp_dir
        )
    except _KeysRefused:
        # Keys no column can take as they are (case twins, "", a key twice,
        # _unparsed): renamed, so the export lands with every value AC served.
        renamed_source = temp_dir / f"{target.name}.keys.jsonl"
        try:
            temp_dir.mkdir(parents=True, exist_ok=True)
            rename_odd_keys(source, renamed_source, known_columns(type_), UNPARSED)
            rows, unparsed, schema, new_columns = _within_memory(
                renamed_source, target, type_, records, compression, temp_dir, renamed=True
            )
        finally:
            renamed_source.unlink(missing_ok=True)
    if rows != records:
        raise PayloadError(f"the Parquet file holds {rows} rows, the payload {records} records")
    size, sha256 = _sync_and_hash(target)
    return TypedFile(rows, fingerprint(schema), tuple(new_columns), unparsed, size, sha256)


class _KeysRefused(Exception):
    """The engine refused the records' keys (or would drop a value): rename them."""


def _within_memory(
    source: Path,
    target: Path,
    type_: str,
    records: int,
    compression: Compression,
    temp_dir: Path,
    *,
    renamed: bool = False,
) -> tuple[int, int, list[tuple[str, str]], list[str]]:
    """The conversion, retried with one thread, then smaller row groups, while DuckDB
    runs out of memory; ConversionError when it cannot be done, _KeysRefused (unless
    the keys were ``renamed`` already) when another of its errors may be the keys'."""
    engine_error = _duckdb().Error
    group_rows, threads = row_group_rows(source.stat().st_size, records), 2
    while True:
        try:
            return _convert(
                source, target, type_, records, compression, temp_dir, group_rows, threads,
                renamed=renamed,
            )  # fmt: skip
        except engine_error as exc:
            out_of_memory = isinstance(exc, _duckdb().OutOfMemoryException)
            if not out_of_memory and not renamed:
                raise _KeysRefused from None
            if not out_of_memory or group_rows <= _MIN_ROW_GROUP_ROWS:
                raise ConversionError(
                    f"converting the {type_} records to Parquet failed: "
                    f"{str(exc).splitlines()[0]} (acexport's conversion, not AC's data)"
                ) from None
            # Out of memory: first one thread (each holds its own buffers: 40 custom
            # fields of 10,000 individuals needed that), then smaller row groups.
            if threads > 1:
                threads = 1
            else:
                group_rows = max(_MIN_ROW_GROUP_ROWS, group_rows // 4)
            target.unlink(missing_ok=True)


def row_group_rows(source_bytes: int, records: int) -> int:
    """Rows per row group: about ``_ROW_GROUP_BYTES`` of the records' text, at most
    ``_ROW_GROUP_ROWS``: wide rows (4 kB) make small groups, narrow ones full ones."""
    per_record = max(1, source_bytes // max(1, records))
    return max(_MIN_ROW_GROUP_ROWS, min(_ROW_GROUP_ROWS, _ROW_GROUP_BYTES // per_record))


def _convert(
    source: Path,
    target: Path,
    type_: str,
    records: int,
    compression: Compression,
    temp_dir: Path,
    group_rows: int,
    threads: int,
    *,
    renamed: bool = False,
) -> tuple[int, int, list[tuple[str, str]], list[str]]:
    """One attempt: (rows written, values kept in _unparsed, schema, new columns)."""
    with _one_at_a_time:
        con = _connect(temp_dir, threads)
        try:
            con.execute(_PROPERTIES_MACRO)
            text = str(source)
            served = _served_keys(con, text) if records else set()
            if not renamed and has_odd_keys(served, known_columns(type_), UNPARSED):
                raise _KeysRefused
            new_columns = sorted(served - known_columns(type_) - {UNPARSED})
            query, schema = _query(type_, text, new_columns)
            written = con.execute(
                f"COPY ({query}) TO {_literal(str(target))} (FORMAT parquet, "
                f"COMPRESSION {_CODECS[compression]}, ROW_GROUP_SIZE {group_rows})"
            ).fetchone()
            rows = int(written[0]) if written else 0
            counted = con.execute(
                "SELECT coalesce(sum(len(json_keys(_unparsed))), 0) FROM read_parquet("
                f"{_literal(str(target))})"
            ).fetchone()
            unparsed = int(counted[0]) if counted else 0
        finally:
            con.close()
    return rows, unparsed, schema, new_columns


def count_rows(path: Path) -> int:
    """The rows a Parquet file says it holds (its footer); PayloadError if it is no
    Parquet file DuckDB can open."""
    with _one_at_a_time:
        con = _connect(path.parent)
        try:
            found = con.execute(
                "SELECT coalesce(sum(num_rows), 0) FROM "
                f"parquet_file_metadata({_literal(str(path))})"
            ).fetchone()
        except Exception as exc:  # DuckDB's errors share no base class worth naming
            raise PayloadError(
                f"it does not open as Parquet ({str(exc).splitlines()[0]})"
            ) from None
        finally:
            con.close()
    return int(found[0]) if found else 0


def _sync_and_hash(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(file.fileno())
    return size, digest.hexdigest()
