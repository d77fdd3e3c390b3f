"""The storage floor of "durable before send": one bare write + fdatasync, timed.

The audit trail commits every cycle's records with ``synchronous=FULL`` before the setpoints
are sent: its WAL gets at least one page (plus a 24-byte frame header) and one fdatasync per
commit. :func:`measure` times the least of that: ``os.pwrite`` of one block the size of the
audit database's page, then ``os.fdatasync``, in the audit's own folder (same filesystem,
same disk). The file is written in full and synced first, then its blocks are overwritten in
turn, as SQLite reuses its WAL after a checkpoint (no allocation, no size change). No SQLite,
no hashing, no Python records: what the disk and the kernel charge for one durable block.

B2 (``bench/b2_cycle.py``) prints it next to each port's cycle, measured in the same run.

    python bench/storage_floor.py [FOLDER] [--samples 2000]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

#: SQLite's default page size (the audit database's unless it says otherwise)
DEFAULT_BLOCK = 4096
#: blocks in the file, overwritten in turn
RING = 64
WARMUP = 10


def page_size(db: Path) -> int:
    """The page size of the SQLite database ``db`` (read-only), else :data:`DEFAULT_BLOCK`
    (the rows say the block size they measured)."""
    if not db.is_file():
        return DEFAULT_BLOCK
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return int(con.execute("PRAGMA page_size").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return DEFAULT_BLOCK


def measure(folder: Path, samples: int, block: int = DEFAULT_BLOCK) -> dict[str, Any]:
    """Time ``samples`` pwrite + fdatasync of ``block`` bytes in ``folder`` (ms per sample,
    after :data:`WARMUP`); the file is removed afterwards."""
    from run import latency_stats

    if samples < 1 or block < 1:
        raise ValueError(f"storage floor: samples={samples} and block={block} must be >= 1")
    path = folder / f"storage-floor-{os.getpid()}.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.pwrite(fd, bytes(block * RING), 0)
        os.fsync(fd)
        payload = os.urandom(block)
        times = []
        for k in range(samples + WARMUP):
            started = time.perf_counter()
            os.pwrite(fd, payload, (k % RING) * block)
            os.fdatasync(fd)
            if k >= WARMUP:
                times.append((time.perf_counter() - started) * 1e3)
    finally:
        os.close(fd)
        path.unlink()
    return {"block_bytes": block, "samples": samples, "write_fdatasync_ms": latency_stats(times)}


def describe(m: dict[str, Any]) -> str:
    """``median / p95 / p99`` of a :func:`measure` result, in ms."""
    s = m["write_fdatasync_ms"]
    return f"{s['median']:.3f} / {s['p95']:.3f} / {s['p99']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, default=Path(tempfile.gettempdir()))
    ap.add_argument("--samples", type=int, default=2000)
    args = ap.parse_args()
    m = measure(args.folder, args.samples)
    print(f"write+fdatasync of {m['block_bytes']} B in {args.folder}, median / p95 / p99 [ms]:")
    print(describe(m))


if __name__ == "__main__":
    main()
