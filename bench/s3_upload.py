"""Upload of a 1 GiB export to S3 (SeaweedFS on loopback): acexport against boto3.

Figure: wall time and peak RSS of acexport's S3 commit (``S3Store.commit``:
SHA-256 per part in a worker thread, parts verified by the store, manifest last)
of a --size-mb MB file. Baseline, same run, same file, same store:
``boto3.client("s3").upload_file`` (what ``aws s3 cp`` does). Each upload runs
in its own process so its RSS is its own; rounds alternate, medians are printed.
Target: time ratio <= 1.2, RSS flat (independent of the file size).

With --libraries, also the two candidate libraries on their own: import time,
upload time and RSS of a plain multipart upload with aiobotocore and with
obstore (if installed), for the choice recorded in bench/README.md.

    python bench/s3_upload.py [--size-mb 1024] [--rounds 3] [--libraries] [--quick]

$BENCH_S3_CONCURRENCY and $BENCH_S3_PART_MB set acexport's output.s3.concurrency
and part_size (4 and 8) for trying other settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.seaweed

from tests.seaweed import ACCESS_KEY, SECRET_KEY, running_seaweed

BUCKET = "bench"


def worker(kind: str, path: Path, endpoint: str, key: str) -> dict[str, float]:
    """One upload in this process: seconds to import, seconds to upload, peak RSS (MB)."""
    size = path.stat().st_size
    started = time.perf_counter()
    if kind == "acexport":
        from contextlib import AsyncExitStack

        from acexport.output.manifest import Manifest
        from acexport.output.open import S3Target
        from acexport.output.s3 import S3Store

        imported = time.perf_counter()
        target = S3Target(
            BUCKET,
            "acexport/",
            endpoint_url=endpoint,
            region="us-east-1",
            path_style=True,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            concurrency=int(os.environ.get("BENCH_S3_CONCURRENCY", "4")),
            part_size=int(os.environ.get("BENCH_S3_PART_MB", "8")) << 20,
        )
        manifest = Manifest(
            job="bench",
            workspace="ws",
            type="page",
            fromDate="",
            toDate="",
            createdDate=None,
            downloadedAt="",
            payload_bytes=0,
            payload_sha256="",
            payload_format="ndjson",
            file=key,
            file_bytes=size,
            file_sha256="",
            records=0,
            format="ndjson",
            compression="none",
        )

        async def upload() -> None:
            async with AsyncExitStack() as stack:
                store = S3Store(target)
                await store.start(stack)
                await store.commit(path, PurePosixPath(key), manifest)

        run = upload
    elif kind == "boto3":
        import boto3

        imported = time.perf_counter()

        async def run() -> None:
            client = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
            )
            client.upload_file(str(path), BUCKET, f"boto3/{key}")

    elif kind == "aiobotocore":
        from aiobotocore.session import get_session

        imported = time.perf_counter()

        async def run() -> None:
            async with get_session().create_client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
            ) as client:
                part = 8 << 20
                upload = await client.create_multipart_upload(Bucket=BUCKET, Key=f"aio/{key}")
                slots = asyncio.Semaphore(4)

                async def one(number: int, offset: int) -> dict[str, object]:
                    async with slots:
                        with path.open("rb") as handle:
                            handle.seek(offset)
                            body = handle.read(part)
                        answer = await client.upload_part(
                            Bucket=BUCKET,
                            Key=f"aio/{key}",
                            UploadId=upload["UploadId"],
                            PartNumber=number,
                            Body=body,
                        )
                        return {"PartNumber": number, "ETag": answer["ETag"]}

                parts = await asyncio.gather(
                    *(one(i + 1, off) for i, off in enumerate(range(0, size, part)))
                )
                await client.complete_multipart_upload(
                    Bucket=BUCKET,
                    Key=f"aio/{key}",
                    UploadId=upload["UploadId"],
                    MultipartUpload={"Parts": list(parts)},
                )

    elif kind == "obstore":
        import obstore
        from obstore.store import S3Store as ObStore

        imported = time.perf_counter()

        async def run() -> None:
            store = ObStore(
                BUCKET,
                endpoint=endpoint,
                region="us-east-1",
                access_key_id=ACCESS_KEY,
                secret_access_key=SECRET_KEY,
                client_options={"allow_http": True},
                virtual_hosted_style_request=False,
            )
            with path.open("rb") as handle:
                await obstore.put_async(
                    store, f"obstore/{key}", handle, chunk_size=8 << 20, max_concurrency=4
                )

    else:
        raise SystemExit(f"unknown worker {kind}")
    began = time.perf_counter()
    asyncio.run(run())
    ended = time.perf_counter()
    return {
        "import_s": imported - started,
        "upload_s": ended - began,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure(kind: str, path: Path, endpoint: str, key: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", kind, str(path), endpoint, key],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{kind} upload failed:\n{done.stderr[-3000:]}")
    out = done.stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def make_file(path: Path, size_mb: int) -> None:
    """Incompressible bytes: a gzip export's data looks like this to the store."""
    with path.open("wb") as handle:
        for _ in range(size_mb):
            handle.write(os.urandom(1 << 20))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, path, endpoint, key = sys.argv[2:6]
        print(json.dumps(worker(kind, Path(path), endpoint, key)))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--libraries", action="store_true", help="also aiobotocore and obstore")
    parser.add_argument("--quick", action="store_true", help="256 MB, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.size_mb, args.rounds = 256, 2
    kinds = ["acexport", "boto3"]
    if args.libraries:
        kinds += ["aiobotocore", "obstore"]
    with tempfile.TemporaryDirectory(prefix="acexport-s3-") as work:
        data = Path(work) / "export.jsonl.gz"
        make_file(data, args.size_mb)
        small = Path(work) / "small.bin"
        make_file(small, 64)
        with running_seaweed(Path(work) / "weed") as store:
            store.new_bucket(BUCKET)
            results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
            for kind in kinds:  # warm-up: the store grows its volumes on first writes
                measure(kind, small, store.endpoint, "warm-up")
            for round_ in range(args.rounds):
                for kind in kinds:
                    results[kind].append(measure(kind, data, store.endpoint, f"r{round_}"))
            flat = measure("acexport", small, store.endpoint, "small")
    print(f"upload of {args.size_mb} MB to SeaweedFS on loopback, median of {args.rounds}:")
    medians = {
        kind: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for kind, runs in results.items()
    }
    for kind, m in medians.items():
        print(
            f"  {kind:<12} {m['upload_s']:6.2f} s  {args.size_mb / m['upload_s']:6.0f} MB/s  "
            f"RSS {m['rss_mb']:5.0f} MB  import {m['import_s'] * 1000:5.0f} ms"
        )
    ratio = medians["acexport"]["upload_s"] / medians["boto3"]["upload_s"]
    print(f"  acexport RSS for a 64 MB file: {flat['rss_mb']:.0f} MB (flat if close to the above)")
    verdict = "met" if ratio <= 1.2 else "MISSED"
    print(f"ratio acexport / boto3 upload_file: {ratio:.2f} (target <= 1.2): {verdict}")
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
