"""The POP3 server state table (RFC 1939 §3-§6, RFC 2449, RFC 2595, RFC 5034).

Theory of operation
-------------------
The server side of a session is in exactly one :class:`State`. RFC 1939 names three:
AUTHORIZATION (after the greeting, until the client has identified itself), TRANSACTION
(the maildrop is open and locked) and UPDATE (after QUIT in TRANSACTION: deletions are
applied, then the connection closes). Pigeon adds the waits between them: ``GREETING``
(the application owes the greeting), ``SASL`` (inside an AUTH exchange, RFC 5034),
``TLS`` (``+OK`` sent to STLS, waiting for the handshake, RFC 2595 §4) and ``CLOSED``.

Two tables decide everything:

* :data:`COMMAND_STATES` says in which states each command keyword is allowed. Any other
  state gets ``-ERR`` from :func:`sequence_error` and the state does not change.
* :data:`TRANSITIONS` says which state a command leads to once the application has
  answered it, by the kind of answer (``+`` for ``+OK``, ``-`` for ``-ERR``, ``c`` for a SASL
  challenge). A missing entry means "stay".
"""

from __future__ import annotations

import enum

from pigeon.protocol.pop3._response import Response

__all__ = ["COMMAND_STATES", "TRANSITIONS", "State", "next_state", "sequence_error"]


class State(enum.Enum):
    """Server-side session states."""

    GREETING = "greeting"  # connected; the application owes the +OK greeting
    AUTHORIZATION = "authorization"  # RFC 1939 §4
    SASL = "sasl"  # inside an AUTH exchange (RFC 5034 §4)
    TLS = "tls"  # +OK sent to STLS; waiting for the handshake (RFC 2595 §4)
    TRANSACTION = "transaction"  # RFC 1939 §5: the maildrop is locked
    UPDATE = "update"  # RFC 1939 §6: QUIT received in TRANSACTION, deletions being applied
    CLOSED = "closed"


_AUTHZ = frozenset({State.AUTHORIZATION})
_TRANS = frozenset({State.TRANSACTION})
_BOTH = _AUTHZ | _TRANS

COMMAND_STATES: dict[str, frozenset[State]] = {
    "USER": _AUTHZ,  # RFC 1939 §7
    "PASS": _AUTHZ,  # RFC 1939 §7
    "APOP": _AUTHZ,  # RFC 1939 §7 (refused: Pigeon stores no plaintext secrets)
    "AUTH": _AUTHZ,  # RFC 5034 §4
    "STLS": _AUTHZ,  # RFC 2595 §4
    "CAPA": _BOTH,  # RFC 2449 §5
    "QUIT": _BOTH,  # RFC 1939 §4, §6
    "STAT": _TRANS,  # RFC 1939 §5
    "LIST": _TRANS,
    "RETR": _TRANS,
    "DELE": _TRANS,
    "NOOP": _TRANS,
    "RSET": _TRANS,
    "TOP": _TRANS,  # RFC 1939 §7
    "UIDL": _TRANS,  # RFC 1939 §7
}

# (state, keyword, answer kind) -> new state; kind "+" (+OK), "-" (-ERR), "c" (challenge).
TRANSITIONS: dict[tuple[State, str, str], State] = {
    (State.GREETING, "GREETING", "+"): State.AUTHORIZATION,
    (State.GREETING, "GREETING", "-"): State.CLOSED,
    (State.AUTHORIZATION, "PASS", "+"): State.TRANSACTION,
    (State.AUTHORIZATION, "AUTH", "+"): State.TRANSACTION,
    (State.AUTHORIZATION, "AUTH", "c"): State.SASL,
    (State.SASL, "AUTH", "+"): State.TRANSACTION,
    (State.SASL, "AUTH", "-"): State.AUTHORIZATION,
    (State.SASL, "AUTH", "c"): State.SASL,
    (State.AUTHORIZATION, "STLS", "+"): State.TLS,
    (State.AUTHORIZATION, "QUIT", "+"): State.CLOSED,
    (State.AUTHORIZATION, "QUIT", "-"): State.CLOSED,
    (State.UPDATE, "QUIT", "+"): State.CLOSED,
    (State.UPDATE, "QUIT", "-"): State.CLOSED,
}


def next_state(state: State, keyword: str, kind: str) -> State:
    """Return the state after an answer of ``kind`` to ``keyword`` sent in ``state``.

    Args:
        state: the state when the command was received.
        keyword: the command keyword, or ``GREETING``.
        kind: ``"+"`` (+OK), ``"-"`` (-ERR) or ``"c"`` (a SASL challenge).

    Returns:
        The new state.
    """
    return TRANSITIONS.get((state, keyword, kind), state)


def sequence_error(state: State, keyword: str) -> Response:
    """The ``-ERR`` for ``keyword`` received in a state where it is not allowed.

    Args:
        state: the current state.
        keyword: an upper-case keyword of :data:`COMMAND_STATES`.

    Returns:
        A ``-ERR`` response naming what the client must do first.
    """
    if state is State.AUTHORIZATION:
        return Response(False, f"{keyword} not valid before authentication")
    if keyword == "STLS":
        return Response(False, "STLS only in the AUTHORIZATION state")  # RFC 2595 §4
    return Response(False, "already authenticated")
