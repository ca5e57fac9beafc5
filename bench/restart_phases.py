#!/usr/bin/env python3
"""
Time each phase of a replichat server's recovery, in this process, on a
copy of a data directory (the original is never opened).

    .venv/bin/python bench/restart_phases.py DATA_DIR/node-1 [--runs 3] [--source DIR]

Phases, in the order L{replichat.server.ChatServer} runs them:

- C{log open}: L{SegmentedLog} reads and CRC-checks every segment (scan);
- C{snapshot read}: L{FileSnapshotStore.load_all} reads the newest snapshot
  file and checks its CRC;
- C{snapshot json}: C{json.loads} of the snapshot data;
- C{snapshot build}: the rest of L{ChatState.from_snapshot} (messages,
  accounts, rids);
- C{snapshot free}: freeing the decoded document;
- (or, for a snapshot format that is not JSON, C{snapshot decode}: all of
  L{ChatState.from_snapshot};)
- C{log read}: L{SegmentedLog.read} of the entries after the snapshot;
- C{log decode}: C{json.loads} of each entry's command;
- C{log apply}: L{ChatState.apply} of each.

The same work as L{replichat.node.Node.recover} (with the cyclic garbage
collector off, as it does), split so each phase is timed on its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import(source: str) -> None:
    """
    Import replichat from C{source} (default: this repository).
    """
    global CorruptSnapshot, SegmentedLog, REPLAY_CHUNK_BYTES, FileSnapshotStore, ChatState
    sys.path.insert(0, source)
    from replichat.entries import CorruptSnapshot
    from replichat.log import SegmentedLog
    from replichat.node import REPLAY_CHUNK_BYTES
    from replichat.snapshot import FileSnapshotStore
    from replichat.state import ChatState


def one_run(directory: str) -> dict:
    times = {}
    gc.disable()
    try:
        t = time.perf_counter()
        disk_log = SegmentedLog(os.path.join(directory, "log"))
        times["log open"] = time.perf_counter() - t

        t = time.perf_counter()
        snapshot = None
        for candidate in FileSnapshotStore(os.path.join(directory, "snapshots")).load_all():
            if not isinstance(candidate, CorruptSnapshot) and candidate.index >= disk_log.base_index:
                snapshot = candidate
                break
        times["snapshot read"] = time.perf_counter() - t

        state = ChatState()
        if snapshot is not None and not snapshot.data.startswith(b"{"):
            # A binary snapshot format: decoding and building are one step.
            t = time.perf_counter()
            state = ChatState.from_snapshot(snapshot.data)
            times["snapshot decode"] = time.perf_counter() - t
        elif snapshot is not None:
            t = time.perf_counter()
            document = json.loads(snapshot.data)
            times["snapshot json"] = time.perf_counter() - t
            # from_snapshot decodes the bytes itself: hand it the document
            # just decoded, so that what is timed here is only the build.
            module = sys.modules[ChatState.__module__]
            module.json = types.SimpleNamespace(loads=lambda data: document, dumps=json.dumps)
            try:
                t = time.perf_counter()
                state = ChatState.from_snapshot(snapshot.data)
                times["snapshot build"] = time.perf_counter() - t
            finally:
                module.json = json
            t = time.perf_counter()
            del document
            times["snapshot free"] = time.perf_counter() - t

        read = decode = apply = 0.0
        start, last, count = state.applied_index + 1, disk_log.last_index, 0
        while start <= last:
            t0 = time.perf_counter()
            entries = disk_log.read(start, max_bytes=REPLAY_CHUNK_BYTES)
            t1 = time.perf_counter()
            commands = [json.loads(entry.data) for entry in entries]
            t2 = time.perf_counter()
            for entry, command in zip(entries, commands):
                state.apply(entry.index, command)
            t3 = time.perf_counter()
            read, decode, apply = read + t1 - t0, decode + t2 - t1, apply + t3 - t2
            count += len(entries)
            start = state.applied_index + 1
        times["log read"], times["log decode"], times["log apply"] = read, decode, apply
        disk_log.close()
        times["total"] = sum(times.values())
        return {"times": times, "snapshot": snapshot.index if snapshot else 0,
                "snapshot_bytes": len(snapshot.data) if snapshot else 0, "replayed": count}
    finally:
        gc.enable()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("node_dir", help="a node's data directory (holding log/ and snapshots/)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--source", default=ROOT,
                        help="the replichat source tree to time (default: this repository)")
    args = parser.parse_args()
    _import(os.path.abspath(args.source))
    work = tempfile.mkdtemp(prefix="replichat-phases-")
    try:
        copy = os.path.join(work, "node")
        shutil.copytree(args.node_dir, copy, ignore=shutil.ignore_patterns("lock"))
        runs = []
        for _ in range(args.runs):
            runs.append(one_run(copy))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    phases = list(runs[0]["times"])
    if args.json:
        print(json.dumps({"runs": runs}, indent=2))
        return 0
    print("snapshot at %d (%.0f MiB), %d log entries replayed; %d runs"
          % (runs[0]["snapshot"], runs[0]["snapshot_bytes"] / 2**20, runs[0]["replayed"], len(runs)))
    print("%-16s %9s %19s" % ("phase", "median s", "min - max"))
    for phase in phases:
        values = [r["times"][phase] for r in runs]
        print("%-16s %9.3f %8.3f - %8.3f" % (phase, statistics.median(values), min(values), max(values)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
