"""Deterministic, realistic records for the emulator's payloads.

A payload is cut into blocks of ``BLOCK_RECORDS`` records that can each be
rendered on their own, so the server streams (and resumes at any byte) without
ever holding a whole payload in memory. The same (workspace, type, window,
seed, format) always renders to the same bytes.

Rendering has to outrun the network stack (hundreds of MB/s in CPython), so
the expensive, random-looking part of each record is drawn from a small pool
of pre-rendered JSON fragments built once per (seed, type); only the ids and
timestamps, which must differ per record, are formatted per record.
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
BLOCK_RECORDS = 2048
_POOL_SIZE = 1024

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
    "Olúwaseun",
    "Ines",
    "Noah",
    "Björk",
    "Chloé",
]
_FAMILY = [
    "Müller",
    "García",
    "Nowak",
    "Kowalczyk",
    "Ødegaard",
    "Dubois",
    "Silva",
    "Tanaka",
    "Παπαδόπουλος",
    "Иванов",
    "王",
    "Sharma",
    "Adébáyọ̀",
    "O'Brien",
    "Smith",
    "Nguyễn",
]
_JOBS = ["Data Engineer", "Marketing Lead", "CTO", "Product Owner", "Analyst", "Designer"]
_COUNTRIES = ["DE", "ES", "PL", "DK", "FR", "BR", "JP", "GR", "UA", "CN", "IN", "NG", "US"]
_APPS = {
    "Blog": ["blogViewed", "blogClicked", "blogDepthReached"],
    "WebContent": ["webContentViewed", "webContentClicked"],
    "Page": ["pageViewed", "pageDepthReached", "pageUnloaded"],
    "Form": ["formViewed", "formSubmitted", "fieldFocused"],
    "Document": ["documentPreviewed", "documentDownloaded"],
}
_TOPICS = [
    "Pricing",
    "Über uns",
    "Café menu",
    "Roadmap 2027",
    "Careers — Join us",
    "Docs: Getting started",
    "Résumé tips",
    "Sustainability 🌱",
    "Contact",
    "Blog",
]
_SEGMENT_NAMES = [
    "Returning visitors",
    "Newsletter subscribers",
    "Käufer DACH",
    "Trial users",
    "Enterprise leads",
    "Mobile-only",
    "Événements 2026",
]


@dataclass(frozen=True)
class PayloadSpec:
    """What one export's data is: everything its bytes depend on."""

    workspace: str
    type: str
    from_ms: int
    to_ms: int
    records: int
    seed: int
    format: str = "ndjson"
    # AC's data of this range as recomputed since (page aggregates settle): a new
    # revision renders other values for the same rows.
    revision: int = 0

    @property
    def block_count(self) -> int:
        return max(1, -(-self.records // BLOCK_RECORDS))


def _fragment(type_: str, rng: random.Random) -> dict[str, Any]:
    """The per-type attributes that need not be unique per record."""
    if type_ == "event":
        app = rng.choice(list(_APPS))
        event = rng.choice(_APPS[app])
        topic = rng.choice(_TOPICS)
        props: dict[str, Any] = {"title": topic, "url": f"https://www.example.com/{app.lower()}"}
        if app == "Blog":
            props["readingTime"] = rng.randint(20, 900)
        elif app == "Form":
            props["formId"] = str(rng.randint(30000, 39999))
        elif app == "Document":
            props["fileName"] = f"{topic}.pdf"
        else:
            props["referrer"] = rng.choice(["https://www.google.com/", "", "https://t.co/"])
        return {
            "applicationId": app,
            "eventId": event,
            "eventProperties": props,
            "channelId": str(rng.randint(400000, 400003)),
            "dataSourceId": str(rng.randint(300000, 300009)),
            "sessionId": f"{rng.getrandbits(64):016x}",
            "context": {
                "browserName": rng.choice(["Chrome", "Firefox", "Safari", "Edge"]),
                "deviceType": rng.choice(["Desktop", "Smartphone", "Tablet"]),
                "platformName": rng.choice(["Windows", "Mac OS X", "Android", "iOS", "Linux"]),
                "languageId": rng.choice(["en-US", "de-DE", "pt-BR", "ja-JP", "es-ES"]),
                "timezoneOffset": rng.choice(["+01:00", "-03:00", "+09:00", "+00:00"]),
                "title": topic,
                "url": props["url"],
                "referrer": rng.choice(["https://www.google.com/", "", "https://t.co/"]),
                "screenWidth": rng.choice([390, 1280, 1440, 1920]),
            },
        }
    if type_ == "identity":
        return {"dataSourceId": str(rng.randint(300000, 300009))}
    if type_ == "individual":
        given, family = rng.choice(_GIVEN), rng.choice(_FAMILY)
        handle = f"{rng.randint(1, 9999)}"
        return {
            "demographics": {
                "givenName": given,
                "familyName": family,
                "email": f"user{handle}@example.com",
                "jobTitle": rng.choice(_JOBS),
                "country": rng.choice(_COUNTRIES),
                "city": rng.choice(["Berlin", "Kraków", "São Paulo", "Tōkyō", "Lagos", "Αθήνα"]),
                "company": rng.choice(["Acme GmbH", "Núcleo Ltda", "Ørsted A/S", "Initech"]),
                "language": rng.choice(["de", "pl", "pt", "ja", "en", "el"]),
            },
            "dataSourceIds": [str(rng.randint(300000, 300009))],
        }
    if type_ == "membership":
        return {"status": rng.choices(["ACTIVE", "INACTIVE"], [9, 1])[0]}
    if type_ == "page":
        # AC's page export is visits: one row per visit of one individual to one page.
        topic = rng.choice(_TOPICS)
        path = f"/{rng.randint(1, 999)}/{topic[:3].lower()}"
        return {
            "canonicalUrl": f"https://www.example.com{path}",
            "url": f"https://www.example.com{path}?utm_source={rng.choice(['mail', 'ads', 'x'])}",
            "title": topic,
            "views": rng.choices([1, 2, 3, 5], [70, 20, 7, 3])[0],
            "timeOnPage": rng.randint(1000, 600000),
            "sessionId": f"{rng.getrandbits(64):016x}",
            "segmentNames": rng.sample(_SEGMENT_NAMES, rng.randint(0, 3)),
            # Per-visit detail with real entropy: AC's visit exports compress 4-6x, not 8x+.
            "referrer": f"https://www.google.com/search?q={rng.getrandbits(60):x}",
            "ipAddress": f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
            f"{rng.randint(1, 254)}",
            "scrollDepth": rng.randint(0, 100),
        }
    if type_ == "segment":
        count = rng.randint(0, 100000)
        return {
            "name": rng.choice(_SEGMENT_NAMES),
            "segmentType": rng.choice(["STATIC", "DYNAMIC"]),
            "individualCount": count,
            "knownIndividualCount": rng.randint(0, count),
            "includeAnonymousUsers": rng.random() < 0.3,
        }
    raise ValueError(f"unknown record type {type_!r}")


@lru_cache(maxsize=64)
def _pool(seed: int, type_: str) -> tuple[bytes, ...]:
    """Pre-rendered UTF-8 JSON fragments: the object's members, without braces."""
    rng = random.Random(f"{seed}/{type_}")
    return tuple(
        json.dumps(_fragment(type_, rng), ensure_ascii=False, separators=(",", ":"))[1:-1].encode()
        for _ in range(_POOL_SIZE)
    )


def _base_id(spec: PayloadSpec, salt: str) -> int:
    digest = hashlib.sha256(
        f"{spec.seed}/{spec.workspace}/{spec.type}/{spec.from_ms}/{salt}".encode()
    ).digest()
    return 10**17 + int.from_bytes(digest[:7], "big") % (8 * 10**17)


@lru_cache(maxsize=1)
def _times_of_day() -> tuple[bytes, ...]:
    """``b"THH:MM:SS"`` for every second of a day: a lookup beats strftime 10x."""
    return tuple(b"T%02d:%02d:%02d" % (s // 3600, s // 60 % 60, s % 60) for s in range(86400))


@lru_cache(maxsize=256)
def _day(days: int) -> bytes:
    return datetime.fromtimestamp(days * 86400, UTC).strftime("%Y-%m-%d").encode()


# One bytes template per type: a single C-level ``%`` call renders a record.
# Arguments: id, other id, second, millisecond, index, pool fragment.
_TEMPLATES = {
    "event": b'{"id":"%d","ownerId":"%d","startTime":"%s.%03dZ",%s}',
    "identity": b'{"id":"%d","individualId":"%d","dataSourceIndividualPK":"%d",'
    b'"emailAddress":"user%d@example.com","dateCreated":"%s.%03dZ",%s}',
    "individual": b'{"id":"%d","dateCreated":"%s.%03dZ","dateModified":"%s.%03dZ",%s}',
    "membership": b'{"id":"%d","segmentId":"%d","individualId":"%d",'
    b'"dateFirstAdded":"%s.%03dZ","dateChanged":"%s.%03dZ",%s}',
    "page": b'{"primaryKey":"%d","individualId":"%d","eventDate":"%s.%03dZ",%s}',
    "segment": b'{"id":"%d","dateCreated":"%s.%03dZ",%s}',
}


def _records(spec: PayloadSpec, start: int, stop: int) -> list[bytes]:
    pool = _pool(spec.seed, spec.type)
    template = _TEMPLATES[spec.type]
    base = _base_id(spec, "id")
    other = _base_id(spec, "other")
    span = max(0, spec.to_ms - spec.from_ms)
    n = max(1, spec.records)
    times = _times_of_day()
    seconds = []
    millis = []
    for i in range(start, stop):
        sec, milli = divmod(spec.from_ms + span * i // n, 1000)
        days, sec = divmod(sec, 86400)
        seconds.append(_day(days) + times[sec])
        millis.append(milli)
    indices = range(start, stop)
    frags = [pool[(i * 2654435761 + spec.revision * 7) % _POOL_SIZE] for i in indices]
    rows = zip(indices, seconds, millis, frags, strict=True)
    if spec.type in ("event", "page"):
        return [template % (base + i, other + i * 7919 % 5000, s, m, f) for i, s, m, f in rows]
    if spec.type == "identity":
        return [template % (base + i, other + i, i + 1, i, s, m, f) for i, s, m, f in rows]
    if spec.type == "individual":
        return [template % (base + i, s, m, s, m, f) for i, s, m, f in rows]
    if spec.type == "membership":
        return [
            template % (base + i, other + i % 37, other + i * 7919 % 5000, s, m, s, m, f)
            for i, s, m, f in rows
        ]
    return [template % (base + i, s, m, f) for i, s, m, f in rows]


def render_block(spec: PayloadSpec, index: int) -> bytes:
    """Bytes of block ``index``; the blocks concatenated are the payload."""
    start = index * BLOCK_RECORDS
    stop = min(spec.records, start + BLOCK_RECORDS)
    last = index == spec.block_count - 1
    records = _records(spec, start, stop)
    if spec.format in ("ndjson", "zip"):  # storage zips the NDJSON blocks
        return b"\n".join(records) + b"\n" if records else b""
    if spec.records == 0:
        return b"[]\n"
    head = b"[\n" if index == 0 else b",\n"
    tail = b"\n]\n" if last else b""
    return head + b",\n".join(records) + tail


def iter_blocks(spec: PayloadSpec, first: int = 0) -> Iterator[bytes]:
    """Yield the payload's blocks from block ``first`` on."""
    for index in range(first, spec.block_count):
        yield render_block(spec, index)
