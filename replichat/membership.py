# -*- test-case-name: tests.test_cluster -*-
"""
Who is in the cluster: the members, the live set and the learners.

The configuration lives in the replicated log as C{config} entries, so every
server agrees on it and it survives restarts; a server uses the newest one in
its log, committed or not (as Raft does), because a commit must wait for the
live set that the leader is about to use.  Before the first C{config} entry
the configuration file's nodes are the members, all of them live; the first
leader of a new cluster writes that down as the log's first C{config} entry,
so the configuration file matters only once.

  - C{members}: every server with an address, voting or not.
  - C{live}: the servers whose fsync every commit waits for; only they may
    lead.  A silent one is taken out, a caught-up one put back.
  - C{learners}: joined servers still catching up (members, never live).
  - C{retired}: ids of servers that left; ids are never reused.
"""

from __future__ import annotations

from typing import Mapping

from attrs import evolve, frozen


@frozen
class Member:
    host: str
    client_port: int
    peer_port: int


@frozen
class ClusterConfig:
    members: Mapping[int, Member]
    live: frozenset[int]
    learners: frozenset[int] = frozenset()
    retired: frozenset[int] = frozenset()

    @classmethod
    def initial(cls, config) -> ClusterConfig:
        """
        The configuration of a new cluster: every node of the file, live.
        """
        members = {
            node.id: Member(node.host, node.client_port, node.peer_port)
            for node in config.nodes.values()
        }
        return cls(members=members, live=frozenset(members))

    # -- changes -------------------------------------------------------------

    def without_live(self, ids) -> ClusterConfig:
        return evolve(self, live=self.live - frozenset(ids))

    def with_live(self, node_id: int) -> ClusterConfig:
        return evolve(self, live=self.live | {node_id}, learners=self.learners - {node_id})

    def with_learner(self, node_id: int, member: Member) -> ClusterConfig:
        return evolve(
            self,
            members={**self.members, node_id: member},
            learners=self.learners | {node_id},
        )

    def without_member(self, node_id: int) -> ClusterConfig:
        return ClusterConfig(
            members={i: m for i, m in self.members.items() if i != node_id},
            live=self.live - {node_id},
            learners=self.learners - {node_id},
            retired=self.retired | {node_id},
        )

    # -- the log's form --------------------------------------------------------

    def to_command(self) -> dict:
        """
        The C{config} command that records this configuration in the log.
        """
        return {"op": "config", "cluster": self.to_json()}

    def to_json(self) -> dict:
        return {
            "members": {
                str(i): {"host": m.host, "client_port": m.client_port, "peer_port": m.peer_port}
                for i, m in sorted(self.members.items())
            },
            "live": sorted(self.live),
            "learners": sorted(self.learners),
            "retired": sorted(self.retired),
        }

    @classmethod
    def from_json(cls, value: dict) -> ClusterConfig:
        return cls(
            members={
                int(i): Member(m["host"], m["client_port"], m["peer_port"])
                for i, m in value["members"].items()
            },
            live=frozenset(value["live"]),
            learners=frozenset(value["learners"]),
            retired=frozenset(value["retired"]),
        )
