# -*- test-case-name: tests.test_node,tests.test_cluster -*-
"""
The node's peers: the failure detector (L{PeerState}, whether a peer is
down) and the connection events the peer network reports (connected, lost,
refused), plus the L{Timing} both use and L{NoNetwork} for a server
without peers.
"""

from __future__ import annotations

from attrs import define

from replichat.peermessages import CANDIDATE, FOLLOWER, LEADER, LEARNER, Heartbeat


class NoNetwork:
    """
    The network of a server without peers: sends nothing.
    """

    def send(self, peer: int, message: object) -> None:
        pass


@define
class Timing:
    heartbeat_interval: float = 0.1
    failure_timeout: float = 0.5


@define
class PeerState:
    """
    The failure detector's and the status table's view of one peer.
    """

    heard: bool = False  # heard from since this server started
    last_heard: float = 0.0
    refused: bool = False  # its port refused a connection since
    connected: bool = False
    status: Heartbeat | None = None



class _FailureDetector:
    """
    The failure detector and connection events of L{replichat.node.Node}.

    Keeps C{_peers} (a L{PeerState} per peer) and C{_leader_heard}; reads
    C{clock}, C{timing}, C{role}, C{leader_id}, C{_progress} and
    C{_joining}.  A connection event re-probes the leader's progress for
    the peer (L{replichat.nodeleader}), sends a joiner's request
    (L{replichat.nodejoinleave}) or a candidate's call
    (L{replichat.nodeelection}), or starts an election or a live-set change.
    """

    def _peer(self, peer: int) -> PeerState:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = PeerState()
        return state

    def _heard_from(self, peer: int) -> None:
        state = self._peer(peer)
        state.heard = True
        state.refused = False
        state.last_heard = self.clock.seconds()
        if peer == self.leader_id:
            self._leader_heard = state.last_heard

    def _is_down(self, peer: int) -> bool:
        state = self._peers.get(peer)
        if state is None:
            return True
        if state.refused:
            return True
        return self.clock.seconds() - state.last_heard > self.timing.failure_timeout

    def peer_connected(self, peer: int) -> None:
        """
        A connection to C{peer} is up (and authenticated).
        """
        state = self._peer(peer)
        state.connected = True
        state.refused = False
        self.network.send(peer, self._heartbeat())
        progress = self._progress.get(peer)
        if progress is not None:
            self._reprobe(progress)
            self._replicate(peer)
        if self._joining is not None:
            self._send_join(peer)
        elif self.role == CANDIDATE:
            self.network.send(peer, self._election_call())

    def peer_lost(self, peer: int) -> None:
        """
        The connection to C{peer} is gone, with whatever was in flight.
        """
        self._peer(peer).connected = False
        progress = self._progress.get(peer)
        if progress is not None:
            self._reprobe(progress)

    def peer_refused(self, peer: int) -> None:
        """
        C{peer}'s port refused a connection: its process is gone.
        """
        state = self._peer(peer)
        state.refused = True
        state.connected = False
        if peer == self.leader_id and self.role in (FOLLOWER, LEARNER):
            self.log.info("leader {leader} is gone", leader=peer)
            self._lose_leader()
        elif self.role == CANDIDATE:
            self._check_election()
        elif self.role == LEADER:
            self._check_live_set()
