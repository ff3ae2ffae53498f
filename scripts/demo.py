"""`make demo`: the emulator on loopback and one export of each type, as a newcomer sees it.

Starts `acexport emulator` on a free port (2-second processing, one job at a
time per workspace, as AC does), then runs `acexport export` for all six
types with the progress display, and shows a manifest and a record.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from acexport.emulator.process import running_emulator

TYPES = ("event", "identity", "individual", "membership", "page", "segment")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="acexport-demo-"))
    out = Path("exports")
    with running_emulator(
        "--token",
        "demo=demo-token",
        "--processing-time",
        "2",
        "--records",
        "500",
        "--redirect",
        "--gzip",
    ) as url:
        print(f"emulator listening on {url}")
        config = work / "demo.toml"
        config.write_text(
            f'[daemon]\nstate_dir = "{work}/state"\noutput_dir = "{out.absolute()}"\n'
            'log_format = "console"\n'
            '[http]\npoll_initial = "500ms"\npoll_max = "2s"\n'
            f'[workspaces.demo]\nbase_url = "{url}"\ntoken_env = "DEMO_TOKEN"\n'
        )
        env = {**os.environ, "DEMO_TOKEN": "demo-token"}
        manifest = ""
        for type_ in TYPES:
            print(
                f"\n$ acexport export --workspace demo --type {type_} --from 2022-01-01 "
                "--to 2022-01-01",
                flush=True,
            )
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "acexport",
                    "export",
                    "--config",
                    str(config),
                    "--workspace",
                    "demo",
                    "--type",
                    type_,
                    "--from",
                    "2022-01-01",
                    "--to",
                    "2022-01-01",
                ],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                return result.returncode
            manifest = result.stdout.strip()
    print(f"\nmanifest {manifest}:")
    print(Path(manifest).read_text())
    data = Path(manifest.removesuffix(".manifest.json"))
    first = gzip.decompress(data.read_bytes()).splitlines()[0]
    print("first record:", json.dumps(json.loads(first), ensure_ascii=False)[:300], "...")
    print(f"\nall exports are under ./{out}/ (hive layout: workspace/type/date=...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
