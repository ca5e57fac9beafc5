# -*- test-case-name: tests.test_process -*-
"""
C{twistd replichat}: command-line options and the service they make.

    twistd -n replichat --config FILE --node ID [--data-dir DIR] [--cut-corrupt-tail]

The config is read and checked in L{Options.postOptions}, so a bad file or a
bad node id stops twistd with a message naming the key before it
daemonizes or listens.
"""

from __future__ import annotations

from twisted.python import usage

from replichat.config import ConfigError, load_config


class Options(usage.Options):
    """
    Options for one replichat server.
    """

    synopsis = "--config FILE --node ID [--data-dir DIR]"

    optFlags = [
        ["cut-corrupt-tail", None,
         "Start even if the newest log entry is corrupt, dropping it and what "
         "follows (it may have been acknowledged; see the server's message)."],
    ]

    optParameters = [
        ["config", None, None, "The cluster's YAML config file (required)."],
        ["node", None, None, "This server's node id, one of the config's nodes (required)."],
        ["data-dir", None, None, "Override the config's data_dir for this server."],
        ["join", None, None,
         "HOST:PEER_PORT of a running member: join its cluster as a new server."],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        if not self["node"]:
            raise usage.UsageError("--node ID is required")
        try:
            node_id = int(self["node"])
        except ValueError:
            raise usage.UsageError("--node: expected an integer node id, got %r" % (self["node"],))
        try:
            config = load_config(self["config"])
        except ConfigError as error:
            raise usage.UsageError("%s:\n%s" % (self["config"], error))
        if node_id not in config.nodes:
            raise usage.UsageError(
                "--node: node %d is not in %s (nodes: %s)"
                % (node_id, self["config"], ", ".join(map(str, sorted(config.nodes))))
            )
        self["join_address"] = None
        if self["join"]:
            host, _, port = self["join"].rpartition(":")
            if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise usage.UsageError(
                    "--join: expected HOST:PEER_PORT of a running member, got %r" % (self["join"],)
                )
            self["join_address"] = (host.strip("[]"), int(port))
        if self["data-dir"] is not None and not self["data-dir"]:
            raise usage.UsageError("--data-dir must not be empty")
        from replichat.peerproto import load_key

        try:
            load_key(config)  # an unreadable secret is a start-up error, before listening
        except ConfigError as error:
            raise usage.UsageError("%s:\n%s" % (self["config"], error))
        self["node_id"] = node_id
        self["cluster_config"] = config
        self["data_dir"] = self["data-dir"] or config.data_dir_for(node_id)


def makeService(options: Options):
    """
    Recover the node's data directory and return its service.
    """
    from twisted.internet import reactor

    from replichat.server import build_server

    return build_server(
        options["cluster_config"],
        options["node_id"],
        options["data_dir"],
        reactor,
        cut_corrupt_tail=bool(options["cut-corrupt-tail"]),
        join=options["join_address"],
    )
