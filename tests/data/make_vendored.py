"""Regenerate tests/data/{cora,citeseer}.npz and vendored.json from ../shared/datasets.

    .venv/bin/python tests/data/make_vendored.py            # write them
    .venv/bin/python tests/data/make_vendored.py --check    # only say whether they are current

Each copy is decoded again and compared with the original before anything is written: every
array (dtype, shape, sha256 of the bytes) and every file (sha256) must come back the same.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*

from tests.data.vendored import (  # noqa: E402
    FILES,
    HERE,
    MANIFEST,
    NAMES,
    array_digest,
    decode,
    encode,
    file_sha256,
    npz_bytes,
    read_arrays,
    write_raw_arrays,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets"


def describe(root: Path) -> dict[str, object]:
    meta = pq.ParquetFile(root / "edges.parquet").metadata
    return {
        "files": {f: {"bytes": (root / f).stat().st_size, "sha256": file_sha256(root / f)} for f in FILES},
        "arrays": {k: array_digest(a) for k, a in read_arrays(root).items()},
        "parquet": {"created_by": meta.created_by, "num_rows": meta.num_rows,
                    "num_row_groups": meta.num_row_groups,
                    "compression": meta.row_group(0).column(0).compression},
    }


def build(shared: Path) -> tuple[dict[str, bytes], str]:
    """The npz files and vendored.json for the raw folders under SHARED, each one verified."""
    out: dict[str, bytes] = {}
    record: dict[str, object] = {"source": "../shared/datasets (Planetoid public splits)",
                                 "numpy": np.__version__, "pyarrow": pa.__version__, "datasets": {}}
    for name in NAMES:
        raw = shared / name
        enc = encode(raw)
        blob = npz_bytes(enc)
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            back = decode({k: z[k] for k in z.files})
        orig = describe(raw)
        got = {k: array_digest(a) for k, a in back.items()}
        if got != orig["arrays"]:
            raise SystemExit(f"{name}: the encoding is not lossless: {got} != {orig['arrays']}")
        with tempfile.TemporaryDirectory() as tmp:
            again = describe(write_raw_arrays(Path(tmp), back))
        for f in FILES:  # byte for byte, with this numpy and pyarrow
            if again["files"][f]["sha256"] != orig["files"][f]["sha256"]:  # type: ignore[index]
                raise SystemExit(f"{name}/{f}: the rewritten file differs from the original")
        out[f"{name}.npz"] = blob
        record["datasets"][name] = orig  # type: ignore[index]
    return out, json.dumps(record, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED, help="folder holding cora/ and citeseer/")
    ap.add_argument("--check", action="store_true", help="compare with the files here, write nothing")
    args = ap.parse_args(argv)
    blobs, record = build(args.shared)
    wanted = {**blobs, MANIFEST.name: record.encode()}
    if args.check:
        stale = [f for f, b in wanted.items() if not (HERE / f).is_file() or (HERE / f).read_bytes() != b]
        print("stale: " + ", ".join(stale) if stale else "up to date")
        return 1 if stale else 0
    for f, b in wanted.items():
        (HERE / f).write_bytes(b)
        print(f"{HERE / f}: {len(b):,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
