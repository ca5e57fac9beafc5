# -*- test-case-name: tests.test_cluster,tests.test_node -*-
"""
Who leads which epoch: taking an epoch after winning an election (durable
in the meta file first, then the marker entry), following a leader in its
epoch, and stepping down, which fails what was waiting to commit.
"""

from __future__ import annotations

from replichat import election, errors
from replichat.errors import ChatError
from replichat.nodeleader import Progress
from replichat.peermessages import CANDIDATE, FOLLOWER, LEADER, Coordinator, TimeoutNow


class _Leadership:
    """
    The epochs and leadership of L{replichat.node.Node}.

    Sets C{epoch}, C{role}, C{leader_id} and C{forced}, keeps C{_voted} (as
    in the meta file) and, as a follower, C{_following} (the leader and
    epoch that C{_matched} is about).  Taking the leadership resets the
    leader's C{_progress} and C{_marker_index} and proposes the marker
    (L{replichat.nodeleader}); stepping down fails C{_batch}, C{_waiting}
    and C{_config_waiters}.
    """

    def _note_epoch(self, epoch: int) -> None:
        # A newer epoch seen anywhere means a leader of ours is stale.
        if epoch > self.epoch and self.role == LEADER:
            self._step_down("saw the newer epoch %d" % (epoch,))

    def _save_epoch(self, epoch: int, leader: int) -> None:
        # The epoch and its leader are durable before anything is done in
        # them, so a restarted server never follows two leaders in one epoch
        # nor reuses an epoch for different entries.
        self._save_meta(epoch=epoch, leader=leader)
        self.epoch = epoch
        self._voted = (epoch, leader)

    def _become_leader(self) -> None:
        seen = [self.epoch] + [s.status.epoch for s in self._peers.values() if s.status]
        epoch = election.next_epoch(max(seen), self.node_id)
        try:
            self._save_epoch(epoch, self.node_id)
        except OSError as error:
            self._fail("saving the epoch failed: %s" % (error,))
            return
        self.role = LEADER
        self.leader_id = self.node_id
        self.forced = False
        self.log.info(
            "node {node} leads in epoch {epoch} (last index {last})",
            node=self.node_id,
            epoch=epoch,
            last=self.disk_log.last_index,
        )
        last = self.disk_log.last_index
        self._progress = {
            peer: Progress(next=last + 1, last_reply=self.clock.seconds())
            for peer in self.cluster.members
            if peer != self.node_id
        }
        coordinator = Coordinator(epoch)
        for peer in self._peers:
            self.network.send(peer, coordinator)
        # The marker commits the new epoch, and with it everything the log
        # holds from before, ahead of any request in this epoch.
        self._marker_index = last + 1
        self._propose({"op": "noop"}, None)
        if self.state.cluster is None and not any(i > self.commit_index for i, _ in self._configs):
            # A new cluster: write down its configuration file's membership.
            self._propose(self.cluster.to_command(), None)
        self._check_live_set()
        self.flush()

    def _step_down(self, reason: str) -> None:
        if self.role != LEADER:
            return
        self.log.warn("node {node} steps down: {reason}", node=self.node_id, reason=reason)
        self.role = CANDIDATE
        self.leader_id = 0
        self._progress = {}
        self._marker_index = None
        batch, self._batch = self._batch, []
        waiting, self._waiting = self._waiting, {}
        lost = ChatError(
            errors.UNAVAILABLE,
            "this server lost the leadership before the request committed; "
            "retry with the same rid",
        )
        for _, _, d in batch:
            if d is not None:
                d.errback(lost)
        for _, d, _ in waiting.values():
            if d is not None:
                d.errback(lost)
        for _, d in self._config_waiters:
            d.errback(lost)
        self._config_waiters = []
        self._set_role()
        self._election_started = self.clock.seconds()
        self._answers = {}

    def _on_Coordinator(self, peer: int, message: Coordinator) -> None:
        self._accept_leader(peer, message.epoch)

    def _accept_leader(self, peer: int, epoch: int) -> bool:
        """
        Follow C{peer} as the leader of C{epoch}, if it may lead it.
        """
        if epoch < self.epoch:
            return False
        if epoch == self.epoch and self._voted[1] not in (0, peer):
            return False  # another server leads this epoch
        if self.role == LEADER:
            if epoch == self.epoch:
                return False
            self._step_down("node %d leads in epoch %d" % (peer, epoch))
        if self._voted != (epoch, peer):
            try:
                self._save_epoch(epoch, peer)
            except OSError as error:
                self._fail("saving the epoch failed: %s" % (error,))
                return False
        if self._following != (peer, epoch):
            # What matched one leader's log says nothing of another's, nor
            # of the same server's in a later epoch.
            self.log.info("following node {leader} in epoch {epoch}", leader=peer, epoch=epoch)
            self._following = (peer, epoch)
            self._matched = 0
            self._orphans_sent_at = None  # hand them to the new leader soon
        self.leader_id = peer
        self._leader_heard = self.clock.seconds()
        self.forced = False
        self.role = FOLLOWER
        self._set_role()
        return True

    def _on_TimeoutNow(self, peer: int, message: TimeoutNow) -> None:
        if peer == self.leader_id and message.epoch == self.epoch:
            # The leader is leaving; count it as gone and elect at once.
            self._peer(peer).refused = True
            self._lose_leader()
