"""Deterministic records as AC's engine exports them: real columns, BigQuery's encoding.

The columns and their encoding are design section 1.1's, from AC's table
definitions and its BigQuery exporter (``EXPORT DATA ... format='JSON'``):
INT64 values are JSON strings, TIMESTAMPs read ``2024-01-05 13:00:00 UTC`` (with
microseconds when they have any), ``<``, ``>`` and ``&`` are ``\\u003c`` and so
on, NULL columns are absent, and an event's ``eventProperties`` is text built by
concatenation without escaping (a value with ``"`` or ``\\`` makes it invalid
JSON; ``legacy_properties`` gives the older ``properties`` array instead).

Two ways to say which rows an export holds:

- ``records`` (``--records N``): N rows spread over the requested range, whatever
  it is. Tests and benchmarks that need an exact count use it.
- ``records_per_day`` (``--records-per-day N``): AC's engine. The rows exist
  whatever is asked (N events a day; the other types in proportion, see
  ``_SHARE``), each with its own time, and an export holds the rows whose filter
  column lies in ``[fromDate, toDate]``, both bounds inclusive, compared at
  microsecond precision against millisecond bounds, as BigQuery compares them:
  ``eventDate`` for event, the hour it falls in for page, ``createDate`` for the
  entity tables. Entities change over time (each at its own pace): an export
  shows each in its state at the export's time, with ``modifiedDate`` saying
  when it last changed, so a snapshot differs from windows exported earlier.

Rendering has to outrun the network stack, so the parts of a row that need not
be unique are drawn from a small pool of pre-rendered fragments per (seed,
type); only ids and times are formatted per row.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

RECORD_TYPES = ("event", "identity", "individual", "membership", "page", "segment")
FORMATS = ("zip", "ndjson", "json")  # zip (AC's): one JSON Lines member; the others are legacy
ZIP_MEMBER = "data.json"  # BigQuery's shards, concatenated into one entry
BLOCK_RECORDS = 2048
_POOL_SIZE = 1024
_HOUR_US = 3_600_000_000
_DAY_US = 24 * _HOUR_US

# Rows a day per type, as a share of the events a day (``records_per_day``): events
# dominate, page rows are hourly aggregates, entity tables grow slowly.
_SHARE = {
    "event": 1.0,
    "page": 0.25,
    "identity": 0.02,
    "individual": 0.01,
    "membership": 0.03,
    "segment": 0.0005,
}
# How often an entity changes, at most (each one at its own pace, from a day up).
_MAX_CHANGE_DAYS = 20

_GIVEN = [
    "Zoë",
    "José",
    "Łukasz",
    "Søren",
    "Ægir",
    "François",
    "Ana",
    "Mei",
    "Yūki",
    "Σοφία",
    "Дмитрий",
    "李娜",
    "Priya",
    "Chloé",
]
_FAMILY = [
    "Müller",
    "García",
    "Nowak",
    "Ødegaard",
    "Dubois",
    "Silva",
    "Tanaka",
    "Παπαδόπουλος",
    "Иванов",
    "王",
    "O'Brien",
]
_JOBS = ["Data Engineer", "Marketing Lead", "CTO", "Product Owner", "Analyst", "Designer"]
_COUNTRIES = ["Germany", "Spain", "Poland", "Denmark", "France", "Brazil", "Japan", "Greece"]
_APPS = {
    "Blog": ["blogViewed", "blogClicked", "blogDepthReached"],
    "WebContent": ["webContentViewed", "webContentClicked"],
    "Page": ["pageViewed", "pageDepthReached", "pageUnloaded"],
    "Form": ["formViewed", "formSubmitted", "fieldFocused"],
    "Document": ["documentPreviewed", "documentDownloaded"],
}
# Some titles hold what breaks concatenated JSON: quotes and backslashes.
_TOPICS = ["Pricing", "Über uns", "Café menu", "Roadmap 2027", "Careers — Join us",
           'Say "hello" to Liferay', "Docs: C:\\Program Files", "Résumé tips",
           "Sustainability 🌱", "Contact <us> & more", "Blog"]  # fmt: skip
_SEGMENT_NAMES = ["Returning visitors", "Newsletter subscribers", "Käufer DACH", "Trial users",
                  "Enterprise leads", "Mobile-only", "Événements 2026"]  # fmt: skip


@dataclass(frozen=True)
class PayloadSpec:
    """What one export's data is: everything its bytes depend on."""

    workspace: str
    type: str
    from_ms: int
    to_ms: int  # inclusive, as AC's toDate
    records: int  # rows spread over the range; ignored with ``records_per_day``
    seed: int
    format: str = "ndjson"
    # AC's data of this range as recomputed since (page aggregates settle): a new
    # revision renders other values for the same rows.
    revision: int = 0
    records_per_day: int | None = None  # AC's engine: rows exist whatever is asked
    as_of_ms: int = 0  # when the export ran: the entities' state is theirs at that time
    legacy_properties: bool = False  # the older ``properties`` array of events
    iso_timestamps: bool = False  # event and page times as older exports: ISO 8601, Z


def bq_timestamp(us: int, iso: bool = False) -> bytes:
    """BigQuery's JSON form of a TIMESTAMP, ``2024-01-05 13:00:00[.123456] UTC``; with
    ``iso``, AC's older exports' ISO 8601 form, ``2024-01-05T13:00:00.123Z``."""
    days, rest = divmod(us, _DAY_US)
    seconds, micros = divmod(rest, 1_000_000)
    if iso:
        return b"%sT%s.%03dZ" % (_day(days), _times_of_day()[seconds][1:], micros // 1000)
    base = _day(days) + _times_of_day()[seconds]
    return base + (b".%06d UTC" % micros if micros else b" UTC")


@lru_cache(maxsize=1)
def _times_of_day() -> tuple[bytes, ...]:
    """``b" HH:MM:SS"`` for every second of a day: a lookup beats strftime 10x."""
    return tuple(b" %02d:%02d:%02d" % (s // 3600, s // 60 % 60, s % 60) for s in range(86400))


@lru_cache(maxsize=4096)
def _day(days: int) -> bytes:
    return datetime.fromtimestamp(days * 86400, UTC).strftime("%Y-%m-%d").encode()


def _bq_json(value: Any) -> str:
    """A JSON value as BigQuery writes it: UTF-8, with <, > and & escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _members(fields: dict[str, Any]) -> bytes:
    """A fragment: an object's members, without braces, NULLs left out."""
    return _bq_json({k: v for k, v in fields.items() if v is not None})[1:-1].encode()


def _concatenated_properties(props: dict[str, str]) -> str:
    # AC builds eventProperties by concatenation: nothing inside is escaped.
    return "{" + ",".join(f'"{name}":"{value}"' for name, value in props.items()) + "}"


def _maybe(rng: random.Random, value: Any, share: float = 0.8) -> Any:
    """A nullable column: present most of the time (BigQuery leaves NULLs out)."""
    return value if rng.random() < share else None


def _fragment(type_: str, rng: random.Random, legacy_properties: bool) -> dict[str, Any]:
    """A row's columns that need not be unique per row."""
    if type_ == "event":
        app = rng.choice(list(_APPS))
        topic = rng.choice(_TOPICS)
        url = f"https://www.example.com/{app.lower()}/{rng.randint(1, 400)}"
        props = {"title": topic, "url": url}
        if app == "Blog":
            props["readingTime"] = str(rng.randint(20, 900))
        elif app == "Form":
            props["formId"] = str(rng.randint(30000, 39999))
        properties: dict[str, Any] = (
            {"properties": [{"name": k, "value": v} for k, v in props.items()]}
            if legacy_properties
            else {"eventProperties": _concatenated_properties(props)}
        )
        return {
            "applicationId": app,
            "eventId": rng.choice(_APPS[app]),
            "browserName": _maybe(rng, rng.choice(["Chrome", "Firefox", "Safari", "Edge"])),
            "canonicalUrl": url,
            "channelId": str(rng.randint(400000, 400003)),
            "city": _maybe(rng, rng.choice(["Berlin", "Kraków", "São Paulo", "Tōkyō"]), 0.5),
            "contentLanguageId": _maybe(rng, rng.choice(["en-US", "de-DE", "pt-BR"])),
            "context": _bq_json({"screenWidth": rng.choice([390, 1280, 1920])}),
            "country": _maybe(rng, rng.choice(_COUNTRIES), 0.6),
            "dataSourceId": str(rng.randint(300000, 300009)),
            "deviceType": rng.choice(["Desktop", "Smartphone", "Tablet"]),
            "languageId": rng.choice(["en-US", "de-DE", "pt-BR", "ja-JP", "es-ES"]),
            "platformName": rng.choice(["Windows", "Mac OS X", "Android", "iOS", "Linux"]),
            "projectTimeZoneId": "UTC",
            "referrer": _maybe(rng, rng.choice(["https://www.google.com/", "https://t.co/"])),
            "timezoneOffset": rng.choice(["+01:00", "-03:00", "+09:00", "+00:00"]),
            "title": topic,
            "url": f"{url}?utm_source={rng.choice(['mail', 'ads', 'x'])}",
            **properties,
        }
    if type_ == "page":
        topic = rng.choice(_TOPICS)
        views = rng.choices([1, 2, 3, 5], [70, 20, 7, 3])[0]
        return {
            "bounce": str(rng.choice([0, 0, 1])),
            "browserName": _maybe(rng, rng.choice(["Chrome", "Firefox", "Safari", "Edge"])),
            "canonicalUrl": f"https://www.example.com/{rng.randint(1, 999)}/{topic[:3].lower()}",
            "channelId": str(rng.randint(400000, 400003)),
            "country": _maybe(rng, rng.choice(_COUNTRIES), 0.6),
            "ctaClicks": str(rng.randint(0, 3)),
            "deviceType": rng.choice(["Desktop", "Smartphone", "Tablet"]),
            "directAccess": str(rng.randint(0, 1)),
            "entrances": str(rng.randint(0, 1)),
            "exits": str(rng.randint(0, 1)),
            "indirectAccess": str(rng.randint(0, 1)),
            "platformName": rng.choice(["Windows", "Mac OS X", "Android", "iOS", "Linux"]),
            "reads": str(rng.randint(0, views)),
            "timeOnPage": str(rng.randint(1000, 600000)),
            "title": topic,
            "views": str(views),
        }
    if type_ == "identity":
        return {"projectId": f"project-{rng.randint(1, 3)}"}
    if type_ == "individual":
        return {
            "birthday": _maybe(
                rng,
                f"{rng.randint(1950, 2005)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)} 00:00:00 UTC",
                0.3,
            ),
            "fields": [
                {
                    "dataSourceId": str(rng.randint(300000, 300009)),
                    "name": "country",
                    "value": rng.choice(_COUNTRIES),
                }
            ],
            "firstName": rng.choice(_GIVEN),
            "gender": _maybe(rng, rng.choice(["female", "male", "other"]), 0.4),
            "languageId": _maybe(rng, rng.choice(["de_DE", "pl_PL", "pt_BR", "ja_JP"])),
            "lastName": rng.choice(_FAMILY),
            "memberships": [
                {"ids": [str(rng.randint(500000, 500099))], "name": rng.choice(_SEGMENT_NAMES)}
            ],
            "suppressed": False,
        }
    if type_ == "membership":
        return {"channelId": str(rng.randint(400000, 400003))}
    if type_ == "segment":
        return {
            "filter": "(demographics/country eq 'Germany')",
            "includeAnonymousUsers": rng.random() < 0.3,
            "scope": "PROJECT",
            "state": "READY",
            "type": rng.choice(["DYNAMIC", "STATIC"]),
            "authorName": rng.choice(_GIVEN),
        }
    raise ValueError(f"unknown record type {type_!r}")


@lru_cache(maxsize=64)
def _pool(seed: int, type_: str, legacy_properties: bool) -> tuple[bytes, ...]:
    rng = random.Random(f"{seed}/{type_}")
    return tuple(_members(_fragment(type_, rng, legacy_properties)) for _ in range(_POOL_SIZE))


def _key(spec: PayloadSpec, salt: str) -> int:
    """A per-(seed, workspace, type) number that ids are derived from."""
    digest = hashlib.sha256(f"{spec.seed}/{spec.workspace}/{spec.type}/{salt}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def _mix(value: int) -> int:
    """A cheap, well-spread 64-bit hash of an integer."""
    value = (value ^ (value >> 31)) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
    return value ^ (value >> 29)


@dataclass(frozen=True)
class _Row:
    """Who a row is (``n``, unique in the workspace's table) and when its filter
    column says it is (microseconds since the epoch)."""

    n: int
    at_us: int


def _rows_spread(spec: PayloadSpec) -> Iterator[_Row]:
    """``records`` rows spread evenly over the range (the range defines the rows)."""
    start_us, span = spec.from_ms * 1000, max(0, spec.to_ms - spec.from_ms) * 1000
    count = max(1, spec.records)
    base = (_key(spec, f"range/{spec.from_ms}/{spec.to_ms}") % 1_000_000) << 20
    for i in range(spec.records):
        yield _Row(base + i, start_us + span * i // count)


def _rows_in_range(spec: PayloadSpec) -> Iterator[_Row]:
    """AC's engine: the table's rows whose filter column lies in [fromDate, toDate]."""
    assert spec.records_per_day is not None
    per_day = spec.records_per_day * _SHARE[spec.type]
    low_us, high_us = spec.from_ms * 1000, spec.to_ms * 1000
    hour = low_us // _HOUR_US
    while hour * _HOUR_US <= high_us:
        # Rows of this hour: a fair share of the day's, the remainder spread over hours.
        first = int(hour * per_day / 24)
        count = int((hour + 1) * per_day / 24) - first
        for j in range(count):
            n = first + j
            if spec.type == "page":  # an hourly aggregate: its eventDate is the hour
                at = hour * _HOUR_US
            else:
                at = hour * _HOUR_US + _mix(n ^ spec.seed) % _HOUR_US
            if low_us <= at <= high_us:
                yield _Row(n, at)
        hour += 1


def _render(spec: PayloadSpec, rows: list[_Row]) -> list[bytes]:
    pool = _pool(spec.seed, spec.type, spec.legacy_properties)
    rotation = spec.revision * 7
    salt = _key(spec, "ids")
    out = []
    for row in rows:
        fragment = pool[(_mix(row.n + salt) + rotation) % _POOL_SIZE]
        out.append(_RENDERERS[spec.type](spec, row, salt, fragment))
    return out


def _event(spec: PayloadSpec, row: _Row, salt: int, fragment: bytes) -> bytes:
    h = _mix(row.n + salt)
    iso = spec.iso_timestamps
    return b'{"id":"%016x","createDate":"%s","eventDate":"%s","projectId":"p%d",' \
        b'"sessionId":"%016x","userId":"%d",%s}' % (
            h, bq_timestamp(row.at_us + h % 900_000_000, iso), bq_timestamp(row.at_us, iso),
            salt % 1000, _mix(h) >> 8, h % 50_000, fragment)  # fmt: skip


def _page(spec: PayloadSpec, row: _Row, salt: int, fragment: bytes) -> bytes:
    h = _mix(row.n + salt)
    return b'{"eventDate":"%s","sessionId":"%016x","userId":"%d",%s}' % (
        bq_timestamp(row.at_us, spec.iso_timestamps), h, h % 50_000, fragment)  # fmt: skip


def _version(spec: PayloadSpec, row: _Row) -> tuple[int, int]:
    """How often the entity changed by the export's time, and when it last did."""
    pace_us = (1 + _mix(row.n * 31 + spec.seed) % _MAX_CHANGE_DAYS) * _DAY_US
    age = spec.as_of_ms * 1000 - row.at_us
    changes = max(0, age // pace_us)
    return changes, row.at_us + changes * pace_us


def _individual_id(h: int) -> bytes:
    """A 64-hex-digit id, as an individual's (a SHA-256) looks."""
    return b"%016x%016x%016x%016x" % (_mix(h), _mix(h + 1), _mix(h + 2), _mix(h + 3))


def _identity(spec: PayloadSpec, row: _Row, salt: int, fragment: bytes) -> bytes:
    h = _mix(row.n + salt)
    return b'{"createDate":"%s","id":"%016x","individualId":"%s",%s}' % (
        bq_timestamp(row.at_us), h, _individual_id(h), fragment)  # fmt: skip


def _individual(spec: PayloadSpec, row: _Row, salt: int, fragment: bytes) -> bytes:
    changes, modified = _version(spec, row)
    email = b"user%d.%d@example.com" % (row.n, salt % 997)
    return b'{"createDate":"%s","emailAddress":"%s","id":"%s","jobTitle":"%s",' \
        b'"modifiedDate":"%s",%s}' % (
            bq_timestamp(row.at_us), email, hashlib.sha256(email.lower()).hexdigest().encode(),
            _JOBS[(row.n + changes) % len(_JOBS)].encode(), bq_timestamp(modified),
            fragment)  # fmt: skip


def _membership(spec: PayloadSpec, row: _Row, salt: int, fragment: bytes) -> bytes:
    changes, modified = _version(spec, row)
    h = _mix(row.n + salt)
    status = b"ACTIVE" if changes % 2 == 0 else b"INACTIVE"
    return b'{"createDate":"%s","identityId":"%016x","individualId":"%s",' \
        b'"modifiedDate":"%s","segmentId":"%d","status":"%s",%s}' % (
            bq_timestamp(row.at_us), h, _individual_id(h), bq_timestamp(modified), 500000 + h % 100,
            status, fragment)  # fmt: skip


def _segment(spec: PayloadSpec, row: _Row, salt: int, fragment: bytes) -> bytes:
    changes, modified = _version(spec, row)
    h = _mix(row.n + salt)
    known = 100 + (h + changes * 37) % 50_000
    # A PostgreSQL row as JSON: its numbers are numbers, its times ISO 8601.
    iso = datetime.fromtimestamp(row.at_us / 1e6, UTC).isoformat(timespec="milliseconds")
    changed = datetime.fromtimestamp(modified / 1e6, UTC).isoformat(timespec="milliseconds")
    return b'{"id":"%d","name":"%s","createDate":"%s","modifiedDate":"%s",' \
        b'"individualCount":%d,"knownIndividualCount":%d,"anonymousIndividualCount":%d,' \
        b'"activeIndividualCount":%d,"status":"ACTIVE",%s}' % (
            500000 + row.n, _SEGMENT_NAMES[h % len(_SEGMENT_NAMES)].encode(),
            iso.encode(), changed.encode(), known + known // 3, known, known // 3,
            known // 2, fragment)  # fmt: skip


_RENDERERS = {
    "event": _event,
    "page": _page,
    "identity": _identity,
    "individual": _individual,
    "membership": _membership,
    "segment": _segment,
}


def _row_batches(spec: PayloadSpec) -> Iterator[list[bytes]]:
    rows = _rows_spread(spec) if spec.records_per_day is None else _rows_in_range(spec)
    batch: list[_Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BLOCK_RECORDS:
            yield _render(spec, batch)
            batch = []
    if batch:
        yield _render(spec, batch)


@dataclass
class Rendered:
    """How many records the blocks yielded so far held."""

    records: int = 0


def iter_blocks(spec: PayloadSpec, counted: Rendered | None = None) -> Iterator[bytes]:
    """The payload's bytes, a block at a time (JSON Lines, or one JSON array)."""
    counted = counted or Rendered()
    if spec.format in ("ndjson", "zip"):  # storage zips the JSON Lines
        for records in _row_batches(spec):
            counted.records += len(records)
            yield b"\n".join(records) + b"\n"
        return
    first = True
    for records in _row_batches(spec):
        counted.records += len(records)
        yield (b"[\n" if first else b",\n") + b",\n".join(records)
        first = False
    yield b"[]\n" if first else b"\n]\n"
