"""SMTP replies as values: a three-digit code, an optional enhanced status code, text lines.

RFC 5321 §4.2 defines the reply (code, then text; multi-line replies use ``-`` after the code
on every line but the last). RFC 3463 defines enhanced status codes ``class.subject.detail``
and RFC 2034 says a server that advertises ENHANCEDSTATUSCODES puts one at the start of the
text of every reply except the greeting and the EHLO/HELO reply.

Every rejection in Pigeon is a :class:`Reply`; a rejection is never a bare string.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["EnhancedStatus", "Reply", "ReplyError"]

_ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")


@dataclass(frozen=True, slots=True)
class EnhancedStatus:
    """An RFC 3463 enhanced status code ``class.subject.detail``, e.g. ``5.1.1``.

    Attributes:
        class_: 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
        subject: 0..999 (RFC 3463 §3: 1 addressing, 2 mailbox, 3 mail system, 4 network,
            5 protocol, 6 content, 7 security).
        detail: 0..999.
    """

    class_: int
    subject: int
    detail: int

    def __post_init__(self) -> None:
        if self.class_ not in (2, 4, 5):
            raise ValueError(f"enhanced status class must be 2, 4 or 5, not {self.class_}")
        if not (0 <= self.subject <= 999 and 0 <= self.detail <= 999):
            raise ValueError("enhanced status subject and detail must be in 0..999")

    @classmethod
    def parse(cls, text: str) -> EnhancedStatus:
        """Parse ``"5.1.1"``.

        Raises:
            ValueError: the text is not an RFC 3463 status code.
        """
        m = _ENHANCED_RE.match(text)
        if m is None:
            raise ValueError(f"not an enhanced status code: {text!r}")
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3)))

    def __str__(self) -> str:
        return f"{self.class_}.{self.subject}.{self.detail}"


def _coerce_enhanced(value: EnhancedStatus | str | None) -> EnhancedStatus | None:
    if value is None or isinstance(value, EnhancedStatus):
        return value
    return EnhancedStatus.parse(value)


@dataclass(frozen=True, slots=True, init=False)
class Reply:
    """One SMTP reply (RFC 5321 §4.2).

    Build with ``Reply(250, "2.0.0", "Ok")`` or ``Reply(550, "5.1.1", "No such user")``;
    ``text`` may be a string or a sequence of lines (a multi-line reply). The enhanced code
    may be given as text or as an :class:`EnhancedStatus`, or left out (``None``): when the
    session uses ENHANCEDSTATUSCODES and the reply is not a greeting or EHLO reply, a missing
    code is filled with ``X.0.0`` at serialisation time (the go-smtp rule).

    Attributes:
        code: the three-digit reply code, 200..599.
        enhanced: the enhanced status code or ``None``.
        lines: the text lines (at least one; may be empty strings).
    """

    code: int
    enhanced: EnhancedStatus | None
    lines: tuple[str, ...] = field(default=("",))

    def __init__(
        self,
        code: int,
        enhanced: EnhancedStatus | str | None = None,
        text: str | tuple[str, ...] | list[str] = "",
    ) -> None:
        if not 200 <= code <= 599:
            raise ValueError(f"reply code out of range: {code}")
        enh = _coerce_enhanced(enhanced)
        if enh is not None and enh.class_ != code // 100 and code // 100 in (2, 4, 5):
            raise ValueError(f"enhanced status {enh} does not match reply code {code}")
        lines = (text,) if isinstance(text, str) else tuple(text)
        if not lines:
            lines = ("",)
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError("reply text may not contain CR or LF")
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "enhanced", enh)
        object.__setattr__(self, "lines", lines)

    @property
    def text(self) -> str:
        """The text lines joined with a space (for logs and DSN diagnostic codes)."""
        return " ".join(self.lines)

    @property
    def is_positive(self) -> bool:
        """True for 2xx and 3xx replies."""
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        """True for 4xx replies (RFC 5321 §4.2.1: transient negative completion)."""
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        """True for 5xx replies (RFC 5321 §4.2.1: permanent negative completion)."""
        return self.code >= 500

    def to_bytes(self, *, enhanced_codes: bool = True) -> bytes:
        """Serialise to wire form, each line ending in CRLF.

        Args:
            enhanced_codes: put the enhanced status code (or ``X.0.0`` when none was given)
                at the start of each line's text (RFC 2034 §4). Pass False for the greeting,
                the EHLO/HELO reply, and sessions without ENHANCEDSTATUSCODES.

        Returns:
            The reply as bytes, UTF-8 encoded.
        """
        prefix = ""
        if enhanced_codes and self.code // 100 in (2, 4, 5):
            enh = self.enhanced or EnhancedStatus(self.code // 100, 0, 0)
            prefix = f"{enh} "
        out = []
        last = len(self.lines) - 1
        for i, line in enumerate(self.lines):
            sep = " " if i == last else "-"
            body = f"{prefix}{line}" if (prefix or line) else ""
            out.append(f"{self.code}{sep}{body}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8")

    def __str__(self) -> str:
        enh = f" {self.enhanced}" if self.enhanced else ""
        return f"{self.code}{enh} {self.text}".rstrip()


class ReplyError(Exception):
    """An exception that carries the :class:`Reply` to send for it.

    Services raise it to refuse something; the session layer sends ``reply``.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply
