# -*- test-case-name: tests.test_cluster,tests.test_simulate -*-
"""
Re-proposing what a healed partition cut (L{replichat.merge}): a node keeps
the client commands cut from its log (its orphans) in the meta file until a
leader has committed them again; it proposes them itself when it serves and
hands them to its leader otherwise.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure

from replichat import merge
from replichat.jsonwire import COMPACT, DECODER
from replichat.peermessages import FOLLOWER, LEADER, LEARNER, Repropose, ReproposeReply


class _OrphanMerge:
    """
    The re-proposing of L{replichat.node.Node}.

    Keeps C{_orphans} (as in the meta file, through C{_save_meta}),
    C{_orphans_sent_at} and C{_orphans_in_flight}; proposes through
    L{replichat.nodeleader._LeaderCommit._propose}.
    """

    def _save_orphans(self, orphans: list[dict]) -> None:
        # In origin order, which is the order they were first committed in:
        # a later cut may find older entries (a login after the account it
        # logs into was cut by an earlier heal).
        unique = sorted({merge.key(c): c for c in orphans}.values(), key=merge.key)
        self._save_meta(orphans=unique)
        self._orphans = unique

    def _forget_orphans(self, keys) -> None:
        keys = set(keys)
        left = [c for c in self._orphans if merge.key(c) not in keys]
        if len(left) != len(self._orphans):
            try:
                self._save_orphans(left)
            except OSError as error:
                # Kept in memory and on disk: re-proposing again is harmless.
                self.log.warn("could not forget re-proposed commands: {error}", error=error)

    def _hand_in_orphans(self, now: float) -> None:
        """
        Get this node's orphans committed: proposed if it serves, sent to
        its leader otherwise (again each failure timeout until answered).
        """
        if not self._orphans:
            return
        if self.serving:
            self._commit_orphans(self._orphans).addCallback(
                lambda done: self._forget_orphans(done)
            )
        elif self.role in (FOLLOWER, LEARNER) and self.leader_id:
            sent = self._orphans_sent_at
            if sent is None or now - sent > self.timing.failure_timeout:
                self._orphans_sent_at = now
                self.network.send(
                    self.leader_id, Repropose(self.epoch, COMPACT.encode(self._orphans).encode())
                )

    def _commit_orphans(self, commands: list[dict]) -> Deferred:
        """
        Propose each command not already on its way.

        @return: a Deferred firing with the keys of those committed, once
            all are, or never if this node loses the leadership first.
        """
        waits = []
        for command in commands:
            key = merge.key(command)
            d = self._orphans_in_flight.get(key)
            if d is None:
                d = self._orphans_in_flight[key] = Deferred()
                d.addBoth(self._orphan_done, key)
                self._propose(command, d)
            done: Deferred = Deferred()
            d.addBoth(_fire_with_success, done)
            waits.append(done)
        keys = [merge.key(c) for c in commands]
        all_done = Deferred()

        def check(results: list) -> None:
            if all(results):
                all_done.callback(keys)

        gather = _gather(waits)
        gather.addCallback(check)
        return all_done

    def _orphan_done(self, result: object, key: tuple) -> object:
        # Committed, or lost with the leadership: either way the next
        # hand-in may propose it again (the rid makes that harmless).
        self._orphans_in_flight.pop(key, None)
        return result

    def _on_Repropose(self, peer: int, message: Repropose) -> None:
        if self.role != LEADER or message.epoch != self.epoch:
            return
        commands = DECODER.decode(message.commands.decode())
        self.log.info(
            "node {peer} hands in {count} commands cut by a healed partition",
            peer=peer,
            count=len(commands),
        )
        self._commit_orphans(commands).addCallback(
            lambda keys: self.network.send(
                peer, ReproposeReply(self.epoch, COMPACT.encode(keys).encode())
            )
        )

    def _on_ReproposeReply(self, peer: int, message: ReproposeReply) -> None:
        if peer != self.leader_id:
            return
        keys = [tuple(k) for k in DECODER.decode(message.origins.decode())]
        self._orphans_sent_at = None
        self._forget_orphans(keys)


def _fire_with_success(result: object, done: Deferred) -> object:
    """
    Fire C{done} with whether C{result} is a success; pass C{result} on.
    """
    done.callback(not isinstance(result, Failure))
    return None if isinstance(result, Failure) else result


def _gather(deferreds: list[Deferred]) -> Deferred:
    """
    A Deferred firing with the list of results of C{deferreds}, which never
    fail.
    """
    return gatherResults(deferreds) if deferreds else succeed([])
