# -*- test-case-name: tests.test_config -*-
"""
The cluster configuration: one YAML file, the same on every host.

L{load_config} reads the file and L{parse_config} turns the parsed document
into a frozen tree: a L{Config} holding L{NodeAddress}, L{Timing},
L{SnapshotPolicy}, L{Limits} and L{LogSettings}.  Validation does not stop at
the first problem: every bad value and every unknown key is collected, named
by its dotted key path (C{nodes.2.peer_port}), into one L{ConfigError}, so an
operator can fix a file in one pass and never sees a traceback.

Every key, with its default, is documented in C{etc/replichat.example.yaml}.
"""

import math
import re
import reprlib
from collections.abc import Mapping

import yaml
from attrs import field, frozen

from replichat.election import MAX_NODE_ID

MiB = 1024 * 1024


class ConfigError(Exception):
    """
    A configuration that cannot be used.

    @ivar errors: every problem found, each a C{(path, message)} pair such
        as C{("nodes.2.peer_port", "expected an integer 1-65535, got 'abc'")}.
        The path is dotted, C{""} for the document itself, or the file name
        for problems reading or parsing the file.
    """

    def __init__(self, errors):
        """
        @param errors: an iterable of C{(path, message)} pairs.
        """
        self.errors = list(errors)
        super().__init__(self.errors)

    def __str__(self):
        """
        @return: one line per problem, C{"path: message"}.
        """
        return "\n".join(
            f"{path}: {message}" if path else message for path, message in self.errors
        )


@frozen
class NodeAddress:
    """
    Where one server listens.

    @ivar id: the server's id, a positive integer, never reused.
    @ivar host: host name or IP address, for clients and for peers.
    @ivar client_port: TCP port of the client line protocol.
    @ivar peer_port: TCP port of the peer (AMP) protocol.
    """

    id: int
    host: str
    client_port: int
    peer_port: int


@frozen
class Timing:
    """
    Failure detection, in seconds.

    @ivar heartbeat_interval: how often the leader sends heartbeats.
    @ivar failure_timeout: silence after which a peer is considered down;
        more than twice C{heartbeat_interval}.
    """

    heartbeat_interval: float = 0.1
    failure_timeout: float = 0.5


@frozen
class SnapshotPolicy:
    """
    @ivar every_entries: take a snapshot after this many log entries.
    @ivar every_bytes: or after this many bytes of entry data, whichever
        comes first (large messages fill the log faster than their count says).
    """

    every_entries: int = 100_000
    every_bytes: int = 256 * MiB


@frozen
class Limits:
    """
    Bounds that keep one client from stalling the others.

    @ivar max_line_bytes: longest request line accepted.
    @ivar max_text_chars: longest message text, in characters.
    @ivar max_inflight: requests in flight per client connection.
    @ivar idle_timeout: seconds of client silence before the server hangs
        up; 0 disables.
    @ivar max_output_bytes: output buffered for one connection before the
        server drops it.
    @ivar login_attempts_per_minute: login attempts allowed per minute.
    """

    max_line_bytes: int = 65536
    max_text_chars: int = 10_000
    max_inflight: int = 256
    idle_timeout: float = 3600.0
    max_output_bytes: int = 4 * MiB
    login_attempts_per_minute: int = 10


@frozen
class LogSettings:
    """
    @ivar segment_bytes: size at which the on-disk log starts a new segment.
    """

    segment_bytes: int = 16 * MiB


class _Nodes(Mapping):
    """
    A read-only, hashable mapping of node id to L{NodeAddress}, iterated in
    id order.
    """

    def __init__(self, nodes):
        self._nodes = dict(sorted(nodes.items()))

    def __getitem__(self, node_id):
        return self._nodes[node_id]

    def __iter__(self):
        return iter(self._nodes)

    def __len__(self):
        return len(self._nodes)

    def __hash__(self):
        return hash(tuple(self._nodes.items()))

    def __repr__(self):
        return repr(self._nodes)


@frozen
class Config:
    """
    The whole configuration.

    @ivar nodes: the initial members, a read-only mapping of id to
        L{NodeAddress}, iterated in id order.
    @ivar data_dir: the data directory template; C{{node}} stands for the
        node id (see L{data_dir_for}).
    @ivar secret_file: path of the shared secret peers authenticate with, or
        L{None}.
    @ivar source: where the configuration came from, for messages.
    """

    nodes: Mapping[int, NodeAddress] = field(converter=_Nodes)
    data_dir: str
    timing: Timing = field(factory=Timing)
    snapshot: SnapshotPolicy = field(factory=SnapshotPolicy)
    limits: Limits = field(factory=Limits)
    log: LogSettings = field(factory=LogSettings)
    secret_file: str | None = None
    source: str = "<config>"

    def node(self, node_id):
        """
        @return: the L{NodeAddress} of C{node_id}.
        @raise KeyError: if the configuration lists no such node.
        """
        return self.nodes[node_id]

    def data_dir_for(self, node_id):
        """
        The data directory of one node: C{data_dir} with C{{node}} replaced
        by the id.  A relative path is left relative, that is, to the
        server's current working directory (not to the config file).
        """
        return self.data_dir.replace("{node}", str(node_id))


_show = reprlib.Repr()
_show.maxstring = _show.maxother = 60
_show = _show.repr


class _Invalid(Exception):
    """
    A value a rule rejects; the argument is the message.
    """


def _rule(wanted, accept, convert=lambda value: value):
    """
    A rule: a function of a value that returns it converted, or raises
    L{_Invalid} with the message "expected C{wanted}, got C{repr(value)}".
    """

    def check(value):
        if accept(value):
            return convert(value)
        raise _Invalid(f"expected {wanted}, got {_show(value)}")

    return check


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite(value):
    try:
        return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _integer(low, high=None):
    """
    A rule for an integer (not a bool) from C{low} to C{high} (no bound if
    L{None}).
    """
    wanted = f"an integer {low}-{high}" if high else f"an integer >= {low}"
    return _rule(wanted, lambda v: _is_int(v) and low <= v <= (high or v))


def _number(low, inclusive=False):
    """
    A rule for a finite int or float above C{low} (or equal to it, if
    C{inclusive}), converted to float.
    """

    def accept(value):
        return _is_finite(value) and (value >= low if inclusive else value > low)

    return _rule(f"a number {'>=' if inclusive else '>'} {low}", accept, float)


_host = _rule(
    "a host name or IP address",
    lambda v: isinstance(v, str) and re.fullmatch(r"\S+", v) is not None,
)
_path = _rule("a non-empty path", lambda v: isinstance(v, str) and v != "")
_PORT = _integer(1, 65535)
_NODE_RULES = {"host": _host, "client_port": _PORT, "peer_port": _PORT}
_SECTIONS = {
    "timing": (
        Timing,
        {"heartbeat_interval": _number(0), "failure_timeout": _number(0)},
    ),
    "snapshot": (
        SnapshotPolicy,
        {"every_entries": _integer(100), "every_bytes": _integer(64 * 1024)},
    ),
    "limits": (
        Limits,
        {
            "max_line_bytes": _integer(1024, 16 * MiB),
            "max_text_chars": _integer(1),
            "max_inflight": _integer(1),
            "idle_timeout": _number(0, inclusive=True),
            "max_output_bytes": _integer(65536),
            "login_attempts_per_minute": _integer(1),
        },
    ),
    "log": (LogSettings, {"segment_bytes": _integer(4096)}),
}
_TOP_LEVEL = {"nodes", "data_dir", "secret_file", *_SECTIONS}


class _Checker:
    """
    Walks a parsed document, collecting problems instead of raising.

    @ivar errors: the C{(path, message)} pairs found so far.
    """

    def __init__(self):
        self.errors = []

    def error(self, path, message):
        self.errors.append((path, message))

    def value(self, rule, value, path):
        """
        @return: C{rule(value)}, or L{None} after recording why not.
        """
        try:
            return rule(value)
        except _Invalid as e:
            self.error(path, e.args[0])

    def mapping(self, value, path, rules, required=False):
        """
        Check a mapping against C{rules} (key -> rule): unknown keys,
        missing keys if C{required}, and every value.

        @return: the keys whose values passed, converted by their rule.
        """
        if not isinstance(value, dict):
            self.error(path, f"expected a mapping, got {_show(value)}")
            return {}
        valid = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in rules:
                expected = ", ".join(sorted(rules))
                self.error(where, f"unknown key (expected one of {expected})")
            elif (item := self.value(rules[key], item, where)) is not None:
                valid[key] = item
        for key in rules:
            if required and key not in value:
                self.error(f"{path}.{key}", "required")
        return valid

    def node_id(self, key, path, seen):
        """
        @return: the id a key of C{nodes} names (an int or a digit string),
            or L{None} after recording why it is bad or already in C{seen}.
        """
        node_id = key
        if isinstance(key, str) and re.fullmatch("[0-9]+", key):
            node_id = int(key)
        if not _is_int(node_id) or node_id < 1:
            self.error(path, f"expected a positive integer node id, got {_show(key)}")
        elif node_id > MAX_NODE_ID:
            # Epochs carry their leader's id in their last three digits.
            self.error(path, f"node ids run from 1 to {MAX_NODE_ID}, got {node_id}")
        elif node_id in seen:
            self.error(path, f"node id {node_id} is given twice")
        else:
            return node_id

    def nodes(self, value):
        """
        Check the C{nodes} mapping, and that no two ports are the same.

        @return: a dict of id to L{NodeAddress} of the well-formed nodes.
        """
        if not isinstance(value, dict) or not value:
            wanted = "a non-empty mapping of node id to addresses"
            self.error("nodes", f"expected {wanted}, got {_show(value)}")
            return {}
        nodes, paths = {}, {}
        for key, item in value.items():
            path = f"nodes.{key}"
            node_id = self.node_id(key, path, paths)
            address = self.mapping(item, path, _NODE_RULES, required=True)
            if node_id is not None:
                paths[node_id] = path
                if len(address) == len(_NODE_RULES):
                    nodes[node_id] = NodeAddress(id=node_id, **address)
        used = {}
        for node_id, node in sorted(nodes.items()):
            for port in ("client_port", "peer_port"):
                endpoint = (node.host.lower(), getattr(node, port))
                path = f"{paths[node_id]}.{port}"
                if endpoint in used:
                    where = f"{node.host}:{endpoint[1]}"
                    self.error(path, f"{where} is already used by {used[endpoint]}")
                used.setdefault(endpoint, path)
        return nodes

    def data_dir(self, value):
        """
        Check C{data_dir}: a path whose only placeholder is C{{node}}.

        Nodes on one host without C{{node}} are allowed: each may be given
        its own C{--data-dir}, and a server refuses a directory another
        server holds (its lock), so they can never share one.
        """
        if self.value(_path, value, "data_dir") is None:
            return
        for placeholder in re.findall(r"\{[^}]*\}", value):
            if placeholder != "{node}":
                only = "only {node} is replaced"
                self.error("data_dir", f"unknown placeholder {placeholder} ({only})")


def parse_config(data, source="<config>"):
    """
    Validate a parsed YAML document and build the L{Config}.

    An empty section (C{limits:} with nothing under it) and C{secret_file:
    null} mean the defaults.

    @param data: the document, as returned by C{yaml.safe_load}.
    @param source: where it came from, kept as L{Config.source}.
    @raise ConfigError: listing every problem found.
    """
    if data is None:
        raise ConfigError([("", "config is empty")])
    if not isinstance(data, dict):
        message = f"expected a mapping at the top level, got {_show(data)}"
        raise ConfigError([("", message)])
    check = _Checker()
    check.mapping(data, "", dict.fromkeys(_TOP_LEVEL, lambda value: value))
    nodes = {}
    if "nodes" not in data:
        check.error("nodes", "required")
    else:
        nodes = check.nodes(data["nodes"])
    if "data_dir" not in data:
        check.error("data_dir", "required")
    else:
        check.data_dir(data["data_dir"])
    sections = {}
    for name, (cls, rules) in _SECTIONS.items():
        value = {} if data.get(name) is None else data[name]
        sections[name] = cls(**check.mapping(value, name, rules))
    timing = sections["timing"]
    heartbeat, timeout = timing.heartbeat_interval, timing.failure_timeout
    if timeout <= 2 * heartbeat:
        check.error(
            "timing.failure_timeout",
            f"must be more than twice heartbeat_interval ({heartbeat!r}) so that"
            f" a follower can miss one heartbeat, got {timeout!r}",
        )
    secret_file = data.get("secret_file")
    if secret_file is not None:
        check.value(_path, secret_file, "secret_file")
    if check.errors:
        raise ConfigError(check.errors)
    return Config(
        nodes=nodes,
        data_dir=data["data_dir"],
        secret_file=secret_file,
        source=source,
        **sections,
    )


class _StrictLoader(yaml.SafeLoader):
    """
    C{yaml.SafeLoader} that refuses duplicate keys in a mapping: a node line
    copied and not renumbered must not silently replace the first.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float)):
                    continue  # the base class reports unhashable keys
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path):
    """
    Read, parse and validate a configuration file.

    @param path: the file's name.
    @raise ConfigError: if the file cannot be read, is not valid YAML (the
        message gives line and column), or does not validate.
    """
    try:
        with open(path, "rb") as f:
            data = yaml.load(f, Loader=_StrictLoader)
    except OSError as e:
        raise ConfigError([(path, f"cannot read: {e.strerror or e}")]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        if mark is None:  # e.g. undecodable bytes: str(e) says where
            where, problem = "", " ".join(str(e).split())
        else:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
            problem = e.problem
        raise ConfigError([(path, f"invalid YAML{where}: {problem}")]) from None
    return parse_config(data, source=path)
