"""A command hook: reports each committed file to Dagster as a materialization of
an external asset (POST /report_asset_materialization/<asset key>).

    command = ["python3", "dagster_materialization.py", "http://dagster:3000", "acexport/page"]
"""

import json
import sys
import urllib.request

event = json.load(sys.stdin)
base_url, asset_key = sys.argv[1], sys.argv[2]
body = {
    "partition": event["fromDate"][:10],
    "data_version": event["file_sha256"],
    "metadata": {"records": event["records"], "revision": event["revision"],
                 "file": event["url"], "bytes": event["file_bytes"]},
}
request = urllib.request.Request(
    f"{base_url}/report_asset_materialization/{asset_key}",
    data=json.dumps(body).encode(),
    headers={"Content-Type": "application/json"},
)
urllib.request.urlopen(request, timeout=20)  # an error exits 1: acexport retries
