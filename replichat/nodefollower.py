# -*- test-case-name: tests.test_node,tests.test_cluster -*-
"""
The follower's commit path: accept the leader's Appends (after its fsync
turn, L{replichat.nodeleader._LeaderCommit._sync}, they are answered),
backtrack where the logs differ, cut a divergent suffix (handing its client
commands in, L{replichat.nodemerge}), roll the state back when a healed
partition cut committed entries, and commit what the leader committed.
"""

from __future__ import annotations

from replichat import failpoints, merge
from replichat.nodecommands import REPLAY_CHUNK_BYTES, decode_command
from replichat.noderecovery import RecoveryError
from replichat.peermessages import Append, AppendReply
from replichat.snapshot import DIVERGED_SUFFIX
from replichat.state import ChatState


class _FollowerCommit:
    """
    The follower's commit path of L{replichat.node.Node}.

    Keeps C{_matched} (how far this log matches the leader's),
    C{_leader_commit}, C{_stable} and C{_pending_replies}; cutting the log
    updates C{_configs}, and rolling back resets C{state}, C{commit_index},
    C{_snapshot_index} and C{_bytes_since_snapshot} as recovery does
    (L{replichat.noderecovery}).
    """

    def _on_Append(self, peer: int, message: Append) -> None:
        if not self._accept_leader(peer, message.epoch):
            index = -1 if message.epoch == self.epoch else 0
            self.network.send(peer, AppendReply(self.epoch, False, index))
            return
        log = self.disk_log
        prev = message.prev_index
        entries = message.entries
        if prev > log.last_index:
            self.network.send(peer, AppendReply(self.epoch, False, log.last_index))
            return
        if prev < log.base_index:
            # Compacted here.  The entry the base stands for is usually the
            # leader's too; not if a snapshot of a losing side's history
            # came in (a snapshot may reach past what every member has).
            at_base = [e for e in entries if e.index == log.base_index]
            if at_base and at_base[0].epoch != log.base_epoch:
                self._start_over(peer)
                return
            entries = tuple(e for e in entries if e.index > log.base_index)
            prev = log.base_index
        elif log.epoch_at(prev) != message.prev_epoch:
            if prev == log.base_index and prev > 0:
                self._start_over(peer)  # even the base differs
                return
            self.network.send(peer, AppendReply(self.epoch, False, self._backtrack(prev)))
            return
        new = []
        for entry in entries:
            if new or entry.index > log.last_index:
                new.append(entry)
            elif log.epoch_at(entry.index) != entry.epoch:
                if failpoints.on(failpoints.SKIP_SUFFIX_TRUNCATION):
                    continue  # the planted bug: keep our divergent entry
                if not self._truncate_after(entry.index - 1):
                    return
                if log.last_index < entry.index - 1:
                    # Rolled back to nothing: the leader must start over.
                    self.network.send(peer, AppendReply(self.epoch, False, log.last_index))
                    return
                new.append(entry)
        try:
            if new:
                log.append(new)
        except OSError as error:
            self._fail("writing the log failed: %s" % (error,))
            return
        self._note_appended(new)
        self._matched = entries[-1].index if entries else max(self._matched, prev)
        self._leader_commit = max(self._leader_commit, message.commit_index)
        self._stable = max(self._stable, min(message.stable, self._matched))
        self._pending_replies.append((peer, self.epoch, self._matched))
        self._schedule_sync()

    def _backtrack(self, prev: int) -> int:
        # The epoch at prev differs: every entry of that epoch here is
        # suspect, so ask the leader to try before it.  That may go below
        # this node's commit index (a healed partition), never below what
        # it compacted, which is on every member.
        log = self.disk_log
        epoch = log.epoch_at(prev)
        index = prev
        while index > log.base_index and log.epoch_at(index) == epoch:
            index -= 1
        return index

    def _start_over(self, peer: int) -> None:
        """
        This log diverges from the leader's at or below its compacted base
        (it installed a snapshot of a losing side's history): hand in what
        follows the base, drop everything, and let the leader send a
        snapshot.
        """
        if self._truncate_after(0):
            self.network.send(peer, AppendReply(self.epoch, False, self.disk_log.last_index))

    def _truncate_after(self, index: int) -> bool:
        """
        Cut the log after C{index}, where it diverges from the leader's,
        handing the client commands cut to the leader (L{replichat.merge}).
        C{index} may be below the compacted base: then everything goes.
        """
        log = self.disk_log
        # Every client command is handed in, marked with whether this node
        # knew it committed: the commit index is not on disk, so after a
        # restart a committed, acknowledged entry looks uncommitted.
        start = max(index, log.base_index) + 1
        found = merge.orphans(self._decoded(start, log.last_index), self.commit_index)
        below = index < self.commit_index or index < log.base_index
        (self.log.warn if below else self.log.info)(
            "the leader's log diverges after {index} (commit index {commit}); "
            "cutting {cut} entries, {orphans} commands to re-propose",
            index=index,
            commit=self.commit_index,
            cut=log.last_index - index,
            orphans=len(found),
        )
        try:
            if below:
                # The cut, with what it hands in, is durable before any of
                # it is done, and redone at start-up if a crash stops it
                # (a snapshot holding cut entries must never be loaded).
                self._save_orphans(self._orphans + found, cut=index)
                self._finish_cut(index)
            else:
                if found:
                    self._save_orphans(self._orphans + found)  # durable before they go
                log.truncate_after(index)
        except OSError as error:
            self._fail("truncating the log failed: %s" % (error,))
            return False
        if below:
            return self._roll_back(index)
        dropped = [i for i, _ in self._configs if i > index]
        self._configs = [(i, c) for i, c in self._configs if i <= index]
        if dropped:
            self._membership_changed()
        return True

    def _decoded(self, start: int, end: int):
        """
        The entries from C{start} to C{end} with their commands.
        """
        while start <= end:
            entries = self.disk_log.read(start, end + 1, max_bytes=REPLAY_CHUNK_BYTES)
            for entry in entries:
                yield entry, decode_command(entry.data)
            start = entries[-1].index + 1

    def _finish_cut(self, index: int) -> None:
        """
        Cut the log after C{index}, set aside the snapshots that hold cut
        entries, and reset the log if no snapshot is left to start from;
        then forget the cut.  Idempotent: also run at start-up for a cut a
        crash interrupted.

        @raise OSError: if the disk fails.
        """
        for kept in self.snapshots.indexes():
            if kept > index:
                self.snapshots.quarantine(kept, DIVERGED_SUFFIX)
        log = self.disk_log
        if index < log.base_index:
            log.reset(0, 0)
        elif log.last_index > index:
            log.truncate_after(index)
        if log.base_index > 0 and not any(i >= log.base_index for i in self.snapshots.indexes()):
            log.reset(0, 0)  # nothing covers its start: begin again from nothing
        self._save_meta(cut=None)

    def _roll_back(self, index: int) -> bool:
        """
        Rebuild the state from before C{index}, after a healed partition
        cut committed entries: from a snapshot no newer than C{index} plus
        the log, or from nothing (the leader then sends a snapshot).
        """
        try:
            state = self._load_snapshot()
        except RecoveryError:
            state = None
        try:
            if state is None:
                self.disk_log.reset(0, 0)
                state = ChatState()
        except OSError as error:
            self._fail("resetting the log failed: %s" % (error,))
            return False
        self._use_state(state)
        self._matched = min(self._matched, self.disk_log.last_index)
        self._membership_changed()
        return True

    def _advance_follower_commit(self, leader_commit: int) -> None:
        self._leader_commit = max(self._leader_commit, leader_commit)
        index = min(self._leader_commit, self._matched, self.disk_log.synced_index)
        if index > self.commit_index:
            self._apply_through(index)
            self._maybe_snapshot()
