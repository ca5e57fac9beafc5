# -*- test-case-name: tests.test_lineproto -*-
"""
The JSON encoders replichat uses, made once.

C{json.dumps} and C{json.loads} with any option build a new encoder or
decoder per call, which costs as much as encoding a small request; these
shared instances avoid that on the hot path.
"""

import json

#: Compact, strict (no NaN or Infinity), non-ASCII kept as is: protocol
#: lines and log entries.
COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)

#: As L{COMPACT} with sorted keys: equal values encode to equal text.
CANONICAL = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False, sort_keys=True
)

#: Plain decoding, for data replichat wrote itself.
DECODER = json.JSONDecoder()
