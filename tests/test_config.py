"""
Tests for L{replichat.config}.
"""

import copy
import operator
import os
import pickle

import attrs
import yaml
from twisted.trial.unittest import SynchronousTestCase

from replichat.config import (
    Config,
    ConfigError,
    Limits,
    LogSettings,
    NodeAddress,
    SnapshotPolicy,
    Timing,
    load_config,
    parse_config,
)

MINIMAL = """\
nodes:
  1: {host: 10.0.0.1, client_port: 7001, peer_port: 7101}
  2: {host: 10.0.0.2, client_port: 7001, peer_port: 7101}
data_dir: /var/lib/replichat/node-{node}
timing:
  heartbeat_interval: 0.1
  failure_timeout: 0.5
"""

_MINIMAL_DOCUMENT = yaml.safe_load(MINIMAL)

UNKNOWN_TOP = (
    "unknown key (expected one of data_dir, limits, log, nodes, secret_file,"
    " snapshot, timing)"
)
UNKNOWN_NODE = "unknown key (expected one of client_port, host, peer_port)"
PORT = "expected an integer 1-65535, got {!r}"


def minimal():
    """
    @return: a fresh copy of the parsed minimal document, to modify.
    """
    return copy.deepcopy(_MINIMAL_DOCUMENT)


def example(name):
    """
    @return: the path of an example config in C{etc/}.
    """
    return os.path.join(os.path.dirname(__file__), "..", "etc", name)


class _ConfigTestCase(SynchronousTestCase):
    """
    Helpers to check what L{parse_config} rejects.
    """

    def errors(self, data):
        """
        @return: the errors L{parse_config} raises for C{data}.
        """
        return self.assertRaises(ConfigError, parse_config, data).errors

    def assertError(self, data, path, message):
        """
        Assert that C{data} is rejected with exactly one error.
        """
        self.assertEqual(self.errors(data), [(path, message)])


class ConfigErrorTests(SynchronousTestCase):
    """
    Tests for L{ConfigError}.
    """

    def test_str(self):
        """
        Each problem is rendered on its own line as C{path: message}.
        """
        error = ConfigError([("a.b", "bad"), ("c", "worse")])
        self.assertEqual(str(error), "a.b: bad\nc: worse")

    def test_strWithoutPath(self):
        """
        A problem with an empty path is rendered as its message alone.
        """
        self.assertEqual(str(ConfigError([("", "config is empty")])), "config is empty")

    def test_errorsList(self):
        """
        C{errors} is a list, whatever iterable was given.
        """
        error = ConfigError((("a", "b"),))
        self.assertEqual(error.errors, [("a", "b")])


class ParseConfigTests(_ConfigTestCase):
    """
    Tests for L{parse_config} on valid documents.
    """

    def test_minimal(self):
        """
        The minimal example parses to the expected tree.
        """
        config = parse_config(minimal(), source="cluster.yaml")
        expected = Config(
            nodes={
                1: NodeAddress(id=1, host="10.0.0.1", client_port=7001, peer_port=7101),
                2: NodeAddress(id=2, host="10.0.0.2", client_port=7001, peer_port=7101),
            },
            data_dir="/var/lib/replichat/node-{node}",
            timing=Timing(heartbeat_interval=0.1, failure_timeout=0.5),
            source="cluster.yaml",
        )
        self.assertEqual(config, expected)

    def test_defaults(self):
        """
        Sections left out take their documented defaults.
        """
        data = minimal()
        del data["timing"]
        config = parse_config(data)
        self.assertEqual(
            (config.timing, config.snapshot, config.limits, config.log),
            (
                Timing(heartbeat_interval=0.1, failure_timeout=0.5),
                SnapshotPolicy(every_entries=100_000, every_bytes=256 * 2**20),
                Limits(
                    max_line_bytes=65536,
                    max_text_chars=10_000,
                    max_inflight=256,
                    idle_timeout=3600.0,
                    max_output_bytes=4 * 1024 * 1024,
                    login_attempts_per_minute=10,
                ),
                LogSettings(segment_bytes=16 * 1024 * 1024),
            ),
        )
        self.assertIsNone(config.secret_file)
        self.assertEqual(config.source, "<config>")

    def test_emptySections(self):
        """
        A section present with nothing under it takes its defaults.
        """
        data = minimal()
        data.update(timing=None, snapshot=None, limits={}, log=None, secret_file=None)
        config = parse_config(data)
        self.assertEqual(
            (config.timing, config.snapshot, config.limits, config.log),
            (Timing(), SnapshotPolicy(), Limits(), LogSettings()),
        )
        self.assertIsNone(config.secret_file)

    def test_allKeys(self):
        """
        Every optional key is read into the tree.
        """
        data = minimal()
        data.update(
            timing={"heartbeat_interval": 1, "failure_timeout": 3},
            snapshot={"every_entries": 100},
            limits={
                "max_line_bytes": 1024,
                "max_text_chars": 1,
                "max_inflight": 1,
                "idle_timeout": 0,
                "max_output_bytes": 65536,
                "login_attempts_per_minute": 1,
            },
            log={"segment_bytes": 4096},
            secret_file="/etc/replichat/secret",
        )
        config = parse_config(data)
        self.assertEqual(config.timing, Timing(1.0, 3.0))
        self.assertEqual(config.snapshot, SnapshotPolicy(100))
        self.assertEqual(config.limits, Limits(1024, 1, 1, 0.0, 65536, 1))
        self.assertEqual(config.log, LogSettings(4096))
        self.assertEqual(config.secret_file, "/etc/replichat/secret")

    def test_secondsAreFloats(self):
        """
        Durations given as integers are stored as floats.
        """
        data = minimal()
        data["timing"] = {"heartbeat_interval": 1, "failure_timeout": 3}
        data["limits"] = {"idle_timeout": 60}
        config = parse_config(data)
        values = [
            config.timing.heartbeat_interval,
            config.timing.failure_timeout,
            config.limits.idle_timeout,
        ]
        self.assertEqual([type(value) for value in values], [float] * 3)

    def test_stringNodeIds(self):
        """
        A node id may be a digit string; it becomes an integer.
        """
        config = parse_config(yaml.safe_load(MINIMAL.replace("  2:", '  "2":')))
        self.assertEqual(list(config.nodes), [1, 2])
        self.assertEqual(config.node(2).id, 2)

    def test_nodesInIdOrder(self):
        """
        C{nodes} iterates in id order, whatever the order in the file.
        """
        data = minimal()
        data["nodes"] = {
            10: {"host": "a", "client_port": 1, "peer_port": 2},
            "9": {"host": "b", "client_port": 1, "peer_port": 2},
            1: {"host": "c", "client_port": 1, "peer_port": 2},
        }
        self.assertEqual(list(parse_config(data).nodes), [1, 9, 10])

    def test_sharedPortsOnDifferentHosts(self):
        """
        Nodes on different hosts may use the same ports.
        """
        config = parse_config(minimal())
        self.assertEqual(config.node(1).client_port, config.node(2).client_port)


class TopLevelTests(_ConfigTestCase):
    """
    Tests for the document as a whole.
    """

    def test_empty(self):
        """
        An empty document is rejected.
        """
        self.assertError(None, "", "config is empty")

    def test_notMapping(self):
        """
        A document that is not a mapping is rejected.
        """
        self.assertError([1], "", "expected a mapping at the top level, got [1]")

    def test_unknownKey(self):
        """
        An unknown top-level key is rejected, naming the known ones.
        """
        data = minimal()
        data["peers"] = {}
        self.assertError(data, "peers", UNKNOWN_TOP)

    def test_required(self):
        """
        C{nodes} and C{data_dir} are required.
        """
        self.assertEqual(
            self.errors({}), [("nodes", "required"), ("data_dir", "required")]
        )

    def test_sectionsMustBeMappings(self):
        """
        Each section, when given, must be a mapping.
        """
        for name in ["timing", "snapshot", "limits", "log"]:
            data = minimal()
            data[name] = [1]
            self.assertError(data, name, "expected a mapping, got [1]")

    def test_unknownSectionKeys(self):
        """
        Unknown keys inside each section are rejected, naming the known ones.
        """
        known = {
            "timing": "failure_timeout, heartbeat_interval",
            "snapshot": "every_bytes, every_entries",
            "limits": "idle_timeout, login_attempts_per_minute, max_inflight,"
            " max_line_bytes, max_output_bytes, max_text_chars",
            "log": "segment_bytes",
        }
        for name, keys in known.items():
            data = minimal()
            data[name] = {"bogus": 1}
            message = f"unknown key (expected one of {keys})"
            self.assertError(data, f"{name}.bogus", message)

    def test_manyErrors(self):
        """
        Every problem is reported at once, in document order.
        """
        data = yaml.safe_load(
            """\
            nodes:
              1: {host: 10.0.0.1, client_port: 7001, peer_port: abc}
              x: {host: "a b", client_port: true, color: red}
            timing: {heartbeat_interval: 0, failure_timeout: 0.5}
            log: {segment_bytes: 1}
            secret_file: ""
            extra: 1
            """.replace(
                "            ", ""
            )
        )
        self.assertEqual(
            self.errors(data),
            [
                ("extra", UNKNOWN_TOP),
                ("nodes.1.peer_port", PORT.format("abc")),
                ("nodes.x", "expected a positive integer node id, got 'x'"),
                ("nodes.x.host", "expected a host name or IP address, got 'a b'"),
                ("nodes.x.client_port", PORT.format(True)),
                ("nodes.x.color", UNKNOWN_NODE),
                ("nodes.x.peer_port", "required"),
                ("data_dir", "required"),
                ("timing.heartbeat_interval", "expected a number > 0, got 0"),
                ("log.segment_bytes", "expected an integer >= 4096, got 1"),
                ("secret_file", "expected a non-empty path, got ''"),
            ],
        )

    def test_longValuesShortened(self):
        """
        A huge bad value is shown shortened, not in full.
        """
        data = minimal()
        data["data_dir"] = ["x" * 1000]
        [(path, message)] = self.errors(data)
        self.assertEqual(path, "data_dir")
        self.assertTrue(message.startswith("expected a non-empty path, got ['xxx"))
        self.assertLess(len(message), 150)


class NodesTests(_ConfigTestCase):
    """
    Tests for the C{nodes} section.
    """

    def withNodes(self, nodes):
        """
        @return: the minimal document with C{nodes} replaced.
        """
        data = minimal()
        data["nodes"] = nodes
        return data

    def withNode(self, **fields):
        """
        @return: the minimal document with node 2's fields changed.
        """
        data = minimal()
        data["nodes"][2].update(fields)
        return data

    def test_notMapping(self):
        """
        C{nodes} must be a non-empty mapping.
        """
        for bad in [{}, [], None, "1,2"]:
            wanted = "a non-empty mapping of node id to addresses"
            message = f"expected {wanted}, got {bad!r}"
            self.assertError(self.withNodes(bad), "nodes", message)

    def test_badNodeIds(self):
        """
        Node ids must be positive integers or digit strings.
        """
        for bad in ["x", 0, -1, True, 1.5, "1.5", "-2", "", "\u0663", None]:
            data = self.withNodes({bad: minimal()["nodes"][2]})
            message = f"expected a positive integer node id, got {bad!r}"
            self.assertError(data, f"nodes.{bad}", message)

    def test_nodeIdTooLarge(self):
        """
        Node ids run up to 999: an epoch names its leader in its last three
        digits.
        """
        data = self.withNodes({1000: minimal()["nodes"][2]})
        self.assertError(data, "nodes.1000", "node ids run from 1 to 999, got 1000")

    def test_duplicateNodeId(self):
        """
        The same id given as an integer and as a string is rejected.
        """
        data = minimal()
        data["nodes"]["1"] = {"host": "10.0.0.9", "client_port": 1, "peer_port": 2}
        self.assertError(data, "nodes.1", "node id 1 is given twice")

    def test_nodeNotMapping(self):
        """
        Each node must be a mapping.
        """
        data = minimal()
        data["nodes"][2] = "10.0.0.2:7001"
        self.assertError(data, "nodes.2", "expected a mapping, got '10.0.0.2:7001'")

    def test_missingKeys(self):
        """
        A node must give host, client_port and peer_port.
        """
        data = minimal()
        data["nodes"][2] = {}
        self.assertEqual(
            self.errors(data),
            [
                ("nodes.2.host", "required"),
                ("nodes.2.client_port", "required"),
                ("nodes.2.peer_port", "required"),
            ],
        )

    def test_unknownKey(self):
        """
        A node with an unknown key is rejected.
        """
        self.assertError(self.withNode(port=1), "nodes.2.port", UNKNOWN_NODE)

    def test_badPorts(self):
        """
        Ports must be integers from 1 to 65535; bools, floats, strings and
        nulls are rejected with the value's repr.
        """
        for bad in [0, -1, 65536, True, False, 7001.0, "7001", "abc", None]:
            for port in ["client_port", "peer_port"]:
                self.assertError(
                    self.withNode(**{port: bad}), f"nodes.2.{port}", PORT.format(bad)
                )

    def test_portBounds(self):
        """
        Ports 1 and 65535 are accepted.
        """
        config = parse_config(self.withNode(client_port=1, peer_port=65535))
        node = config.node(2)
        self.assertEqual((node.client_port, node.peer_port), (1, 65535))

    def test_badHost(self):
        """
        A host must be a non-empty string without whitespace.
        """
        for bad in ["", "a b", " 10.0.0.2", "host\n", 5, None, ["a"]]:
            message = f"expected a host name or IP address, got {bad!r}"
            self.assertError(self.withNode(host=bad), "nodes.2.host", message)

    def test_sameClientAddress(self):
        """
        Two nodes on one host cannot share a client port.
        """
        data = self.withNode(host="10.0.0.1", peer_port=7102)
        message = "10.0.0.1:7001 is already used by nodes.1.client_port"
        self.assertError(data, "nodes.2.client_port", message)

    def test_samePeerAddress(self):
        """
        Two nodes on one host cannot share a peer port.
        """
        data = self.withNode(host="10.0.0.1", client_port=7002)
        message = "10.0.0.1:7101 is already used by nodes.1.peer_port"
        self.assertError(data, "nodes.2.peer_port", message)

    def test_clientPortIsOthersPeerPort(self):
        """
        One node's client port cannot be another's peer port on one host.
        """
        data = self.withNode(host="10.0.0.1", client_port=7101, peer_port=7102)
        message = "10.0.0.1:7101 is already used by nodes.1.peer_port"
        self.assertError(data, "nodes.2.client_port", message)

    def test_samePortsInOneNode(self):
        """
        A node's client and peer ports must differ.
        """
        data = self.withNode(peer_port=7001)
        message = "10.0.0.2:7001 is already used by nodes.2.client_port"
        self.assertError(data, "nodes.2.peer_port", message)

    def test_hostCaseIgnored(self):
        """
        Host names differing only in case are the same host.
        """
        data = minimal()
        data["nodes"][1]["host"] = "Alpha"
        data["nodes"][2]["host"] = "alpha"
        data["nodes"][2]["peer_port"] = 7102
        message = "alpha:7001 is already used by nodes.1.client_port"
        self.assertError(data, "nodes.2.client_port", message)

    def test_duplicateNamesLaterNodeById(self):
        """
        Of two nodes sharing an address, the one with the higher id is
        blamed, whatever the order in the file; a string id keeps its path.
        """
        data = self.withNodes(
            {
                "3": {"host": "h", "client_port": 1, "peer_port": 2},
                1: {"host": "h", "client_port": 1, "peer_port": 3},
            }
        )
        message = "h:1 is already used by nodes.1.client_port"
        self.assertError(data, "nodes.3.client_port", message)


class DataDirTests(_ConfigTestCase):
    """
    Tests for C{data_dir}.
    """

    def withDataDir(self, value):
        """
        @return: the minimal document with C{data_dir} replaced.
        """
        data = minimal()
        data["data_dir"] = value
        return data

    def test_badValues(self):
        """
        C{data_dir} must be a non-empty string.
        """
        for bad in ["", None, 5, ["a"]]:
            message = f"expected a non-empty path, got {bad!r}"
            self.assertError(self.withDataDir(bad), "data_dir", message)

    def test_unknownPlaceholder(self):
        """
        A placeholder other than C{{node}} is rejected.
        """
        self.assertError(
            self.withDataDir("/srv/{id}"),
            "data_dir",
            "unknown placeholder {id} (only {node} is replaced)",
        )

    def test_sharedHostWithoutNode(self):
        """
        Nodes on one host may share a C{data_dir} without C{{node}}: each
        is then started with its own C{--data-dir} (the data-dir lock keeps
        two servers from ever sharing one directory).
        """
        data = self.withDataDir("/srv/chat")
        data["nodes"][2].update(host="10.0.0.1", client_port=7002, peer_port=7102)
        self.assertEqual(parse_config(data).data_dir_for(2), "/srv/chat")

    def test_separateHostsWithoutNode(self):
        """
        Nodes on separate hosts may use one fixed C{data_dir}.
        """
        config = parse_config(self.withDataDir("/srv/chat"))
        self.assertEqual(config.data_dir_for(2), "/srv/chat")


class SectionTests(_ConfigTestCase):
    """
    Tests for the values of the C{timing}, C{snapshot}, C{limits} and
    C{log} sections and C{secret_file}.
    """

    def assertRejected(self, section, key, values, wanted):
        """
        Assert each of C{values} at C{section.key} is rejected as not
        C{wanted}.
        """
        for bad in values:
            data = minimal()
            data[section] = {key: bad}
            message = f"expected {wanted}, got {bad!r}"
            self.assertError(data, f"{section}.{key}", message)

    def assertAccepted(self, section, key, values):
        """
        Assert each of C{values} at C{section.key} is accepted as is.
        """
        for good in values:
            data = minimal()
            data[section] = {key: good}
            if section == "timing":
                data[section] = {key: good, "failure_timeout": 1e9}
            config = parse_config(data)
            self.assertEqual(getattr(getattr(config, section), key), good)

    def test_timingValues(self):
        """
        Timing values are finite numbers above zero, not bools.
        """
        bad = [0, -0.1, True, "0.1", None, float("nan"), float("inf"), -float("inf")]
        for key in ["heartbeat_interval", "failure_timeout"]:
            self.assertRejected("timing", key, bad, "a number > 0")
        self.assertAccepted("timing", "heartbeat_interval", [1e-6, 2, 1.5])

    def test_hugeInteger(self):
        """
        An integer too large for a float is rejected, not a crash.
        """
        data = minimal()
        data["timing"] = {"failure_timeout": 10**400}
        [(path, message)] = self.errors(data)
        self.assertEqual(path, "timing.failure_timeout")
        self.assertTrue(message.startswith("expected a number > 0, got 1000"), message)

    def test_failureTimeoutTooShort(self):
        """
        C{failure_timeout} must exceed twice C{heartbeat_interval}, even when
        one of them is the default.
        """
        message = (
            "must be more than twice heartbeat_interval ({}) so that a follower"
            " can miss one heartbeat, got {}"
        )
        for timing, values in [
            ({"heartbeat_interval": 0.25, "failure_timeout": 0.5}, (0.25, 0.5)),
            ({"heartbeat_interval": 0.3}, (0.3, 0.5)),
            ({"failure_timeout": 0.1}, (0.1, 0.1)),
        ]:
            data = minimal()
            data["timing"] = timing
            self.assertError(data, "timing.failure_timeout", message.format(*values))

    def test_failureTimeoutJustEnough(self):
        """
        A C{failure_timeout} just over twice the heartbeat is accepted.
        """
        data = minimal()
        data["timing"] = {"heartbeat_interval": 0.25, "failure_timeout": 0.5001}
        self.assertEqual(parse_config(data).timing.failure_timeout, 0.5001)

    def test_snapshot(self):
        """
        C{snapshot.every_entries} is an integer of at least 100.
        """
        bad = [99, 0, 1000.0, True, "1000", None]
        self.assertRejected("snapshot", "every_entries", bad, "an integer >= 100")
        self.assertAccepted("snapshot", "every_entries", [100, 10**9])

    def test_snapshotEveryBytes(self):
        """
        C{snapshot.every_bytes} is an integer of at least 65536.
        """
        self.assertRejected("snapshot", "every_bytes", [1000, "big", 1.5e6], "an integer >= 65536")
        self.assertAccepted("snapshot", "every_bytes", [65536, 2**40])

    def test_maxLineBytes(self):
        """
        C{limits.max_line_bytes} is an integer from 1 KiB to 16 MiB.
        """
        bad = [1023, 16 * 1024 * 1024 + 1, 65536.0, True, None]
        wanted = "an integer 1024-16777216"
        self.assertRejected("limits", "max_line_bytes", bad, wanted)
        self.assertAccepted("limits", "max_line_bytes", [1024, 16 * 1024 * 1024])

    def test_positiveLimits(self):
        """
        Counts in C{limits} are integers of at least 1.
        """
        for key in ["max_text_chars", "max_inflight", "login_attempts_per_minute"]:
            bad = [0, -5, 2.0, True, "3"]
            self.assertRejected("limits", key, bad, "an integer >= 1")
            self.assertAccepted("limits", key, [1, 50000])

    def test_idleTimeout(self):
        """
        C{limits.idle_timeout} is a number of at least 0 (0 disables it).
        """
        bad = [-1, -0.5, False, "60", float("nan"), float("inf")]
        self.assertRejected("limits", "idle_timeout", bad, "a number >= 0")
        self.assertAccepted("limits", "idle_timeout", [0, 0.5, 86400])

    def test_maxOutputBytes(self):
        """
        C{limits.max_output_bytes} is an integer of at least 64 KiB.
        """
        bad = [65535, 0, 1e7, True]
        self.assertRejected("limits", "max_output_bytes", bad, "an integer >= 65536")
        self.assertAccepted("limits", "max_output_bytes", [65536, 2**40])

    def test_segmentBytes(self):
        """
        C{log.segment_bytes} is an integer of at least 4096.
        """
        bad = [4095, 0, 8192.0, "8192", True]
        self.assertRejected("log", "segment_bytes", bad, "an integer >= 4096")
        self.assertAccepted("log", "segment_bytes", [4096, 2**30])

    def test_secretFile(self):
        """
        C{secret_file}, when given, is a non-empty string.
        """
        for bad in ["", 5, ["a"], True]:
            data = minimal()
            data["secret_file"] = bad
            message = f"expected a non-empty path, got {bad!r}"
            self.assertError(data, "secret_file", message)


class ConfigTests(SynchronousTestCase):
    """
    Tests for L{Config} itself.
    """

    def setUp(self):
        self.config = parse_config(minimal())

    def test_node(self):
        """
        L{Config.node} returns a node's addresses.
        """
        self.assertEqual(
            self.config.node(2),
            NodeAddress(id=2, host="10.0.0.2", client_port=7001, peer_port=7101),
        )

    def test_unknownNode(self):
        """
        L{Config.node} raises L{KeyError} for an id not configured.
        """
        self.assertRaises(KeyError, self.config.node, 3)

    def test_nodesReadOnly(self):
        """
        C{nodes} cannot be changed, and the config is hashable.
        """
        with self.assertRaises(TypeError):
            self.config.nodes[3] = self.config.node(1)
        self.assertEqual(hash(self.config), hash(parse_config(minimal())))

    def test_frozen(self):
        """
        The config cannot be modified, but can be evolved; evolving keeps
        C{nodes} a read-only mapping.
        """
        with self.assertRaises(attrs.exceptions.FrozenInstanceError):
            self.config.data_dir = "/tmp"
        evolved = attrs.evolve(self.config, data_dir="/tmp/{node}")
        self.assertEqual(evolved.data_dir_for(1), "/tmp/1")
        self.assertEqual(evolved.nodes, self.config.nodes)
        self.assertRaises(TypeError, operator.setitem, evolved.nodes, 3, None)

    def test_directNodes(self):
        """
        A config built directly from a dict keeps its own read-only copy in
        id order.
        """
        nodes = {
            2: NodeAddress(id=2, host="b", client_port=1, peer_port=2),
            1: NodeAddress(id=1, host="a", client_port=1, peer_port=2),
        }
        config = Config(nodes=nodes, data_dir="d")
        del nodes[1]
        self.assertEqual(list(config.nodes), [1, 2])
        self.assertEqual(config.nodes, nodes | {1: config.node(1)})

    def test_copyAndPickle(self):
        """
        A config survives a deep copy and a pickle round trip.
        """
        self.assertEqual(copy.deepcopy(self.config), self.config)
        self.assertEqual(pickle.loads(pickle.dumps(self.config)), self.config)

    def test_dataDirFor(self):
        """
        L{Config.data_dir_for} replaces every C{{node}} by the id.
        """
        self.assertEqual(self.config.data_dir_for(2), "/var/lib/replichat/node-2")
        config = attrs.evolve(self.config, data_dir="var/{node}/n{node}")
        self.assertEqual(config.data_dir_for(13), "var/13/n13")

    def test_dataDirForRelative(self):
        """
        A relative C{data_dir} stays relative.
        """
        config = attrs.evolve(self.config, data_dir="var/node-{node}")
        self.assertEqual(config.data_dir_for(1), "var/node-1")


class LoadConfigTests(SynchronousTestCase):
    """
    Tests for L{load_config}.
    """

    def write(self, content):
        """
        @return: the path of a new file holding C{content} (bytes).
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_load(self):
        """
        A valid file loads, with its name as the source.
        """
        path = self.write(MINIMAL.encode("utf-8"))
        self.assertEqual(load_config(path), parse_config(minimal(), source=path))

    def test_missingFile(self):
        """
        A missing file is a L{ConfigError} naming the file and the OS error.
        """
        path = self.mktemp()
        error = self.assertRaises(ConfigError, load_config, path)
        message = "cannot read: No such file or directory"
        self.assertEqual(error.errors, [(path, message)])

    def test_directory(self):
        """
        A directory is not a config file.
        """
        path = self.mktemp()
        os.mkdir(path)
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(error.errors, [(path, "cannot read: Is a directory")])

    def test_invalidYAML(self):
        """
        A YAML syntax error names the line and column.
        """
        path = self.write(b"nodes:\n  a: b: c\n")
        error = self.assertRaises(ConfigError, load_config, path)
        message = (
            "invalid YAML at line 2, column 7: mapping values are not allowed here"
        )
        self.assertEqual(error.errors, [(path, message)])

    def test_undecodable(self):
        """
        Bytes that are not text give a one-line error.
        """
        path = self.write(b"data_dir: \x00\n")
        [(where, message)] = self.assertRaises(ConfigError, load_config, path).errors
        self.assertEqual(where, path)
        self.assertTrue(message.startswith("invalid YAML: unacceptable character"))
        self.assertNotIn("\n", message)

    def test_duplicateKey(self):
        """
        A key given twice in one mapping, such as a node line copied and not
        renumbered, is an error rather than silently replacing the first.
        """
        path = self.write(MINIMAL.replace("  2:", "  1:").encode("utf-8"))
        error = self.assertRaises(ConfigError, load_config, path)
        message = "invalid YAML at line 3, column 3: found duplicate key 1"
        self.assertEqual(error.errors, [(path, message)])

    def test_mergeKeysAllowed(self):
        """
        YAML merge keys still work: a merged key may be overridden.
        """
        path = self.write(
            b"base: &b {host: h, client_port: 1, peer_port: 2}\n"
            b"nodes:\n  1: *b\n  2: {<<: *b, client_port: 3, peer_port: 4}\n"
        )
        # "base" is not a config key, so this reports only that.
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(error.errors[0], ("base", UNKNOWN_TOP))
        self.assertNotIn("duplicate", str(error))

    def test_emptyFile(self):
        """
        An empty file is reported as such.
        """
        path = self.write(b"# nothing yet\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(error.errors, [("", "config is empty")])

    def test_validationErrors(self):
        """
        A well-formed file with bad values reports them by key path.
        """
        content = MINIMAL.replace("peer_port: 7101}", "peer_port: abc}", 1)
        path = self.write(content.encode("utf-8"))
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(
            str(error), "nodes.1.peer_port: expected an integer 1-65535, got 'abc'"
        )


class ExampleFilesTests(SynchronousTestCase):
    """
    The example configs in C{etc/} load and say what they promise.
    """

    def test_local(self):
        """
        C{etc/local.yaml}: three nodes on 127.0.0.1, each with its own ports
        and its data under C{var/}, and a peer secret under C{var/} too (all
        relative to the repository root, where C{bin/replichat-local} runs
        the servers).
        """
        config = load_config(example("local.yaml"))
        self.assertEqual(
            list(config.nodes.values()),
            [NodeAddress(i, "127.0.0.1", 7000 + i, 7100 + i) for i in (1, 2, 3)],
        )
        self.assertEqual(
            [config.data_dir_for(i) for i in config.nodes],
            ["var/node-1", "var/node-2", "var/node-3"],
        )
        self.assertEqual(config.timing, Timing())
        self.assertEqual(config.secret_file, "var/peer-secret")

    def test_cluster3Hosts(self):
        """
        C{etc/cluster-3hosts.yaml}: three hosts and a peer secret.
        """
        config = load_config(example("cluster-3hosts.yaml"))
        self.assertEqual(
            list(config.nodes.values()),
            [NodeAddress(i, f"10.0.0.{i}", 7001, 7101) for i in (1, 2, 3)],
        )
        self.assertEqual(config.data_dir_for(3), "/var/lib/replichat/node-3")
        self.assertEqual(config.secret_file, "/etc/replichat/secret")

    def test_exampleShowsDefaults(self):
        """
        C{etc/replichat.example.yaml} gives every optional value its default.
        """
        config = load_config(example("replichat.example.yaml"))
        defaults = Config(nodes=config.nodes, data_dir=config.data_dir)
        self.assertEqual(attrs.evolve(config, source="<config>"), defaults)

    def test_exampleHasEveryKey(self):
        """
        C{etc/replichat.example.yaml} documents every key of every section.
        """
        with open(example("replichat.example.yaml"), encoding="utf-8") as f:
            document = yaml.safe_load(f)
        sections = {"timing", "snapshot", "limits", "log"}
        top = {"nodes", "data_dir", "secret_file"} | sections
        self.assertEqual(set(document), top)
        node = {field.name for field in attrs.fields(NodeAddress)} - {"id"}
        self.assertEqual(set(document["nodes"][1]), node)
        for name, cls in [
            ("timing", Timing),
            ("snapshot", SnapshotPolicy),
            ("limits", Limits),
            ("log", LogSettings),
        ]:
            keys = {field.name for field in attrs.fields(cls)}
            self.assertEqual(set(document[name]), keys, name)
