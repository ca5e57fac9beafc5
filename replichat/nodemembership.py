# -*- test-case-name: tests.test_cluster -*-
"""
Membership as a node sees it (L{replichat.membership}): the newest
configuration in the log, the role it gives this node, and what changes
when a configuration is appended or committed; and the leader's changes of
the live set, one at a time (a silent member out, a caught-up one back in).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from replichat.errors import ChatError
from replichat.membership import ClusterConfig
from replichat.nodecommands import _CONFIG_MARK, decode_command
from replichat.nodeleader import Progress
from replichat.peermessages import CANDIDATE, FOLLOWER, LEADER, LEARNER


class _Membership:
    """
    The membership of L{replichat.node.Node}.

    Keeps C{_configs} (the configurations above the commit index),
    C{_committed_cluster}, C{_initial_cluster}, C{_joining} and
    C{_config_waiters}; sets C{role} from the configuration, and gives the
    failure detector's C{_peers}, the leader's C{_progress} and the
    network's C{set_peers} the members.
    """

    @property
    def cluster(self) -> ClusterConfig:
        """
        The newest configuration in the log, committed or not.
        """
        if self._configs:
            return self._configs[-1][1]
        committed = self.state.cluster
        if committed is None:
            return self._initial_cluster
        # Parsed once per committed configuration, not on every reply.
        if self._committed_cluster[0] is not committed:
            self._committed_cluster = (committed, ClusterConfig.from_json(committed))
        return self._committed_cluster[1]

    def _set_role(self) -> None:
        cluster = self.cluster
        if self.node_id in cluster.members:
            self._joining = None
        if self.role == LEADER:
            return  # a leader that removed itself steps down once that commits
        if self.node_id not in cluster.members or self.node_id in cluster.learners:
            self.role = LEARNER
        elif self.leader_id:
            self.role = FOLLOWER
        else:
            self.role = CANDIDATE

    def _note_appended(self, entries) -> None:
        for entry in entries:
            if _CONFIG_MARK in entry.data:
                command = decode_command(entry.data)
                self._configs.append((entry.index, ClusterConfig.from_json(command["cluster"])))
                self._membership_changed()

    def _membership_changed(self) -> None:
        cluster = self.cluster
        for peer in cluster.members:
            if peer == self.node_id:
                continue
            self._peer(peer)
            if self.role == LEADER and peer not in self._progress:
                progress = Progress(next=self.disk_log.last_index + 1)
                self._progress[peer] = progress
                self._replicate(peer)
        for peer in list(self._peers):
            if peer not in cluster.members and peer != self.leader_id:
                del self._peers[peer]
                self._progress.pop(peer, None)
        if hasattr(self.network, "set_peers"):
            self.network.set_peers(
                {
                    i: (m.host, m.peer_port)
                    for i, m in cluster.members.items()
                    if i != self.node_id
                }
            )
        self._set_role()

    def _membership_committed(self, index: int) -> None:
        # The committed configuration is the state's now.
        self._configs = [(i, c) for i, c in self._configs if i > index]
        done = [w for w in self._config_waiters if w[0] <= index]
        self._config_waiters = [w for w in self._config_waiters if w[0] > index]
        for _, d in done:
            d.callback(None)
        cluster = self.cluster
        if self.node_id not in cluster.members:
            self.log.warn("node {node} is no longer a member", node=self.node_id)
            if self.role == LEADER:
                self.clock.callLater(0, self._hand_over)
        self._set_role()

    def _config_pending(self) -> bool:
        # One change of this leader's at a time.  A predecessor's
        # uncommitted change does not count: it commits with this leader's
        # marker, and the marker may be waiting for a dead member that only
        # a change of this leader's can take out.
        return bool(self._config_waiters) or any(
            command.get("op") == "config" for command, _, _ in self._batch
        )

    def _change_config(self, new: ClusterConfig, why: str) -> Deferred:
        self.log.info("configuration change: {why}", why=why)
        d: Deferred = Deferred()
        self._propose(new.to_command(), None)
        # The config entry's index is known once the batch is flushed.
        index = self.disk_log.last_index + len(self._batch)
        self._config_waiters.append((index, d))
        return d

    def _check_live_set(self) -> None:
        """
        Take silent followers out of the live set and put caught-up ones
        back (or promote caught-up learners), one change at a time.
        """
        if self.role != LEADER or self.stopped:
            return
        if any(command.get("op") == "config" for command, _, _ in self._batch):
            return  # the newest configuration is not in the log yet
        cluster = self.cluster
        down = [p for p in cluster.live if p != self.node_id and self._is_down(p)]
        if down:
            # Even while a change of ours is pending: it may be waiting for
            # exactly these members, and would never commit otherwise.
            # Commit waits for every live member, not a majority, so two
            # successive removals cannot commit anything the other misses.
            self._change_config(
                cluster.without_live(down), "nodes %s are down" % (sorted(down),)
            ).addErrback(_lost_with_leadership)
            return
        if self._config_pending():
            return
        for peer in sorted(cluster.members):
            if peer == self.node_id or peer in cluster.live:
                continue
            progress = self._progress.get(peer)
            if progress is None or self._is_down(peer) or not self._connected(peer):
                continue
            if progress.match >= self.commit_index and progress.match >= (self._marker_index or 0):
                self._change_config(
                    cluster.with_live(peer), "node %d caught up" % (peer,)
                ).addErrback(_lost_with_leadership)
                return


def _lost_with_leadership(failure: Failure) -> None:
    """
    Errback for a change nobody waits on: losing the leadership before it
    committed is expected (the next leader decides again), not an error.
    """
    failure.trap(ChatError)
