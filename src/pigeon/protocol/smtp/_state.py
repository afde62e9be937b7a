"""The SMTP server state table (RFC 5321 §3, §4.1.4; RFC 3030; RFC 3207; RFC 4954).

Theory of operation
-------------------
The server side of a session is in exactly one :class:`State`. Two tables decide everything:

* :data:`COMMAND_SEQUENCE` says, for each command verb, in which states it is allowed. A
  command in any other state gets the ``503 5.5.1`` (or ``554 5.5.1``) reply from
  :func:`sequence_error`, and the state does not change.
* :data:`TRANSITIONS` says which state a command leads to once the application has
  answered it, by the class of its reply (``2`` positive completion, ``3`` intermediate, ``x``
  any other reply). A missing entry means "stay".

Sending ``421`` moves any state to ``CLOSED``.
"""

from __future__ import annotations

import enum

from pigeon.mail.reply import Reply

__all__ = ["COMMAND_SEQUENCE", "TRANSITIONS", "State", "next_state", "sequence_error"]


class State(enum.Enum):
    """Server-side session states."""

    GREETING = "greeting"  # connected; the application owes the 220 greeting
    READY = "ready"  # greeted by us, no HELO/EHLO yet (or reset by STARTTLS)
    IDLE = "idle"  # HELO/EHLO done, no transaction
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # receiving DATA content
    BDAT = "bdat"  # inside a BDAT transaction, between chunks
    AUTH = "auth"  # inside a SASL exchange
    TLS = "tls"  # 220 sent to STARTTLS; waiting for the handshake
    CLOSED = "closed"


_ANY = frozenset(State) - {State.GREETING, State.DATA, State.AUTH, State.TLS, State.CLOSED}
_GREETED = frozenset({State.IDLE, State.MAIL, State.RCPT, State.BDAT})

COMMAND_SEQUENCE: dict[str, frozenset[State]] = {
    "HELO": _ANY,
    "EHLO": _ANY,
    "MAIL": frozenset({State.IDLE}),
    "RCPT": frozenset({State.MAIL, State.RCPT}),
    "DATA": frozenset({State.RCPT}),
    "BDAT": frozenset({State.RCPT, State.BDAT}),
    "RSET": _ANY,
    "NOOP": _ANY,
    "QUIT": _ANY,
    "VRFY": _ANY,
    "EXPN": _ANY,
    "HELP": _ANY,
    "STARTTLS": frozenset({State.IDLE}),
    "AUTH": frozenset({State.IDLE}),
}

# (state, verb, reply class) -> new state; reply class "2", "3" or "x" (anything else).
TRANSITIONS: dict[tuple[State, str, str], State] = {}
for _s in _ANY:
    TRANSITIONS[(_s, "HELO", "2")] = State.IDLE
    TRANSITIONS[(_s, "EHLO", "2")] = State.IDLE
    TRANSITIONS[(_s, "RSET", "2")] = State.IDLE if _s in _GREETED else State.READY
    TRANSITIONS[(_s, "QUIT", "2")] = State.CLOSED
TRANSITIONS[(State.GREETING, "GREETING", "2")] = State.READY
TRANSITIONS[(State.GREETING, "GREETING", "x")] = State.CLOSED
TRANSITIONS[(State.IDLE, "MAIL", "2")] = State.MAIL
TRANSITIONS[(State.MAIL, "RCPT", "2")] = State.RCPT
TRANSITIONS[(State.RCPT, "RCPT", "2")] = State.RCPT
TRANSITIONS[(State.RCPT, "DATA", "3")] = State.DATA
TRANSITIONS[(State.DATA, "END", "2")] = State.IDLE
TRANSITIONS[(State.DATA, "END", "x")] = State.IDLE
TRANSITIONS[(State.BDAT, "CHUNK", "2")] = State.BDAT
TRANSITIONS[(State.BDAT, "CHUNK", "x")] = State.IDLE
TRANSITIONS[(State.BDAT, "END", "2")] = State.IDLE
TRANSITIONS[(State.BDAT, "END", "x")] = State.IDLE
TRANSITIONS[(State.IDLE, "STARTTLS", "2")] = State.TLS
TRANSITIONS[(State.IDLE, "AUTH", "3")] = State.AUTH
TRANSITIONS[(State.AUTH, "AUTH", "3")] = State.AUTH
TRANSITIONS[(State.AUTH, "AUTH", "2")] = State.IDLE
TRANSITIONS[(State.AUTH, "AUTH", "x")] = State.IDLE


def next_state(state: State, verb: str, reply: Reply) -> State:
    """Return the state after ``reply`` was sent in answer to ``verb`` in ``state``.

    Args:
        state: the state when the command was received.
        verb: the command verb, or ``GREETING``, ``END`` (end of message content) or
            ``CHUNK`` (end of a BDAT chunk that is not the last).
        reply: the reply sent.

    Returns:
        The new state (``CLOSED`` for any 421).
    """
    if reply.code == 421:
        return State.CLOSED
    cls = str(reply.code // 100)
    if cls not in ("2", "3"):
        cls = "x"
    return TRANSITIONS.get((state, verb, cls), state)


def sequence_error(state: State, verb: str) -> Reply:
    """The reply for ``verb`` received in a state where it is not allowed (RFC 5321 §4.3.2)."""
    if state is State.READY and verb in ("MAIL", "RCPT", "DATA", "BDAT", "AUTH", "STARTTLS"):
        return Reply(503, "5.5.1", "Error: send HELO/EHLO first")
    if verb == "MAIL":
        return Reply(503, "5.5.1", "Error: nested MAIL command")
    if verb == "RCPT":
        return Reply(503, "5.5.1", "Error: need MAIL command")
    if verb in ("DATA", "BDAT"):
        if state is State.MAIL:
            return Reply(554, "5.5.1", "Error: no valid recipients")
        if state is State.BDAT and verb == "DATA":
            return Reply(503, "5.5.1", "Error: DATA not allowed after BDAT")
        if state is State.IDLE:
            return Reply(503, "5.5.1", "Error: need MAIL command")
        return Reply(503, "5.5.1", "Error: need RCPT command")
    if verb in ("AUTH", "STARTTLS"):
        return Reply(503, "5.5.1", f"Error: {verb} not allowed during a mail transaction")
    return Reply(503, "5.5.1", "Error: bad sequence of commands")
