# -*- test-case-name: tests.test_node,tests.test_disk_faults -*-
"""
Recovery at start-up: the state from the newest intact snapshot plus the
log, and the configurations in the log above it.  The follower's roll back
after a healed partition (L{replichat.nodefollower}) starts over from a
snapshot the same way.
"""

from __future__ import annotations

import gc
import time

from replichat.entries import CorruptSnapshot
from replichat.membership import ClusterConfig
from replichat.nodecommands import _CONFIG_MARK, REPLAY_CHUNK_BYTES, decode_command
from replichat.state import ChatState


class RecoveryError(Exception):
    """
    The data directory cannot be recovered without losing acknowledged data,
    or belongs to another node; the server must not start.
    """


class _Recovery:
    """
    Recovery of L{replichat.node.Node}.

    Sets C{state}, C{commit_index}, C{_snapshot_index} and C{_configs} from
    C{snapshots} and C{disk_log} (resetting or refusing a log the snapshots
    do not cover); a node alone in its live set applies its whole log
    (L{replichat.nodeapply}).
    """

    def recover(self) -> None:
        """
        Rebuild the state from the newest intact snapshot plus the log.

        Entries after the snapshot are replayed only as far as they are
        known committed: the commit index is not on disk, so a replicated
        node replays nothing more until a leader (perhaps itself, through
        its marker entry) commits them; a node alone in its live set knows
        its whole log committed.
        """
        started = time.monotonic()
        # Recovery allocates millions of long-lived objects; the cyclic
        # collector would rescan them all repeatedly for nothing.
        gc.disable()
        try:
            self._use_state(self._load_snapshot())
            replayed = 0
            if self.cluster.live == {self.node_id}:
                replayed = self._apply_through(self.disk_log.last_index)
        finally:
            gc.enable()
        gc.freeze()
        self.log.info(
            "recovered {entries} log entries after snapshot {snapshot} "
            "in {seconds:.3f}s; last index {last}",
            entries=replayed,
            snapshot=self._snapshot_index,
            seconds=time.monotonic() - started,
            last=self.disk_log.last_index,
        )

    def _use_state(self, state: ChatState) -> None:
        """
        Start again from C{state}, as of its applied index: committed up to
        there, the configurations after it read from the log.
        """
        self.state = state
        self.commit_index = self._snapshot_index = state.applied_index
        self._bytes_since_snapshot = 0
        self._configs = self._scan_configs(state.applied_index + 1)

    def _load_snapshot(self) -> ChatState:
        disk_log = self.disk_log
        for snapshot in self.snapshots.load_all():
            if isinstance(snapshot, CorruptSnapshot):
                self.log.warn(
                    "setting aside corrupt snapshot {path}: {reason}",
                    path=snapshot.path,
                    reason=snapshot.reason,
                )
                # Out of the count of kept snapshots, so compaction never
                # relies on it as the fallback.
                if snapshot.index is not None:
                    self.snapshots.quarantine(snapshot.index)
                continue
            if snapshot.index < disk_log.base_index:
                # Entries between it and the log's start are gone.
                self.log.warn(
                    "skipping snapshot {index}: the log starts at {first}",
                    index=snapshot.index,
                    first=disk_log.first_index,
                )
                continue
            try:
                state = ChatState.from_snapshot(snapshot.data)
            except Exception as error:
                # Intact on disk (its checksum matched) but unreadable here:
                # a newer format, or a bug.  Never guess; stop.
                raise RecoveryError(
                    "snapshot %d cannot be read by this version: %s" % (snapshot.index, error)
                )
            if state.applied_index != snapshot.index:
                raise RecoveryError(
                    "snapshot %d holds the state at %d" % (snapshot.index, state.applied_index)
                )
            if snapshot.index > disk_log.last_index:
                disk_log.reset(snapshot.index, snapshot.epoch)
            return state
        if disk_log.base_index > 0:
            raise RecoveryError(
                "the log starts after entry %d but no intact snapshot covers "
                "the entries before it; refusing to start without them"
                % (disk_log.base_index,)
            )
        return ChatState()

    def _scan_configs(self, start: int) -> list[tuple[int, ClusterConfig]]:
        configs = []
        last = self.disk_log.last_index
        while start <= last:
            entries = self.disk_log.read(start, max_bytes=REPLAY_CHUNK_BYTES)
            for entry in entries:
                if _CONFIG_MARK in entry.data:
                    command = decode_command(entry.data)
                    configs.append((entry.index, ClusterConfig.from_json(command["cluster"])))
            start = entries[-1].index + 1
        return configs
