"""The README and docs/: every query and recipe run as written, the settings reference
as the models say, every link resolving, and the README a landing page."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest

from acexport.config import load_settings, reference
from acexport.planner import due_windows
from tests.conftest import EmulatorFactory
from tests.daemon_helpers import DaemonProcess, job, manifests, write_config

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def doc_queries(reader: str = "read_json(") -> list[str]:
    """Every indented SQL block of the README and docs/ that reads the local exports/
    directory with ``reader``.

    (docs/s3.md's query is run against a real bucket by tests/test_s3.py.)"""
    text = "\n".join(page.read_text() for page in PAGES)
    blocks = re.findall(r"(?:\n {4}[^\n]*)+", text)
    queries = [
        "\n".join(line[4:] for line in block.strip("\n").splitlines())
        for block in blocks
        if "'exports/" in block and reader in block
    ]
    return [query.strip().rstrip(";") for query in queries]


def recipe(page: Path, marker: str) -> str:
    """The indented lines after each HTML comment starting with ``marker``, unindented,
    in order: what a user copies from the page."""
    lines: list[str] = []
    for block in re.findall(
        r"<!-- " + re.escape(marker) + r"[^\n]*-->\n\n((?: {4}[^\n]*\n|\n)+)", page.read_text()
    ):
        lines += [line[4:] for line in block.rstrip("\n").splitlines()]
    return "\n".join(lines) + "\n"


def test_the_docs_have_queries() -> None:
    """docs/ shows the queries this module runs, and the two on Parquet that
    tests/test_parquet.py runs on typed output."""
    assert len(doc_queries()) == 4
    assert len(doc_queries("read_parquet(")) == 2


@pytest.mark.slow
async def test_doc_queries_read_the_hive_layout(
    emulator: EmulatorFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each query of docs/ runs on real output, and its counts match the manifests."""
    tokens = {"acme": "acme-token", "beta": "beta-token"}
    emu = await emulator(tokens=tokens, records=25)
    jobs = job("a", "acme", catch_up="2d", lag="0s") + job(  # every type, snapshots too
        "b", "beta", types=["page"], catch_up="1d", lag="0s"
    )
    config = write_config(tmp_path, emu, jobs)
    config.write_text(config.read_text().replace("retention = 1200", "retention = 13"))
    daemon = await DaemonProcess.start(config, "--once")
    assert await daemon.wait(60) == 0
    written = manifests(tmp_path / "exports")
    monkeypatch.chdir(tmp_path)  # the queries read exports/ relative to where they run
    results = {query: duckdb.sql(query).fetchall() for query in doc_queries()}
    (latest,) = [rows for query, rows in results.items() if "type=individual" in query]
    (by_type_and_date,) = [rows for query, rows in results.items() if "date, count" in query]
    (per_workspace,) = [rows for query, rows in results.items() if "visitors" in query]
    (local_days,) = [rows for query, rows in results.items() if "local_day" in query]
    (snapshot,) = [m for m in written if m["type"] == "individual"]
    assert latest == [("acme", snapshot["file"].split("_")[1].split(".")[0], snapshot["records"])]
    expected: Counter[tuple[str, str]] = Counter()
    for manifest in [m for m in written if m["mode"] == "windows"]:
        path = next((tmp_path / "exports").rglob(manifest["file"]))
        expected[(manifest["type"], path.parent.name.removeprefix("date="))] += manifest["records"]
    got = {(row[0], str(row[1])): row[2] for row in by_type_and_date}
    assert got == dict(expected)
    visits = {row[0]: row[1] for row in per_workspace}
    pages = [m for m in written if m["type"] == "page"]
    assert visits == {
        ws: sum(m["records"] for m in pages if m["workspace"] == ws) for ws in ("acme", "beta")
    }
    assert all(row[2] >= row[1] for row in per_workspace)  # views: INT64 as text, cast
    assert all(row[3] >= 1 for row in per_workspace)
    # Issue 38 item 13: the events by their Berlin day, as recomputed from the files.
    berlin = ZoneInfo("Europe/Berlin")
    by_day: Counter[date] = Counter()
    for path in (tmp_path / "exports").rglob("event_*.jsonl.gz"):
        for line in gzip.decompress(path.read_bytes()).splitlines():
            stamp = json.loads(line)["eventDate"].removesuffix(" UTC")
            instant = datetime.fromisoformat(stamp).replace(tzinfo=UTC)
            by_day[instant.astimezone(berlin).date()] += 1
    assert dict(local_days) == dict(by_day)


def test_the_readme_is_a_landing_page() -> None:
    """Issue 33 item 3: the README is at most 20 KB and links to every page of docs/."""
    text = README.read_text()
    assert len(text.encode()) <= 20_000
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in text, f"the README does not link to {page.name}"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces
    as hyphens."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_link_of_the_docs_resolves() -> None:
    """A relative link names a file of the repository, and its #anchor a heading there."""
    for page in PAGES:
        text = re.sub(r"(?m)^ {4}.*$", "", page.read_text())  # code blocks hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            assert resolved.exists(), f"{page.name} links to {target}: no such file"
            if anchor:
                assert anchor in _anchors(resolved), f"{page.name} links to {target}: no heading"


def test_the_settings_reference_is_what_the_models_say() -> None:
    """Issue 33 item 3: docs/configuration.md lists every setting with its type, default
    and meaning, generated from the models (`make docs`); this fails when it is behind."""
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert reference.with_reference(page) == page, "run `make docs`"
    for heading, model, _ in reference.SECTIONS:
        for name, field in model.model_fields.items():
            assert field.description, f"{heading} {name} has no docstring"
            assert f"| `{name}` |" in page or name == "s3"  # [output.s3] is a section


def test_the_guide_to_a_new_output_store_names_every_method_it_needs() -> None:
    """docs/development.md tells how to add a store: it names the protocol's methods,
    all of them (it had fallen behind by four, and named one that does not exist)."""
    from acexport.output.store import OutputStore

    page = (ROOT / "docs" / "development.md").read_text()
    (bullet,) = re.findall(r"- \*\*A new output store\*\*.*?(?=\n- \*\*)", page, re.S)
    named = set(re.findall(r"`([a-z_]+)`", bullet)) - {"output", "url"}
    methods = {name for name in vars(OutputStore) if not name.startswith("_")}
    assert methods <= named, f"not named: {sorted(methods - named)}"
    assert {n for n in named if "_" in n} <= methods  # none that the protocol lacks


@pytest.mark.slow  # about 45 s: three exports, each polled as AC's would be (poll_initial)
def test_the_first_config_runs_as_written(tmp_path: Path) -> None:
    """The README's "first config, step by step", every line as written, in a shell with
    a fresh home: the emulator started, the config written, checked, run once, status
    and verify clean, the files there, the emulator stopped."""
    script = recipe(README, "first config, step")
    assert script.count("\n") > 20, script
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ACEXPORT_")},
        "HOME": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    began = datetime.now(UTC)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    first = tmp_path / "acexport-first"
    written = manifests(first / "exports")
    assert {m["type"] for m in written} == {"page", "event", "individual"}
    # Three days x 2 types; in the first two hours of a Berlin day (the job's lag)
    # the newest day is not due yet: two days, as the planner says at the run's time.
    job = load_settings(first / "acexport.toml").jobs[0]
    berlin = ZoneInfo("Europe/Berlin")
    due = {2 * len(due_windows(job, berlin, when)) for when in (began, datetime.now(UTC))}
    assert due <= {4, 6}
    assert len([m for m in written if m["mode"] == "windows"]) in due
    assert "manifest.json" in done.stdout
    assert "secret" not in done.stdout + done.stderr


@pytest.mark.slow
def test_the_install_from_the_checkout_runs_as_written(tmp_path: Path) -> None:
    """The README's install line, as written, in a copy of the checkout with a fresh
    home: the venv made, acexport built (its C line scans compiled) and on the PATH."""
    script = recipe(README, "install from the checkout")
    assert "pip install ." in script, script
    checkout = tmp_path / "acexport"
    checkout.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, checkout / name)
    shutil.copytree(
        ROOT / "daemon", checkout / "daemon",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info"),
    )  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ACEXPORT_", "VIRTUAL_ENV"))},
        "HOME": str(tmp_path / "home"),
        # The runner's own cache: the same packages, not downloaded again for each run.
        "PIP_CACHE_DIR": str(Path.home() / ".cache" / "pip"),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env, capture_output=True, text=True, timeout=300, cwd=checkout,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("acexport "), done.stdout
    venv_python = tmp_path / "home" / "venv" / "bin" / "python"
    compiled = subprocess.run(
        [str(venv_python), "-c", f"import {', '.join(_COMPILED)}"],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr


# The C modules setup.py builds (each with a Python fallback, but the install has them).
_COMPILED = (
    "acexport.payload._linescan",
    "acexport.payload._newfile",
    "acexport.output._localcommit",
)


def test_every_settings_snippet_of_the_docs_is_valid() -> None:
    """A user copies `[output]` or `[[hooks]]` from a page into their file: each snippet
    parses and validates beside a workspace and a job (no field misspelt, no value a
    release no longer takes)."""
    from acexport.config import Settings

    base = {
        "workspaces": {"acme": {"token": "t"}},
        "jobs": [{"name": "nightly", "workspace": "acme"}],
    }
    snippets = 0
    for page in PAGES[1:]:
        for block in re.findall(r"(?:\n {4}[^\n]*)+", page.read_text()):
            lines = [line[4:] for line in block.strip("\n").splitlines()]
            if lines[0].startswith("[") and any(" = " in line for line in lines):
                Settings.model_validate({**base, **tomllib.loads("\n".join(lines))})
                snippets += 1
    assert snippets >= 5  # [output] twice (Parquet, S3), [[hooks]] three times


# The IAM action each S3 call of the output store needs (AWS's service authorization
# reference): a call missing here fails the test below until it is mapped.
_IAM_ACTIONS = {
    "head_bucket": "s3:ListBucket",
    "list_objects_v2": "s3:ListBucket",
    "list_multipart_uploads": "s3:ListBucketMultipartUploads",
    "put_object": "s3:PutObject",
    "create_multipart_upload": "s3:PutObject",
    "upload_part": "s3:PutObject",
    "complete_multipart_upload": "s3:PutObject",
    "abort_multipart_upload": "s3:AbortMultipartUpload",
    "list_parts": "s3:ListMultipartUploadParts",
    "get_object": "s3:GetObject",
    "head_object": "s3:GetObject",
    "delete_object": "s3:DeleteObject",
    "delete_objects": "s3:DeleteObject",
}


def test_the_least_privilege_policy_allows_every_call_the_s3_store_makes() -> None:
    """docs/s3.md's policy, as a user would paste it: every S3 operation the store
    calls is allowed (it lacked GetObject and DeleteObject, which reading manifests,
    pruning snapshots and keep need)."""
    source = (ROOT / "daemon/acexport/output/s3.py").read_text()
    calls = set(re.findall(r"_client\.(\w+)\(", source))
    calls |= set(re.findall(r"_client\.(\w+),", source))  # handed to functools.partial
    calls |= set(re.findall(r'get_paginator\("(\w+)"\)', source))
    calls -= {"get_paginator"}
    unmapped = calls - set(_IAM_ACTIONS)
    assert not unmapped, f"map these S3 calls to their IAM action: {unmapped}"
    page = (ROOT / "docs/s3.md").read_text()
    policy_text = page.split("Least privilege", 1)[1].split("\n\n")[1]
    policy = json.loads(policy_text)
    allowed = {action for statement in policy["Statement"] for action in statement["Action"]}
    needed = {_IAM_ACTIONS[call] for call in calls}
    assert needed <= allowed, f"the policy lacks {sorted(needed - allowed)}"
