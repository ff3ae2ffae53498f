"""Object-storage output against a real S3 engine (SeaweedFS on loopback).

The daemon and its commands run as users run them (subprocesses, real sockets);
a recording proxy between acexport and the store shows the order of writes and
injects the store's failures. Every object is checked against what the
emulator served.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import shutil
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import pytest
from aiohttp import web

from tests.conftest import EmulatorFactory, RunningEmulator
from tests.daemon_helpers import DaemonProcess, asked, emulator_sha, job, run_once_at, write_config
from tests.daemon_helpers import manifests as local_manifests
from tests.ports import free_port
from tests.seaweed import ACCESS_KEY, SECRET_KEY, Fault, S3Proxy, Seaweed

# Every test here runs processes (or a real store) for seconds: not in the quick loop.
pytestmark = pytest.mark.slow

TOKENS = {"alpha": "alpha-token", "beta": "beta-token"}
# The jobs here ask for a window at a time (coalesce_max = 0): the tests compare each
# object with the one AC request it came from. Coalesced requests into S3 are
# test_coalesce.py's.
_buckets = iter(range(1000))


def bucket(seaweed: Seaweed) -> str:
    return seaweed.new_bucket(f"exports-{next(_buckets)}")


def s3_config(
    tmp_path: Path,
    emu: RunningEmulator,
    jobs: str,
    endpoint: str,
    bucket: str,
    *,
    compression: str = "none",
    secret: str = SECRET_KEY,
    extra: str = "",
) -> Path:

    (tmp_path / "key-id").write_text(ACCESS_KEY + "\n")
    (tmp_path / "secret").write_text(secret + "\n")
    (tmp_path / "secret").chmod(0o600)  # as check-config asks
    output = (
        f'[output]\nurl = "s3://{bucket}/acexport"\ncompression = "{compression}"\n'
        f'[output.s3]\nendpoint_url = "{endpoint}"\nregion = "us-east-1"\npath_style = true\n'
        f'access_key_id_file = "{tmp_path / "key-id"}"\n'
        f'secret_access_key_file = "{tmp_path / "secret"}"\npart_size = "5MiB"\n{extra}'
    )
    return write_config(tmp_path, emu, jobs, extra=output)


def one_window(
    tmp_path: Path, emu: RunningEmulator, proxy: S3Proxy, name: str, **options: Any
) -> Path:
    """One workspace, one type, the last day or two, through the recording proxy."""
    days = options.pop("catch_up", "1d")
    jobs = job("daily", "alpha", types=["page"], catch_up=days, lag="0s", coalesce_max=0)
    return s3_config(tmp_path, emu, jobs, proxy.url, name, **options)


async def run_once(config: Path, *args: str) -> DaemonProcess:
    daemon = await DaemonProcess.start(config, "--once", *args)
    await daemon.wait(120)
    return daemon


def data_and_manifests(objects: dict[str, bytes]) -> tuple[dict[str, bytes], dict[str, Any]]:
    manifests = {
        key.removesuffix(".manifest.json"): json.loads(body)
        for key, body in objects.items()
        if key.endswith(".manifest.json")
    }
    data = {key: body for key, body in objects.items() if not key.endswith(".manifest.json")}
    return data, manifests


@pytest.fixture
async def proxy(seaweed: Seaweed) -> Any:
    recorder = S3Proxy(seaweed.endpoint)
    await recorder.start()
    yield recorder
    await recorder.close()


async def test_run_once_into_s3_verified_manifest_last_and_the_bucket_is_the_truth(
    emulator: EmulatorFactory, seaweed: Seaweed, proxy: S3Proxy, tmp_path: Path
) -> None:
    """2 workspaces x 2 types x 3 days land byte-exact, each manifest after its data;
    with the state dir lost, a second run asks AC for nothing and writes nothing."""
    emu = await emulator(tokens=TOKENS, records=40, format="ndjson")
    jobs = "".join(
        job(f"daily-{ws}", ws, types=["page", "event"], catch_up="3d", lag="0s", coalesce_max=0)
        for ws in TOKENS
    )
    name = bucket(seaweed)
    config = s3_config(tmp_path, emu, jobs, proxy.url, name)
    first = await run_once(config)
    assert first.process.returncode == 0, "\n".join(first.raw[-20:])

    data, manifests = data_and_manifests(seaweed.objects(name))
    assert len(data) == len(manifests) == 12
    assert set(data) == set(manifests)
    served = emulator_sha(await emu.jobs())
    for key, manifest in manifests.items():
        assert key.startswith(
            f"acexport/workspace={manifest['workspace']}/type={manifest['type']}/"
        )
        sha = served[asked(manifest)]
        assert hashlib.sha256(data[key]).hexdigest() == manifest["payload_sha256"] == sha
        assert manifest["records"] == 40 == len(data[key].splitlines())

    # The manifest is written last: its PUT starts after its data's PUT has been answered.
    for key in manifests:
        data_put = [s for s in proxy.puts(f"/{name}/{key}") if "manifest" not in s.path]
        manifest_put = proxy.puts(f"/{name}/{key}.manifest.json")
        assert data_put
        assert manifest_put
        assert max(s.ended for s in data_put) <= min(s.started for s in manifest_put)
    assert "SECRET" not in "\n".join(first.raw).upper().replace("SECRET_ACCESS_KEY_FILE", "")

    def data_puts() -> int:  # the owner marker (output/owner.py) is put at every start
        return len([put for put in proxy.puts() if "acexport-owner" not in put.path])

    requests_before = (await emu.jobs())["workspaces"]
    puts_before = data_puts()
    shutil.rmtree(tmp_path / "state")
    second = await run_once(config)
    assert second.process.returncode == 0
    assert (await emu.jobs())["workspaces"] == requests_before  # AC was not asked again
    assert data_puts() == puts_before  # nothing uploaded again
    found = second.events("exports_found_in_store")
    assert sum(event["count"] for event in found) == 12


async def test_a_damaged_or_missing_object_is_exported_again_not_trusted(
    emulator: EmulatorFactory, seaweed: Seaweed, proxy: S3Proxy, tmp_path: Path
) -> None:
    """Issue 21 items 1 and 2 on S3: a 5-byte object beside its manifest is not
    adopted with the state dir lost; an object deleted while the ledger says done is
    exported again with the state dir kept. Each comes back byte-exact."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, records=40, format="ndjson")
    name = bucket(seaweed)
    config = one_window(tmp_path, emu, proxy, name, catch_up="3d")
    assert (await run_once(config)).process.returncode == 0
    data, _ = data_and_manifests(seaweed.objects(name))
    assert len(data) == 3
    truncated, deleted = sorted(data)[:2]
    client = seaweed.client()
    client.put_object(Bucket=name, Key=truncated, Body=b"trunc")
    shutil.rmtree(tmp_path / "state")

    lost_state = await run_once(config)
    assert lost_state.process.returncode == 0
    (untrusted,) = lost_state.events("stored_windows_not_trusted")
    assert untrusted["count"] == 1
    assert "5 bytes" in untrusted["reason"]
    assert sum(e["count"] for e in lost_state.events("exports_found_in_store")) == 2
    assert seaweed.objects(name)[truncated] == data[truncated]

    client.delete_object(Bucket=name, Key=deleted)
    kept_state = await run_once(config)
    assert kept_state.process.returncode == 0
    (missing,) = kept_state.events("exports_missing_from_store")
    assert missing["count"] == 1
    assert seaweed.objects(name)[deleted] == data[deleted]
    manifest = json.loads(seaweed.objects(name)[deleted + ".manifest.json"])
    assert manifest["file_bytes"] == len(data[deleted])
    assert manifest["file_sha256"] == hashlib.sha256(data[deleted]).hexdigest()


async def test_store_killed_mid_upload_recovers_without_duplicate_or_partial(
    emulator: EmulatorFactory, seaweed: Seaweed, proxy: S3Proxy, tmp_path: Path
) -> None:
    """SIGKILL the store as the first part goes up; it comes back and the upload
    completes from the local temp file: AC served the data once, one object, exact."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, records=25_000, format="ndjson")
    name = bucket(seaweed)
    config = one_window(tmp_path, emu, proxy, name)
    killed = asyncio.Event()

    async def kill_on_first_part(request: web.Request) -> None:
        if "partNumber=" in request.path_qs and not killed.is_set():
            killed.set()
            seaweed.sigkill()
            # Down longer than botocore's own three attempts (at most 1 + 2 s of backoff),
            # so the outage reaches acexport's retry and is not hidden inside botocore.
            threading.Timer(4.0, seaweed.start).start()

    proxy.before_forward = kill_on_first_part
    first = await run_once(config)
    assert first.process.returncode == 0, "\n".join(first.raw[-20:])
    assert killed.is_set()
    assert first.events("output_store_retrying")
    await asyncio.to_thread(_wait_until_up, seaweed)

    data, manifests = data_and_manifests(seaweed.objects(name))
    assert len(data) == len(manifests) == 1
    (key, body), manifest = next(iter(data.items())), next(iter(manifests.values()))
    assert len(body) > 5 * 1024 * 1024  # more than part_size: it went up in parts
    report = await emu.jobs()
    [served] = [j for j in report["jobs"] if j["state"] == "READY"]
    assert hashlib.sha256(body).hexdigest() == manifest["payload_sha256"] == served["sha256"]
    assert served["downloads_completed"] == 1  # not downloaded again

    # What the killed upload left is aborted by the next start; nothing else changes.
    client = seaweed.client()
    left = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
    config.write_text(
        config.read_text().replace("[daemon]\n", '[daemon]\nstale_upload_age = "0s"\n')
    )
    second = await run_once(config)
    assert second.process.returncode == 0
    assert client.list_multipart_uploads(Bucket=name).get("Uploads", []) == []
    if left:
        assert second.events("s3_stale_uploads_aborted")[0]["count"] == len(left)
    assert seaweed.objects(name) == {
        key: body,
        f"{key}.manifest.json": _manifest_body(seaweed, name, key),
    }


def _manifest_body(seaweed: Seaweed, name: str, key: str) -> bytes:
    return seaweed.client().get_object(Bucket=name, Key=f"{key}.manifest.json")["Body"].read()


def _wait_until_up(seaweed: Seaweed) -> None:
    deadline = time.monotonic() + 30
    while seaweed.process is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert seaweed.process is not None


async def test_only_our_old_uploads_are_aborted_at_start(
    emulator: EmulatorFactory, seaweed: Seaweed, tmp_path: Path
) -> None:
    """Issue 21 item 16: every multipart upload under the prefix was aborted at each
    start (with s3://bucket: every upload in the bucket). Now only keys the layout can
    produce, initiated before now - daemon.stale_upload_age."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, records=5)
    name = bucket(seaweed)
    jobs = job("daily", "alpha", types=["page"], catch_up="0s", lag="0s", coalesce_max=0)
    config = s3_config(tmp_path, emu, jobs, seaweed.endpoint, name)
    client = seaweed.client()
    ours = (
        "acexport/workspace=alpha/type=page/date=2020-01-01/page_20200101T0000_20200102T0000.jsonl"
    )
    for key in (ours, "acexport/notes/readme.txt", "another-app/big.bin"):
        client.create_multipart_upload(Bucket=name, Key=key)

    def uploads() -> set[str]:
        return {u["Key"] for u in client.list_multipart_uploads(Bucket=name).get("Uploads", [])}

    assert (await run_once(config)).process.returncode == 0
    assert len(uploads()) == 3  # all younger than an hour: maybe a live writer's
    config.write_text(
        config.read_text().replace("[daemon]\n", '[daemon]\nstale_upload_age = "0s"\n')
    )
    assert (await run_once(config)).process.returncode == 0
    assert uploads() == {"acexport/notes/readme.txt", "another-app/big.bin"}


async def test_slow_down_and_5xx_are_retried_without_asking_ac_again(
    emulator: EmulatorFactory, seaweed: Seaweed, proxy: S3Proxy, tmp_path: Path
) -> None:
    """SlowDown and 500s from the store: the commit waits and retries; AC serves once."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, records=50)
    name = bucket(seaweed)
    config = one_window(tmp_path, emu, proxy, name, compression="gzip")
    proxy.faults = [  # on the exports' objects (not the owner marker put at start)
        Fault("PUT", 503, "SlowDown", times=4, path_contains=".jsonl"),
        Fault("PUT", 500, "InternalError", 4, path_contains=".jsonl"),
    ]
    daemon = await run_once(config)
    assert daemon.process.returncode == 0, "\n".join(daemon.raw[-20:])
    assert len(daemon.events("output_store_retrying")) >= 2  # botocore retries some itself
    assert all(fault.times == 0 for fault in proxy.faults)
    data, manifests = data_and_manifests(seaweed.objects(name))
    [(key, body)] = data.items()
    assert key.endswith(".jsonl.gz")
    assert len(gzip.decompress(body).splitlines()) == manifests[key]["records"] == 50
    [served] = [j for j in (await emu.jobs())["jobs"] if j["state"] == "READY"]
    assert served["downloads_completed"] == 1


@pytest.mark.parametrize("code", ["InvalidArgument", "KeyTooLongError", "EntityTooLarge"])
async def test_a_permanent_store_error_fails_the_export_instead_of_retrying_forever(
    emulator: EmulatorFactory, seaweed: Seaweed, proxy: S3Proxy, tmp_path: Path, code: str
) -> None:
    """Issue 21 item 14: a 400 that no retry can fix ends the export with its reason;
    `run --once` ends (it never did)."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, records=5)
    name = bucket(seaweed)
    config = one_window(tmp_path, emu, proxy, name)
    proxy.faults = [Fault("PUT", 400, code, times=1000, path_contains=".jsonl")]
    daemon = await run_once(config)
    assert daemon.process.returncode == 1, "\n".join(daemon.raw[-30:])
    failed = daemon.events("export_failed")
    assert len(failed) == 1, "\n".join(daemon.raw[-30:])
    assert code in failed[0]["error"]
    assert not daemon.events("output_store_retrying")


async def test_wrong_credentials_or_bucket_exit_78_naming_bucket_and_endpoint(
    emulator: EmulatorFactory, seaweed: Seaweed, tmp_path: Path
) -> None:
    """A refusing store is a configuration error: bucket and endpoint named, no secret."""
    emu = await emulator(tokens={"alpha": "alpha-token"})
    jobs = job("daily", "alpha", types=["page"], catch_up="1d", lag="0s", coalesce_max=0)
    name = bucket(seaweed)
    wrong = "not-the-secret-key-at-all-42"
    config = s3_config(tmp_path, emu, jobs, seaweed.endpoint, name, secret=wrong)
    daemon = await run_once(config)
    assert daemon.process.returncode == 78
    text = "\n".join(daemon.raw)
    assert f"s3://{name}/acexport" in text
    assert seaweed.endpoint in text
    assert wrong not in text

    config = s3_config(tmp_path, emu, jobs, seaweed.endpoint, "no-such-bucket-here")
    daemon = await run_once(config)
    assert daemon.process.returncode == 78
    assert "s3://no-such-bucket-here/acexport" in "\n".join(daemon.raw)
    assert (await emu.jobs())["workspaces"]["alpha"]["requests"] == 0  # AC never asked


async def test_access_denied_mid_run_fails_exports_named_in_healthz_and_status(
    emulator: EmulatorFactory, seaweed: Seaweed, proxy: S3Proxy, tmp_path: Path
) -> None:
    """Access revoked after start: exports fail, /healthz and status name the store."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, records=10)
    name = bucket(seaweed)
    port = free_port()
    config = one_window(tmp_path, emu, proxy, name, catch_up="2d")
    config.write_text(config.read_text().replace('listen = ""', f'listen = "127.0.0.1:{port}"'))
    proxy.faults = [Fault("PUT", 403, "AccessDenied", times=100, path_contains=".jsonl")]
    daemon = await DaemonProcess.start(config)
    try:
        await daemon.wait_for(lambda: len(daemon.events("export_failed")) >= 2)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as answer,
        ):
            health = await answer.json()
        assert answer.status == 503
        problem = health["problems"]["output store"]
        assert "AccessDenied" in problem
        assert f"s3://{name}/acexport" in problem
    finally:
        daemon.send(signal.SIGTERM)
        await daemon.wait(30)
    status = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "acexport", "status", "--config", str(config)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await status.communicate()
    assert "AccessDenied" in out.decode()
    assert SECRET_KEY not in out.decode()


async def test_duckdb_reads_the_bucket_hive_partitioned(
    emulator: EmulatorFactory, seaweed: Seaweed, tmp_path: Path
) -> None:
    """The real format (ZIP in, gzip out) in S3, read by DuckDB over s3fs with hive columns."""
    s3fs = pytest.importorskip("s3fs")
    emu = await emulator(tokens=TOKENS, records=30)
    jobs = "".join(
        job(f"daily-{ws}", ws, types=["page", "event"], catch_up="2d", lag="0s", coalesce_max=0)
        for ws in TOKENS
    )
    name = bucket(seaweed)
    config = s3_config(tmp_path, emu, jobs, seaweed.endpoint, name, compression="gzip")
    daemon = await run_once(config)
    assert daemon.process.returncode == 0, "\n".join(daemon.raw[-20:])

    fs = s3fs.S3FileSystem(
        key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=seaweed.endpoint, asynchronous=False
    )
    con = duckdb.connect()
    con.register_filesystem(fs)
    files = f"s3://{name}/acexport/**/*.jsonl.gz"
    rows = con.execute(
        "SELECT workspace, type, count(*) FROM read_json(?, hive_partitioning = true, "
        "union_by_name = true) GROUP BY ALL ORDER BY ALL",
        [files],
    ).fetchall()
    _, manifests = data_and_manifests(seaweed.objects(name))
    expected = Counter()
    for manifest in manifests.values():
        expected[(manifest["workspace"], manifest["type"])] += manifest["records"]
    assert rows == sorted((ws, t, n) for (ws, t), n in expected.items())
    assert sum(n for _, _, n in rows) == 8 * 30


async def test_a_local_output_dir_is_the_truth_too(
    emulator: EmulatorFactory, tmp_path: Path
) -> None:
    """With the state dir lost, neither run nor backfill asks AC for what the directory holds."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, records=5)
    config = write_config(
        tmp_path,
        emu,
        job("daily", "alpha", types=["page", "event"], catch_up="3d", lag="0s", coalesce_max=0),
    )
    first = await run_once(config)
    assert first.process.returncode == 0
    before = (await emu.jobs())["workspaces"]["alpha"]["requests"]
    shutil.rmtree(tmp_path / "state")
    second = await run_once(config)
    assert second.process.returncode == 0
    assert sum(e["count"] for e in second.events("exports_found_in_store")) == 6
    shutil.rmtree(tmp_path / "state")
    days = sorted(m["fromDate"][:10] for m in local_manifests(tmp_path / "exports"))
    backfill = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "acexport", "backfill", "--config", str(config)),
        *("--job", "daily", "--from", days[0], "--to", days[-1]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await backfill.communicate()
    assert backfill.returncode == 0, err.decode()[-2000:]
    assert (await emu.jobs())["workspaces"]["alpha"]["requests"] == before
    assert len(local_manifests(tmp_path / "exports")) == 6


async def test_parquet_in_the_bucket_read_typed_and_verified(
    emulator: EmulatorFactory, seaweed: Seaweed, tmp_path: Path
) -> None:
    """Issue 23 on S3: typed Parquet windows and snapshots in SeaweedFS, read by DuckDB
    over s3fs with hive columns and typed columns; `acexport verify` downloads and checks
    each object, and names one replaced with other bytes of the same size."""
    s3fs = pytest.importorskip("s3fs")
    emu = await emulator(tokens=TOKENS, records=20)
    jobs = job(
        "a", "alpha", types=["page", "event", "individual"], catch_up="2d", lag="0s", coalesce_max=0
    )
    name = bucket(seaweed)
    config = s3_config(tmp_path, emu, jobs, seaweed.endpoint, name, compression="zstd")
    config.write_text(config.read_text().replace("[output]\n", '[output]\nformat = "parquet"\n'))
    daemon = await run_once(config)
    assert daemon.process.returncode == 0, "\n".join(daemon.raw[-20:])
    data, manifests = data_and_manifests(seaweed.objects(name))
    assert len(data) == 5  # 2 days x 2 types, one snapshot
    assert all(key.endswith(".parquet") for key in data)

    fs = s3fs.S3FileSystem(
        key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=seaweed.endpoint, asynchronous=False
    )
    con = duckdb.connect()
    con.register_filesystem(fs)
    rows = con.execute(
        "SELECT type, typeof(eventDate), count(*) FROM read_parquet(?, hive_partitioning = true, "
        "union_by_name = true) WHERE type IN ('page', 'event') GROUP BY ALL ORDER BY ALL",
        [f"s3://{name}/acexport/*/*/date=*/*.parquet"],
    ).fetchall()
    assert rows == [
        ("event", "TIMESTAMP WITH TIME ZONE", 40),
        ("page", "TIMESTAMP WITH TIME ZONE", 40),
    ]

    code, out, err = await _cli("verify", "--config", str(config))
    assert code == 0, err
    assert "5 files" in out
    victim = next(key for key in data if "type=page" in key)
    seaweed.client().put_object(Bucket=name, Key=victim, Body=bytes(len(data[victim])))
    code, out, _ = await _cli("verify", "--config", str(config))
    assert code == 1
    assert f"s3://{name}/{victim}: has other bytes" in out
    assert manifests[victim]["rows"] == 20


async def _cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "acexport", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), err.decode()


async def test_keep_deletes_old_windows_from_the_bucket_manifest_first(
    emulator: EmulatorFactory, seaweed: Seaweed, proxy: S3Proxy, tmp_path: Path
) -> None:
    """Issue 37 item 1 on S3: the windows older than keep go (data and manifest), the
    newer ones and an object of the user's stay; in two DeleteObjects requests, the
    manifests' first, not a DELETE per object."""

    from tests.conftest import FakeClock

    clock = FakeClock(time.time())
    emu = await emulator(clock=clock, tokens={"alpha": "alpha-token"}, records=5, format="ndjson")
    jobs = job("daily", "alpha", types=["page"], catch_up="2d", lag="0s", keep="4d")
    name = bucket(seaweed)
    config = s3_config(tmp_path, emu, jobs, proxy.url, name)

    async def run_once() -> None:
        await run_once_at(config, clock)

    await run_once()
    _, first = data_and_manifests(seaweed.objects(name, "acexport/workspace="))
    seaweed.client().put_object(Bucket=name, Key="acexport/workspace=alpha/notes.txt", Body=b"x")
    clock.advance(4 * 86400)
    proxy.seen.clear()
    await run_once()
    deletes = [
        (s.method, s.status)
        for s in proxy.seen
        if "?delete" in s.path or (s.method == "DELETE" and "owner" not in s.path)
    ]
    assert deletes == [("POST", 200), ("POST", 200)]
    data, manifests = data_and_manifests(seaweed.objects(name, "acexport/workspace="))
    assert set(first).isdisjoint(manifests)  # the first windows' manifests are gone
    assert set(first).isdisjoint(data)  # and their data
    assert len(manifests) == 2
    assert set(data) == set(manifests) | {"acexport/workspace=alpha/notes.txt"}


async def test_a_compression_change_in_the_bucket_keeps_each_window_one_object(
    emulator: EmulatorFactory, seaweed: Seaweed, tmp_path: Path
) -> None:
    """gzip, then zstd, into a bucket: the done windows are found at the keys the ledger
    recorded (nothing uploaded again), and a reexport's new .zst object replaces its
    window's .gz one (both deleted there only once the new one is recorded)."""
    emu = await emulator(tokens={"alpha": "alpha-token"}, records=5)
    name = bucket(seaweed)
    jobs = job("daily", "alpha", types=["page"], catch_up="3d", lag="0s")
    config = s3_config(tmp_path, emu, jobs, seaweed.endpoint, name, compression="gzip")
    assert (await run_once(config)).process.returncode == 0
    before = seaweed.objects(name)
    assert len([k for k in before if k.endswith(".jsonl.gz")]) == 3
    config.write_text(config.read_text().replace('"gzip"', '"zstd"'))
    assert (await run_once(config)).process.returncode == 0
    assert seaweed.objects(name) == before
    newest = max(k for k in before if k.endswith(".jsonl.gz"))
    day = newest.split("date=")[1][:10]
    reexport = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "acexport", "reexport", "--config", str(config)),
        *("--job", "daily", "--from", day, "--to", day),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await reexport.communicate()
    assert reexport.returncode == 0, err.decode()[-2000:]
    after = seaweed.objects(name)
    data = sorted(k for k in after if k.endswith((".gz", ".zst")))
    assert len(data) == 3, data
    assert newest not in after
    assert f"{newest}.manifest.json" not in after
    assert newest.removesuffix(".gz") + ".zst" in after
