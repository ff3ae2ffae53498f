"""Secret redaction: every value, short or long, cached or not, after late registration."""

from __future__ import annotations

import io
import json

import structlog

from acexport.ops.logging import (
    REDACTED,
    configure_logging,
    redact,
    register_secret,
    register_secrets,
)


def test_redaction_covers_short_long_and_late_secrets() -> None:
    """A token is replaced wherever it appears, even in a value seen before it was known."""
    register_secret("first-secret-token")
    assert redact("x") == "x"
    assert redact("Bearer first-secret-token") == f"Bearer {REDACTED}"
    long_text = "y" * 1000 + "first-secret-token"
    assert redact(long_text).endswith(REDACTED)
    seen_before = "Bearer later-secret-token"
    assert redact(seen_before) == seen_before  # not a secret yet: cached as is
    register_secret("later-secret-token")
    assert redact(seen_before) == f"Bearer {REDACTED}"  # the cache was cleared


def test_many_secrets_registered_at_once_are_each_redacted() -> None:
    """A thousand workspaces' tokens, registered in one call (the tables are built
    once, not once a token), are each replaced; a shorter one registered later
    still is, and a value too short to be a token is never registered."""
    tokens = [f"bulk-token-{i:04d}-value" for i in range(1000)]
    register_secrets([*tokens, "abc"])
    assert all(redact(f"Bearer {token}.") == f"Bearer {REDACTED}." for token in tokens)
    assert redact("abc and bulk-token-") == "abc and bulk-token-"
    register_secrets(["bulk-short"])
    assert redact("x bulk-short y") == f"x {REDACTED} y"
    assert redact(f"{tokens[7]}") == REDACTED


def test_log_lines_and_exceptions_are_redacted() -> None:
    """Event values, nested values and formatted exceptions never show a token."""
    register_secret("exception-token-value")
    stream = io.StringIO()
    configure_logging("json", "debug", stream)
    log = structlog.get_logger()
    log.info("nested", detail={"headers": ["Authorization: Bearer exception-token-value"]})
    try:
        raise RuntimeError("failed with exception-token-value")
    except RuntimeError:
        log.exception("crashed")
    structlog.reset_defaults()
    output = stream.getvalue()
    assert "exception-token-value" not in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert REDACTED in lines[0]["detail"]["headers"][0]
    assert REDACTED in lines[1]["exception"]


def test_library_log_records_are_redacted_with_their_tracebacks() -> None:
    """aiohttp/asyncio records go through redaction; JSON keeps the traceback, no internals."""
    import logging

    register_secret("stdlib-token-value")
    for log_format in ("json", "console"):
        stream = io.StringIO()
        configure_logging(log_format, "info", stream)
        library = logging.getLogger("aiohttp.client")
        try:
            raise ValueError("header had stdlib-token-value")
        except ValueError:
            library.exception("request failed for Bearer stdlib-token-value")
        structlog.reset_defaults()
        output = stream.getvalue()
        assert "stdlib-token-value" not in output, log_format
        assert "ValueError" in output, log_format  # the traceback is kept
        if log_format == "json":
            (line,) = [json.loads(text) for text in output.splitlines()]
            assert REDACTED in line["exception"]
            assert "_record" not in line
            assert "_from_structlog" not in line
    logging.getLogger().handlers.clear()


def test_redaction_with_many_tokens_of_several_lengths() -> None:
    """A thousand workspaces' tokens: each found anywhere in a value, nested ones whole."""
    import secrets as random_tokens

    tokens = [random_tokens.token_urlsafe(16 + i % 24) for i in range(1000)]
    for token in tokens:
        register_secret(token)
    register_secret(tokens[7] + "-longer")  # contains another secret: replaced whole
    for position, token in enumerate(tokens[::97]):
        text = "p" * position + token + "/page/2026-11-29.jsonl.gz"
        assert redact(text) == "p" * position + REDACTED + "/page/2026-11-29.jsonl.gz"
        assert redact(text * 40).count(REDACTED) == 40  # long texts skip the cache
    assert redact(f"a {tokens[7]}-longer b") == f"a {REDACTED} b"
    clean = "/out/w0456/page/2026/11/29/page-2026-11-29T00-00.jsonl.gz"
    assert redact(clean) == clean


class _RefusingStream(io.StringIO):
    """A log whose reader is gone: every write fails as a broken pipe does."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_log_that_refuses_lines_drops_them_and_counts_them() -> None:
    """Neither our lines nor a library's raise to the code that logged (a lane's task
    died of that); each is counted in acexport_log_lines_dropped_total."""
    import logging

    from prometheus_client.parser import text_string_to_metric_families

    from acexport.ops.metrics import Metrics

    def dropped() -> float:
        families = text_string_to_metric_families(Metrics().render().decode())
        return next(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == "acexport_log_lines_dropped_total"
        )

    before = dropped()
    configure_logging("json", "info", _RefusingStream())
    structlog.get_logger().info("export_done", records=3)
    structlog.get_logger().warning("lane_token_rejected")
    logging.getLogger("aiohttp.client").error("connection lost")
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()
    assert dropped() == before + 3
