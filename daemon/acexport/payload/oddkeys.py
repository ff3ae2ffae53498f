"""Keys no SQL engine can take as columns, renamed so every value AC served lands.

DuckDB's identifiers are case-insensitive and cannot be empty, its JSON reader
refuses an object with a repeated key, and ``_unparsed`` is the converter's own
column. Records holding such keys (keys differing only in case, ``""``, a key
twice, ``_unparsed``) would fail the Parquet conversion at every look, or lose
a value. This rewrites the JSON Lines so each such key gets a name of its own
(``foo__2``), the same in every record, before the conversion; the renamed
columns are reported as new columns. Python per record, on this rare path only:
a plain export never comes here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import PayloadError


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its pairs, in order, repeated keys kept."""


def has_odd_keys(served: Iterable[str], known: Iterable[str], reserved: str) -> bool:
    """Whether any served key cannot be a column as it is (found without reading the
    records: keys repeated within one object show as the engine's error instead)."""
    seen: set[str] = {name.lower() for name in known}
    lowered: dict[str, str] = {}
    for key in served:
        if not key or key.lower() == reserved.lower():
            return True
        other = lowered.setdefault(key.lower(), key)
        if other != key or (key.lower() in seen and key not in known):
            return True
    return False


def rename_odd_keys(source: Path, target: Path, known: set[str], reserved: str) -> list[str]:
    """Write ``source``'s records to ``target`` with every top-level key a column can
    take (known columns keep their names); the renamed keys' new names."""
    occurrences: set[tuple[str, int]] = set()
    for pairs in _records(source):
        counts: dict[str, int] = {}
        for key, _ in pairs:
            counts[key] = counts.get(key, 0) + 1
            occurrences.add((key, counts[key]))
    names = _names(occurrences, known, reserved)
    with target.open("w", encoding="utf-8") as out:
        for pairs in _records(source):
            counts = {}
            fields = []
            for key, value in pairs:
                counts[key] = counts.get(key, 0) + 1
                fields.append(f"{json.dumps(names[(key, counts[key])])}:{_dump(value)}")
            out.write("{" + ",".join(fields) + "}\n")
    return sorted(name for (key, _), name in names.items() if name != key)


def _names(occurrences: set[tuple[str, int]], known: set[str], reserved: str) -> dict[Any, str]:
    """(key, n-th time in its record) -> a column name unique without regard to case;
    the first time of a known column keeps its name, then other keys by name."""
    taken = {name.lower() for name in known} | {reserved.lower()}
    names: dict[tuple[str, int], str] = {}
    for key, nth in sorted(occurrences, key=lambda o: (o[0] not in known, o[1], o[0])):
        if nth == 1 and key in known:
            names[(key, nth)] = key
            continue
        name = key if key and key.lower() not in taken else _free(key, taken)
        taken.add(name.lower())
        names[(key, nth)] = name
    return names


def _free(key: str, taken: set[str]) -> str:
    number = 2
    while f"{key}__{number}".lower() in taken:
        number += 1
    return f"{key}__{number}"


def _records(source: Path) -> Iterator[_Pairs]:
    with source.open("rb") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line, object_pairs_hook=_Pairs)
            except ValueError as exc:
                raise PayloadError(f"a record is not JSON: {exc}") from None
            if not isinstance(record, _Pairs):
                raise PayloadError("a record is not a JSON object")
            yield record


def _dump(value: Any) -> str:
    """JSON text of a value, its nested objects' repeated keys kept too."""
    if isinstance(value, _Pairs):
        return "{" + ",".join(f"{json.dumps(k)}:{_dump(v)}" for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)
