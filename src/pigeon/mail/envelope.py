"""The SMTP envelope (RFC 5321 §2.3.1): reverse-path, forward-paths and their parameters.

The envelope travels with the content but is separate from it: the content is the
RFC 5322 message, the envelope is what MAIL and RCPT said.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pigeon.mail.address import ForwardPath, ReversePath

__all__ = ["Body", "Envelope", "MailParams", "RcptParams", "Recipient", "Ret"]

Body = Literal["7BIT", "8BITMIME", "BINARYMIME"]
Ret = Literal["FULL", "HDRS"]
Notify = Literal["SUCCESS", "FAILURE", "DELAY"]


@dataclass(frozen=True, slots=True)
class MailParams:
    """ESMTP parameters of MAIL FROM.

    Attributes:
        size: the declared message size in bytes (RFC 1870), or None.
        body: BODY= value (RFC 6152 / RFC 3030), or None when not given.
        smtputf8: the SMTPUTF8 parameter was given (RFC 6531).
        ret: RET= (RFC 3461 §4.3), or None.
        envid: ENVID= decoded from xtext (RFC 3461 §4.4), or None.
        auth: AUTH= decoded from xtext (RFC 4954 §5), or None; ``"<>"`` stays ``"<>"``.
    """

    size: int | None = None
    body: Body | None = None
    smtputf8: bool = False
    ret: Ret | None = None
    envid: str | None = None
    auth: str | None = None


@dataclass(frozen=True, slots=True)
class RcptParams:
    """ESMTP parameters of RCPT TO (RFC 3461 §4.1, §4.2).

    Attributes:
        notify: None when NOTIFY was not given; an empty frozenset for NOTIFY=NEVER;
            else the set of ``SUCCESS``/``FAILURE``/``DELAY``.
        orcpt: (addr-type, decoded address) from ORCPT=, e.g. ``("rfc822", "bob@example.com")``.
    """

    notify: frozenset[str] | None = None
    orcpt: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Recipient:
    """One accepted forward-path with its RCPT parameters."""

    forward_path: ForwardPath
    params: RcptParams = field(default_factory=RcptParams)


@dataclass(slots=True)
class Envelope:
    """Everything MAIL, RCPT and the session said about one message.

    Attributes:
        reverse_path: MAIL FROM (may be the null reverse-path).
        mail_params: MAIL parameters.
        recipients: accepted forward-paths in RCPT order.
        client_address: the peer IP address as text ("" when the message was made locally).
        client_name: the HELO/EHLO argument ("" when none).
        protocol: the ``with`` keyword for the Received header (RFC 3848): SMTP, ESMTP,
            ESMTPS, ESMTPA, ESMTPSA, UTF8SMTP, UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA, or "local".
        authenticated_user: the SASL authorization identity, or None.
    """

    reverse_path: ReversePath
    mail_params: MailParams = field(default_factory=MailParams)
    recipients: list[Recipient] = field(default_factory=list)
    client_address: str = ""
    client_name: str = ""
    protocol: str = "ESMTP"
    authenticated_user: str | None = None
