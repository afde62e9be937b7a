"""RFC 5321 SMTP and its extensions as sans-I/O state machines.

The server side is :class:`ServerConnection`: feed it bytes, take events, send replies.
Extensions: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8
(RFC 6531), ENHANCEDSTATUSCODES (RFC 2034, RFC 3463), CHUNKING (RFC 3030), DSN (RFC 3461),
with seams for STARTTLS (RFC 3207) and AUTH (RFC 4954).
"""

from pigeon.protocol.smtp._events import *  # noqa: F403
from pigeon.protocol.smtp._events import __all__ as _events_all
from pigeon.protocol.smtp._state import State
from pigeon.protocol.smtp.errors import LocalProtocolError, ProtocolError
from pigeon.protocol.smtp.server import ServerConfig, ServerConnection

__all__ = [
    *_events_all,
    "LocalProtocolError",
    "ProtocolError",
    "ServerConfig",
    "ServerConnection",
    "State",
]
