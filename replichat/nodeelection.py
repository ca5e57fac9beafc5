# -*- test-case-name: tests.test_cluster,tests.test_node -*-
"""
The Bully election as a node runs it (the decision itself is
L{replichat.election.outcome}): calls and answers, the ranks they carry,
whether this node may lead without the members it has not heard from
(L{_Election._may_lead}), and the operator's C{force_lead} override.
"""

from __future__ import annotations

from replichat import election, errors, failpoints
from replichat.errors import ChatError
from replichat.peermessages import CANDIDATE, FOLLOWER, LEADER, Election, ElectionAnswer


class _Election:
    """
    The elections of L{replichat.node.Node}.

    Keeps C{_answers}, C{_election_started}, C{_waiting_peers} and
    C{forced}, and reads what peers said against this node leading
    (C{_commit_seen}, C{_fresher_excluders}) and the failure detector's
    C{_peers} (L{replichat.nodepeers}).  Sets C{role} and C{leader_id} when
    it finds a leader or loses one; a won election goes on in
    L{replichat.nodeleadership._Leadership._become_leader}.
    """

    def _rank(self) -> election.Rank:
        return election.Rank(self.disk_log.last_epoch, self.disk_log.last_index, self.node_id)

    def _lose_leader(self) -> None:
        self.leader_id = 0
        self.role = CANDIDATE
        self._set_role()
        if self.role == CANDIDATE:
            self._start_election()

    def _healthy_leader(self) -> int:
        if self.role == LEADER:
            return self.node_id
        if self.leader_id and not self._is_down(self.leader_id):
            return self.leader_id
        return 0

    def _start_election(self) -> None:
        self.role = CANDIDATE
        self.leader_id = 0
        self._answers = {}
        self._election_started = self.clock.seconds()
        call = self._election_call()
        for peer in self.cluster.members:
            if peer != self.node_id:
                self.network.send(peer, call)
        self._check_election()

    def _on_Election(self, peer: int, message: Election) -> None:
        self._note_epoch(message.epoch)
        rank = self._rank()
        leader = self._healthy_leader()
        self.network.send(
            peer,
            ElectionAnswer(
                self.epoch,
                rank.last_epoch,
                rank.last_index,
                leader,
                peer in self.cluster.live,
                self._ready(),
            ),
        )
        if self.role == LEADER:
            # It lost us; make sure it hears from us again.
            progress = self._progress.get(peer)
            if progress is not None:
                self._reprobe(progress)
                self._replicate(peer)
            return
        if leader:
            return
        # The candidate has no leader either; its call counts as its rank.
        self._answers[peer] = election.Rank(message.last_epoch, message.last_index, peer)
        self._note_ready(peer, message.ready)
        if self.role == CANDIDATE:
            self._check_election()
        elif self.role == FOLLOWER:
            self._lose_leader()

    def _on_ElectionAnswer(self, peer: int, message: ElectionAnswer) -> None:
        self._note_epoch(message.epoch)
        if not message.live:
            rank = election.Rank(message.last_epoch, message.last_index, peer)
            self._fresher_excluders[peer] = max(rank, self._fresher_excluders.get(peer, rank))
        if self.role != CANDIDATE:
            return
        if message.leader and message.leader != self.node_id:
            if not self._is_down(message.leader) or message.leader == peer:
                # A healthy leader exists: follow it, and give it a failure
                # timeout to reach us, rather than deposing it.
                self.leader_id = message.leader
                self._leader_heard = self.clock.seconds()
                self.role = FOLLOWER
                self._set_role()
                return
            return  # it has not noticed its leader is gone yet; it will call
        self._answers[peer] = election.Rank(message.last_epoch, message.last_index, peer)
        self._note_ready(peer, message.ready)
        self._check_election()

    def _election_call(self) -> Election:
        rank = self._rank()
        return Election(self.epoch, rank.last_epoch, rank.last_index, self._ready())

    def _ready(self) -> bool:
        """
        Whether this node could finish an election: it is not waiting to
        hear, since it started, from a member of its live set.
        """
        return self.forced or all(
            self._peer(p).heard for p in self.cluster.live if p != self.node_id
        )

    def _note_ready(self, peer: int, ready: bool) -> None:
        if ready:
            self._waiting_peers.discard(peer)
        else:
            self._waiting_peers.add(peer)

    def _check_election(self) -> None:
        if self.role != CANDIDATE:
            return
        peers = {
            peer: election.PeerView(heard=state.heard, down=self._is_down(peer))
            for peer, state in self._peers.items()
        }
        # The planted bug lets a server lead without waiting for the
        # members it has not heard from since it started.
        forced = self.forced or failpoints.on(failpoints.STALE_LEADER_AFTER_RESTART)
        winner = election.outcome(
            self.node_id,
            self._rank(),
            self.cluster.live,
            self._answers,
            peers,
            forced,
            self._waiting_peers,
        )
        if winner == self.node_id and (forced or self._may_lead()):
            self._become_leader()

    def _may_lead(self) -> bool:
        """
        Whether no peer that is down now told this node its log lacks
        committed entries: by a commit index past its log, or, fresher,
        by saying it is out of the live set.  It would lead stale, and a
        member merely being down cannot excuse that (force-lead is the way
        past a member gone for good).  A peer that is up takes part in the
        election, which the freshest wins: after a healed partition, where
        both sides committed, the merge then keeps everything.
        """
        rank = self._rank()
        for peer, (epoch, commit) in self._commit_seen.items():
            if epoch >= rank.last_epoch and commit > rank.last_index and self._is_down(peer):
                return False
        for peer, fresher in self._fresher_excluders.items():
            if fresher > rank and self._is_down(peer):
                return False
        return True

    def force_lead(self) -> None:
        """
        The operator's override: finish elections without the live-set
        members this node has not heard from since it started (one of them
        may have held newer commits: those are lost).
        """
        if self.node_id not in self.cluster.live:
            raise ChatError(
                errors.BAD_REQUEST,
                "node %d is not in its live set %s and may not lead"
                % (self.node_id, sorted(self.cluster.live)),
            )
        self.log.warn("forced to lead without the members not heard from")
        self.forced = True
        if self.role in (CANDIDATE,):
            self._check_election()
