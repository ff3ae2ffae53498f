"""The manifest: the completion marker written beside each data file, last."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import PurePosixPath

MANIFEST_SUFFIX = ".manifest.json"


def manifest_key(key: PurePosixPath) -> PurePosixPath:
    """The completion marker beside a data file."""
    return key.with_name(key.name + MANIFEST_SUFFIX)


@dataclass(frozen=True)
class Manifest:
    """The completion marker written beside each data file (README, "Output").

    Its camelCase field names are AC's, and the contract with readers of the output.
    """

    workspace: str
    type: str
    fromDate: str
    toDate: str
    createdDate: str | None
    downloadedAt: str
    file: str
    records: int
    payload_bytes: int
    payload_sha256: str
    format: str
    compression: str

    def to_json(self) -> bytes:
        # What json.dumps(indent=2) writes for these flat fields, without its pure-Python
        # encoder (indent turns the C one off): a tenth of the Python time per export.
        fields = ",\n".join(
            f"  {json.dumps(name)}: {json.dumps(value, ensure_ascii=False)}"
            for name, value in vars(self).items()
        )
        return ("{\n" + fields + "\n}\n").encode("utf-8")
