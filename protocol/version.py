"""The wire protocol's version: one integer carried in every message header.

Bump it whenever a message's fields, the header layout or the array framing changes in a
way an older peer could misread. Both sides refuse a message whose version differs, and the
error names both versions so the user knows which side to upgrade.
"""

from __future__ import annotations

PROTOCOL_VERSION: int = 1

# The default endpoint is loopback only: a daemon reachable from the network must be bound
# explicitly, and then needs CURVE keys (see protocol.transport).
DEFAULT_ENDPOINT: str = "tcp://127.0.0.1:5555"
