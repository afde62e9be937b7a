"""RFC 1939 POP3 with CAPA (RFC 2449), STLS (RFC 2595), AUTH (RFC 5034) and response codes
(RFC 2449 §8, RFC 3206), as a sans-I/O state machine.

The server side is :class:`ServerConnection`: feed it bytes, take events, send responses.
"""

from pigeon.protocol.pop3._data import DotStuffer, TopFilter
from pigeon.protocol.pop3._events import *  # noqa: F403
from pigeon.protocol.pop3._events import __all__ as _events_all
from pigeon.protocol.pop3._response import (
    RESPONSE_CODES,
    Challenge,
    Response,
    refusal_response,
)
from pigeon.protocol.pop3._state import State
from pigeon.protocol.pop3.errors import LocalProtocolError, ProtocolError
from pigeon.protocol.pop3.server import ServerConfig, ServerConnection

__all__ = [
    *_events_all,
    "RESPONSE_CODES",
    "Challenge",
    "DotStuffer",
    "LocalProtocolError",
    "ProtocolError",
    "Response",
    "ServerConfig",
    "ServerConnection",
    "State",
    "TopFilter",
    "refusal_response",
]
