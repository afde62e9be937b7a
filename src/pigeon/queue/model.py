"""Queue records: a queued message (envelope + spool file) and its per-recipient rows.

These are the values the queue store keeps and the delivery agents receive. States follow
the field's words (STYLE.md §12): ``queued`` (due or waiting for its first attempt),
``deferred`` (a temporary failure; retried at ``next_attempt_at``), ``held`` (kept by an
administrator), and the final states ``delivered``, ``failed`` and ``expired``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "FINAL_STATES",
    "AttemptResult",
    "QueuedMessage",
    "QueuedRecipient",
    "RecipientState",
]

RecipientState = Literal["queued", "deferred", "held", "delivered", "failed", "expired"]
FINAL_STATES: frozenset[str] = frozenset({"delivered", "failed", "expired"})


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """The outcome of one delivery attempt for one recipient.

    Attributes:
        status: ``delivered`` (2xx / stored), ``deferred`` (4xx, try again later) or
            ``failed`` (5xx, permanent).
        code: the SMTP reply code (local delivery uses the code it would have sent).
        enhanced: the RFC 3463 enhanced status code text, e.g. ``"5.1.1"``.
        text: the reply text (single line).
        remote_host: the host that answered (``"mx.example.net[192.0.2.7]"``), or None for
            local delivery.
    """

    status: Literal["delivered", "deferred", "failed"]
    code: int
    enhanced: str
    text: str
    remote_host: str | None = None


@dataclass(slots=True)
class QueuedRecipient:
    """One forward-path of a queued message and its delivery state.

    Attributes:
        id: the store's row id (unique within the queue).
        address: the forward-path's mailbox as text, e.g. ``bob@example.com`` (after alias
            expansion: the final destination).
        original: the address the client gave in RCPT TO (before alias expansion), used as
            ``Original-Recipient`` when ``orcpt`` is None.
        orcpt: RFC 3461 ORCPT as ``(addr-type, address)``, or None.
        notify: RFC 3461 NOTIFY: None (default: FAILURE and DELAY), empty (NEVER), or a set
            of ``SUCCESS``/``FAILURE``/``DELAY``.
        route: ``local`` (MDA) or ``remote`` (SMTP client via routing).
        state: see the module docstring.
        attempts: attempts started so far.
        next_attempt_at: Unix time (seconds) of the next attempt.
        last_result: the latest attempt's result, or None.
        delay_notified: a "delayed" DSN was already sent for this recipient.
    """

    id: int
    address: str
    original: str
    orcpt: tuple[str, str] | None = None
    notify: frozenset[str] | None = None
    route: Literal["local", "remote"] = "local"
    state: RecipientState = "queued"
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_result: AttemptResult | None = None
    delay_notified: bool = False


@dataclass(slots=True)
class QueuedMessage:
    """A message in the queue: its envelope and where its content lies.

    Attributes:
        queue_id: Pigeon's queue id (also in the Received header ``id`` clause).
        reverse_path: the MAIL FROM mailbox as text, ``""`` for the null reverse-path.
        spool_path: the spool file: the content exactly as it will be delivered, with
            Pigeon's Received header first, CRLF line endings.
        size: the spool file size in bytes.
        arrival: Unix time the message was enqueued (seconds).
        body: BODY= (``7BIT``/``8BITMIME``/``BINARYMIME``) or None.
        smtputf8: the message needs SMTPUTF8 (RFC 6531).
        ret: RFC 3461 RET (``FULL``/``HDRS``) or None.
        envid: RFC 3461 ENVID (decoded) or None.
        client_address: the submitting client's IP address ("" if local).
        client_name: its HELO/EHLO name.
        authenticated_user: the SASL identity, or None.
        is_dsn: the message is a DSN Pigeon generated (never answered with another DSN).
        recipients: the recipient rows.
    """

    queue_id: str
    reverse_path: str
    spool_path: Path
    size: int
    arrival: float
    body: str | None = None
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None
    client_address: str = ""
    client_name: str = ""
    authenticated_user: str | None = None
    is_dsn: bool = False
    recipients: list[QueuedRecipient] = field(default_factory=list)
