# -*- test-case-name: tests.test_cluster -*-
"""
Servers joining and leaving: a new server asks to join (the leader adds it
as a learner), the operator removes one for good, a leader hands over to
its most caught-up follower, and a clean shutdown leaves the live set.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred

from replichat import errors
from replichat.errors import ChatError
from replichat.membership import Member
from replichat.nodemembership import _lost_with_leadership
from replichat.peermessages import FOLLOWER, LEADER, Join, JoinReply, Leaving, TimeoutNow


class _JoinLeave:
    """
    Joining and leaving of L{replichat.node.Node}.

    Reads C{_joining} (this node's own address while it asks to join) and
    the leader's C{_progress}; changes the configuration through
    L{replichat.nodemembership._Membership._change_config} and sets
    C{stopped} on shutdown.
    """

    def _on_Leaving(self, peer: int, message: Leaving) -> None:
        if self.role != LEADER:
            return
        self._peer(peer).refused = True
        self._check_live_set()

    def _on_Join(self, peer: int, message: Join) -> None:
        error = ""
        cluster = self.cluster
        if self.role != LEADER:
            error = "not the leader"
        elif message.node in cluster.retired:
            error = "node id %d was used by a server that left; ids are never reused" % (
                message.node,
            )
        elif message.node in cluster.members:
            known = cluster.members[message.node]
            if (known.host, known.peer_port) != (message.host, message.peer_port):
                error = "node id %d is already a member at %s:%d" % (
                    message.node,
                    known.host,
                    known.peer_port,
                )
        elif self._config_pending():
            error = "a configuration change is in progress; retry"
        else:
            member = Member(message.host, message.client_port, message.peer_port)
            self._change_config(
                cluster.with_learner(message.node, member), "node %d joins" % (message.node,)
            ).addErrback(_lost_with_leadership)
        self.network.send(peer, JoinReply(self.epoch, error, self._healthy_leader()))

    def _send_join(self, peer: int) -> None:
        member = self._joining
        self.network.send(
            peer, Join(self.epoch, self.node_id, member.host, member.client_port, member.peer_port)
        )

    def _on_JoinReply(self, peer: int, message: JoinReply) -> None:
        if self._joining is None or not message.error:
            return
        self.log.warn("node {peer} refused the join: {error}", peer=peer, error=message.error)
        leader = message.leader
        if leader and leader != peer:
            if self._connected(leader):
                self._send_join(leader)
            elif leader in self.cluster.members and hasattr(self.network, "dial"):
                member = self.cluster.members[leader]
                self.network.dial(member.host, member.peer_port)

    def leave(self, node_id: int) -> Deferred:
        """
        Remove C{node_id} from the cluster for good (the leader only).  A
        leaving leader commits its own removal, then hands over.
        """
        if self.role != LEADER:
            leader = self._healthy_leader()
            raise ChatError(errors.NOT_LEADER, "node %d is not the leader" % (self.node_id,),
                            leader=leader)
        cluster = self.cluster
        if node_id not in cluster.members:
            raise ChatError(errors.NOT_FOUND, "node %d is not a member" % (node_id,))
        if cluster.live == {node_id}:
            raise ChatError(errors.BAD_REQUEST, "node %d is the only live member" % (node_id,))
        if self._config_pending():
            raise ChatError(errors.UNAVAILABLE, "a configuration change is in progress; retry")
        return self._change_config(cluster.without_member(node_id), "node %d leaves" % (node_id,))

    def _hand_over(self) -> None:
        best = None
        for peer in sorted(self.cluster.live):
            progress = self._progress.get(peer)
            if peer == self.node_id or progress is None or not self._connected(peer):
                continue
            if best is None or progress.match >= self._progress[best].match:
                best = peer
        if best is not None:
            self.log.info("handing the leadership over to node {peer}", peer=best)
            self.network.send(best, TimeoutNow(self.epoch))
        self._step_down("handing over")

    def shutdown(self) -> None:
        """
        A clean stop: a leader hands over, a follower leaves the live set
        at once (both come back as followers when started again).
        """
        if self.role == LEADER:
            self._hand_over()
        elif self.leader_id and self.role == FOLLOWER:
            self.network.send(self.leader_id, Leaving(self.epoch))
        self.stopped = True
