# -*- test-case-name: tests.test_history -*-
"""
The checks of the servers among themselves: each state is the replay of
the committed log (L{STATE}), holds each account's mail in its own boxes
only (L{MISDELIVERED}) and in one order on every server (L{ORDER}), and
after a quiet period every server is at one commit index and one state
(L{NOT_CONVERGED}).  (That the committed logs agree is checked by the
replay, L{replichat.testing.replicas}.)
"""

from __future__ import annotations

from replichat.state import ChatState
from replichat.testing.checkerreport import MISDELIVERED, NOT_CONVERGED, ORDER, STATE
from replichat.testing.replicas import Replica


class _ServerChecks:
    """
    The servers' checks of L{replichat.testing.checker._Checker}, which
    mixes them in and gives them C{replicas}, C{replay}, C{converged},
    C{flag} and the C{_digests} cache.
    """

    def digest(self, replica: Replica) -> str:
        """
        The digest of a replica's state, computed once.
        """
        key = id(replica.state)
        if key not in self._digests:
            self._digests[key] = replica.state.digest()
        return self._digests[key]

    def check_states(self) -> None:
        for replica in self.replicas:
            state = replica.state
            if state is None:
                continue
            self.check_mailboxes(replica.node_id, state)
            if state.applied_index not in self.replay.digests:
                continue
            if self.digest(replica) != self.replay.digests[state.applied_index]:
                self.flag(
                    STATE,
                    "node %d's state at index %d is not the replay of the committed log"
                    % (replica.node_id, state.applied_index),
                    indexes=(state.applied_index,),
                    nodes=(replica.node_id,),
                )

    def check_mailboxes(self, node_id: int, state: ChatState) -> None:
        """
        Every account's inbox holds only mail addressed to it, and its sent
        box only mail it sent.
        """
        for uid, account in state.accounts.items():
            messages = state.messages
            wrong = [i for i in account.inbox if (messages.get(i) or (0, 0, 0, None))[3] != uid]
            wrong += [i for i in account.sent if (messages.get(i) or (0, None))[1] != uid]
            if wrong:
                self.flag(
                    MISDELIVERED,
                    "on node %d account %d (%s) holds messages %s that are not its own"
                    % (node_id, uid, account.username, wrong[:10]),
                    nodes=(node_id,),
                )

    def check_order(self) -> None:
        """
        Every recipient's messages, in the same order with the same content,
        on every replica (setting aside those one has deleted and another
        not yet).
        """
        states = [(r.node_id, r.state) for r in self.replicas if r.state is not None]
        for n, (a_id, a) in enumerate(states):
            for b_id, b in states[n + 1 :]:
                for uid in sorted(a.accounts.keys() & b.accounts.keys()):
                    inbox_a, inbox_b = a.accounts[uid].inbox, b.accounts[uid].inbox
                    common = inbox_a.keys() & inbox_b.keys()
                    seq_a = [a.messages.get(i, (i,))[:6] for i in inbox_a if i in common]
                    seq_b = [b.messages.get(i, (i,))[:6] for i in inbox_b if i in common]
                    if seq_a != seq_b:
                        self.flag(
                            ORDER,
                            "account %d (%s) has its messages in another order, or other "
                            "messages, on nodes %d and %d"
                            % (uid, a.accounts[uid].username, a_id, b_id),
                            nodes=(a_id, b_id),
                        )

    def check_convergence(self) -> None:
        if not self.converged or not self.replicas:
            return
        commits = {r.node_id: r.commit_index for r in self.replicas}
        if len(set(commits.values())) > 1:
            self.flag(
                NOT_CONVERGED,
                "after the quiet period the commit indexes differ: %s"
                % (", ".join("node %d at %d" % kv for kv in sorted(commits.items())),),
                nodes=sorted(commits),
            )
            return
        digests = {r.node_id: self.digest(r) for r in self.replicas if r.state is not None}
        if len(set(digests.values())) > 1:
            self.flag(
                NOT_CONVERGED,
                "after the quiet period the states differ: %s"
                % (", ".join("node %d %s" % (k, v[:12]) for k, v in sorted(digests.items())),),
                nodes=sorted(digests),
            )
