"""``acexport healthcheck``: exit 0 if the running daemon's /healthz answers ok.

For a container's HEALTHCHECK: it asks wherever the config says the daemon listens
(``daemon.listen``; all-interfaces addresses are asked on loopback), so moving the
port in the config does not break the check.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

from . import ExitCode
from .common import UsageError, exit_code_of, load


def main(args: argparse.Namespace) -> int:
    return exit_code_of("healthcheck", lambda: _check(args.config))


def health_url(listen: str) -> str:
    """The /healthz URL of ``daemon.listen``, asked on loopback for a wildcard host."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    # A wildcard address is where the daemon binds, not where to ask.
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104
    host = wildcard.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/healthz"


def _check(config: str | None) -> int:
    settings, _ = load(config)
    if not settings.daemon.listen:
        raise UsageError("daemon.listen is empty: the daemon serves no /healthz to ask")
    url = health_url(settings.daemon.listen)
    # No proxy, whatever $http_proxy says: a proxy's answer is not the daemon's, and it
    # reported healthy with no daemon running.
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(url, timeout=4) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        print(
            f"acexport healthcheck: {url} answered {exc.code}: {exc.read()[:300]!r}",
            file=sys.stderr,
        )
        return ExitCode.FAILED
    except OSError as exc:
        print(f"acexport healthcheck: {url}: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK
