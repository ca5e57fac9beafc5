# -*- test-case-name: tests.test_chaos -*-
"""
The servers' data directories, read offline once they have stopped:
L{load_replica} rebuilds one server's committed log and state, with the
classes the server itself uses, into a
L{replichat.testing.history.Replica} for the history checker, and
L{load_replicas} does that for a whole cluster, on copies.
"""

from __future__ import annotations

import os
import shutil

from replichat.entries import CorruptSnapshot
from replichat.log import SegmentedLog
from replichat.node import decode_command
from replichat.snapshot import FileSnapshotStore
from replichat.state import ChatState
from replichat.testing.history import Replica


def load_replica(data_dir: str, node: int, commit_index: int):
    """
    Read a stopped server's data directory into a
    L{replichat.testing.history.Replica} at C{commit_index} (the commit
    index is not on disk: the caller knows it from the converged cluster),
    with the classes the server uses: its committed log entries, the
    snapshot its log starts from, and its state rebuilt as the server does
    at start-up, from the newest intact snapshot at or below C{commit_index}
    plus the log's entries after it, each applied with its epoch.

    Recovery may repair the directory (cut a torn tail): give it a copy.

    @return: the replica, and a note if it could not be rebuilt at exactly
        C{commit_index} (its newest snapshots are past it, the log no longer
        reaches back: the replica is then at the oldest such snapshot).
    """
    disk_log = SegmentedLog(os.path.join(data_dir, "log"))
    note = None
    try:
        store = FileSnapshotStore(os.path.join(data_dir, "snapshots"))
        usable = [s for s in store.load_all()
                  if not isinstance(s, CorruptSnapshot) and s.index >= disk_log.base_index]
        state = None
        for snapshot in usable:  # newest first
            if snapshot.index <= commit_index:
                state = ChatState.from_snapshot(snapshot.data)
                break
        if state is None and usable:
            # A snapshot taken while the servers stopped, past the index
            # they converged at.
            state = ChatState.from_snapshot(usable[-1].data)
            note = "node %d: its snapshots are past index %d; checked at %d" % (
                node, commit_index, state.applied_index)
            commit_index = state.applied_index
        elif state is None:
            if disk_log.base_index > 0:
                raise ValueError("node %d: no intact snapshot, and the log starts at %d"
                                 % (node, disk_log.first_index))
            state = ChatState()
        commit_index = min(commit_index, max(disk_log.last_index, state.applied_index))
        for entry in disk_log.read(state.applied_index + 1, commit_index + 1):
            state.apply(entry.index, decode_command(entry.data), entry.epoch)
        replica = Replica.of_storage(node, disk_log, store, commit_index, state)
    finally:
        disk_log.close()
    return replica, note


def load_replicas(directory: str, cluster, index: int, record) -> tuple[list, bool]:
    """
    Each server's data directory, copied under C{directory}/offline and
    read offline at C{index}; one that cannot be read is an anomaly in
    C{record}, one read at another index a note.

    @return: the replicas, and whether any is not at C{index}.
    """
    replicas = []
    partial = False
    offline = os.path.join(directory, "offline")
    for node, server in cluster.servers.items():
        copy = os.path.join(offline, "node-%d" % (node,))
        try:
            shutil.copytree(server.data_dir, copy)
            replica, note = load_replica(copy, node, index)
        except Exception as error:
            record.anomaly("unreadable", "node %d: %s: %s"
                           % (node, type(error).__name__, error))
            continue
        if note:
            record.notes.append(note)
            partial = True
        replicas.append(replica)
    return replicas, partial
