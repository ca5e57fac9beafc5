# -*- test-case-name: tests.test_cluster,tests.test_simulate -*-
"""
Re-proposing what a healed partition cut (L{replichat.merge}): a node keeps
the client commands cut from its log (its orphans) in the meta file until a
leader has committed them again; it proposes them itself when it serves and
hands them to its leader otherwise.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from replichat import merge
from replichat.nodecommands import decode_command, encode_command
from replichat.peermessages import FOLLOWER, LEADER, LEARNER, Repropose, ReproposeReply


class _OrphanMerge:
    """
    The re-proposing of L{replichat.node.Node}.

    Keeps C{_orphans} (as in the meta file, through C{_save_meta}),
    C{_orphans_sent_at} and C{_orphans_in_flight}; proposes through
    L{replichat.nodeleader._LeaderCommit._propose}.
    """

    def _save_orphans(self, orphans: list[dict], **meta) -> None:
        # In origin order, which is the order they were first committed in:
        # a later cut may find older entries (a login after the account it
        # logs into was cut by an earlier heal).  Of two copies of one, the
        # one known committed counts (a re-cut after a restart is not).
        unique: dict[tuple, dict] = {}
        for command in orphans:
            key = merge.key(command)
            if key not in unique or command.get("committed"):
                unique[key] = command
        kept = sorted(unique.values(), key=merge.key)
        self._save_meta(orphans=kept, **meta)
        self._orphans = kept

    def _forget_orphans(self, keys) -> None:
        keys = set(keys)
        for key in keys:
            self._orphan_tries.pop(key, None)
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
        its leader otherwise; again each failure timeout until done.
        """
        if not self._orphans:
            return
        sent = self._orphans_sent_at
        if sent is not None and now - sent <= self.timing.failure_timeout:
            return
        if self.serving:
            self._orphans_sent_at = now
            self._commit_orphans(self._orphans).addCallback(lambda r: self._handed_in(*r))
        elif self.role in (FOLLOWER, LEARNER) and self.leader_id:
            self._orphans_sent_at = now
            self.network.send(
                self.leader_id, Repropose(self.epoch, encode_command(self._orphans))
            )

    def _commit_orphans(self, commands: list[dict]) -> Deferred:
        """
        Propose each command not already on its way.

        @return: a Deferred firing, once every one has committed, with the
            keys of those done and of those still waiting for their account
            (see L{merge.WAITING_CODES}); never if this node loses the
            leadership first.
        """
        waits = []
        keys = [merge.key(c) for c in commands]
        for command, key in zip(commands, keys):
            d = self._orphans_in_flight.get(key)
            if d is None:
                d = Deferred()
                self._propose(command, d)  # may raise: then not in flight
                self._orphans_in_flight[key] = d
                d.addBoth(self._orphan_done, key)
            done: Deferred = Deferred()
            d.addBoth(_fire_with_status, done)
            waits.append(done)
        all_done = Deferred()

        def check(statuses: list) -> None:
            if FAILED not in statuses:
                all_done.callback((
                    [k for k, s in zip(keys, statuses) if s == DONE],
                    [k for k, s in zip(keys, statuses) if s == WAITING],
                ))

        gatherResults(waits).addCallback(check)
        return all_done

    def _orphan_done(self, result: object, key: tuple) -> object:
        # Committed, or lost with the leadership: either way the next
        # hand-in may propose it again (the rid makes that harmless).
        self._orphans_in_flight.pop(key, None)
        return result

    def _on_Repropose(self, peer: int, message: Repropose) -> None:
        if self.role != LEADER or message.epoch != self.epoch:
            return
        commands = decode_command(message.commands)
        self.log.info(
            "node {peer} hands in {count} commands cut by a healed partition",
            peer=peer,
            count=len(commands),
        )
        self._commit_orphans(commands).addCallback(
            lambda result: self.network.send(
                peer,
                ReproposeReply(self.epoch, encode_command(result[0]), encode_command(result[1])),
            )
        )

    def _on_ReproposeReply(self, peer: int, message: ReproposeReply) -> None:
        if peer != self.leader_id:
            return
        self._handed_in(
            [tuple(k) for k in decode_command(message.origins)],
            [tuple(k) for k in decode_command(message.waiting)],
        )

    def _handed_in(self, done: list, waiting: list) -> None:
        """
        Forget what a leader committed; count how often each command came
        back still waiting for its account, and give up on one only after
        L{merge.HAND_INS} such answers (its account was deleted meanwhile).
        """
        tries = self._orphan_tries
        for key in waiting:
            tries[key] = tries.get(key, 0) + 1
        given_up = [key for key in waiting if tries[key] >= merge.HAND_INS]
        if given_up:
            self.log.warn(
                "giving up on re-proposed commands {keys}: the accounts they name "
                "never appeared (deleted meanwhile)",
                keys=given_up,
            )
        self._forget_orphans(list(done) + given_up)


#: What became of a proposed orphan (L{_fire_with_status}).
DONE, WAITING, FAILED = "done", "waiting", "failed"


def _fire_with_status(result: object, done: Deferred) -> object:
    """
    Fire C{done} with what became of a proposal: L{FAILED} (the leadership
    was lost first), L{WAITING} (its account is not there yet) or L{DONE};
    pass C{result} on.
    """
    if result is None or isinstance(result, Failure):
        # Lost with the leadership (an earlier waiter consumed the failure).
        done.callback(FAILED)
        return None
    error = result.error
    done.callback(WAITING if error is not None and error.code in merge.WAITING_CODES else DONE)
    return result
