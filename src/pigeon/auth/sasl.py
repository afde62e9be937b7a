"""SASL server mechanisms as sans-I/O exchanges: PLAIN (RFC 4616) and LOGIN.

Theory of operation
-------------------
A :class:`SaslExchange` is one authentication attempt. The protocol layer (SMTP AUTH,
RFC 4954; POP3 AUTH, RFC 5034) decodes the base64 of the wire and hands the raw octets to
:meth:`SaslExchange.start` (the initial response, or None when the client sent none) and
then to :meth:`SaslExchange.respond` for every answer to a challenge. Each call returns a
:class:`SaslStep` with exactly one of:

* ``challenge``: send it (base64-encoded by the protocol layer) and wait for a response;
* ``credentials``: the exchange is complete; check them (see
  :class:`pigeon.auth.service.Authenticator`);
* ``error``: the client's message is malformed; send the reply and end the exchange.

The exchange never looks anything up, never touches a clock, and never sees the wire
encoding, so the same object serves SMTP and POP3.

LOGIN (draft-murchison-sasl-login) asks ``Username:`` then ``Password:``; a client may
send the user name as the initial response (``AUTH LOGIN dXNlcg==``), and the exchange
then asks only for the password.
"""

from __future__ import annotations

from dataclasses import dataclass

from pigeon.mail.reply import Reply

__all__ = ["MAX_FIELD_OCTETS", "MECHANISMS", "Credentials", "SaslError", "SaslExchange",
           "SaslStep"]

#: Mechanisms this server offers, in order of preference.
MECHANISMS: tuple[str, ...] = ("PLAIN", "LOGIN")

#: RFC 4616 §2: authzid, authcid and passwd are each at most 255 octets.
MAX_FIELD_OCTETS = 255

_MALFORMED = Reply(501, "5.5.2", "Error: malformed authentication response")


class SaslError(ValueError):
    """An exchange was used out of order (a programming error, not a client error)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a client proved it knows.

    Attributes:
        authcid: the authentication identity (the user name, e.g. ``alice@example.com``).
        password: the password.
        authzid: the authorization identity asked for ("" when none: act as ``authcid``).
    """

    authcid: str
    password: str
    authzid: str = ""

    def __repr__(self) -> str:  # never print a password into a log
        return f"Credentials(authcid={self.authcid!r}, authzid={self.authzid!r})"


@dataclass(frozen=True, slots=True)
class SaslStep:
    """The outcome of one step of an exchange; exactly one attribute is set.

    Attributes:
        challenge: octets to send to the client (the protocol layer base64-encodes them).
        credentials: the exchange is complete.
        error: the reply that ends a malformed exchange.
    """

    challenge: bytes | None = None
    credentials: Credentials | None = None
    error: Reply | None = None

    def __post_init__(self) -> None:
        count = sum(x is not None for x in (self.challenge, self.credentials, self.error))
        if count != 1:
            raise ValueError("a SaslStep has exactly one of challenge, credentials, error")


def _text(data: bytes) -> str | None:
    """Decode one field: UTF-8, no NUL, at most :data:`MAX_FIELD_OCTETS` octets."""
    if len(data) > MAX_FIELD_OCTETS or b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _plain(message: bytes) -> SaslStep:
    """Parse ``[authzid] NUL authcid NUL passwd`` (RFC 4616 §2)."""
    parts = message.split(b"\x00")
    if len(parts) != 3:
        return SaslStep(error=_MALFORMED)
    authzid, authcid, passwd = (_text(p) for p in parts)
    if authzid is None or authcid is None or passwd is None or not authcid or not passwd:
        return SaslStep(error=_MALFORMED)
    return SaslStep(credentials=Credentials(authcid=authcid, password=passwd, authzid=authzid))


class SaslExchange:
    """One server-side SASL exchange.

    Args:
        mechanism: one of :data:`MECHANISMS` (case-insensitive).

    Attributes:
        mechanism: the mechanism name, upper-case.
        done: the exchange has produced credentials or an error.

    Raises:
        ValueError: the mechanism is not supported.
    """

    def __init__(self, mechanism: str) -> None:
        name = mechanism.upper()
        if name not in MECHANISMS:
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}")
        self.mechanism = name
        self.done = False
        self._started = False
        self._username: str | None = None

    def start(self, initial_response: bytes | None) -> SaslStep:
        """Begin the exchange.

        Args:
            initial_response: the decoded initial response; ``b""`` when the client sent
                ``=`` (an empty response, RFC 4954 §4); None when it sent none.

        Returns:
            The first step.

        Raises:
            SaslError: the exchange was already started.
        """
        if self._started:
            raise SaslError("exchange already started")
        self._started = True
        if self.mechanism == "PLAIN":
            if initial_response is None:
                return SaslStep(challenge=b"")
            return self._finish(_plain(initial_response))
        if initial_response is None:
            return SaslStep(challenge=b"Username:")
        return self._login_username(initial_response)

    def respond(self, data: bytes) -> SaslStep:
        """Take the client's decoded answer to the last challenge.

        Args:
            data: the decoded response octets.

        Returns:
            The next step.

        Raises:
            SaslError: the exchange is not waiting for a response.
        """
        if not self._started or self.done:
            raise SaslError("exchange is not waiting for a response")
        if self.mechanism == "PLAIN":
            return self._finish(_plain(data))
        if self._username is None:
            return self._login_username(data)
        password = _text(data)
        if not password:
            return self._finish(SaslStep(error=_MALFORMED))
        return self._finish(SaslStep(credentials=Credentials(self._username, password)))

    def _login_username(self, data: bytes) -> SaslStep:
        username = _text(data)
        if not username:
            return self._finish(SaslStep(error=_MALFORMED))
        self._username = username
        return SaslStep(challenge=b"Password:")

    def _finish(self, step: SaslStep) -> SaslStep:
        self.done = True
        return step
