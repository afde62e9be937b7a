"""RFC 5321 §4.1.2 addresses: domains, mailboxes, reverse-paths and forward-paths.

API CONTRACT (implemented below):

- ``Domain(name)``: ``name`` is the canonical ASCII form: lower-case A-labels (IDNA 2008 /
  UTS 46 via the ``idna`` package) for a host name, or an address literal kept in brackets
  with canonical text (``[192.0.2.1]``, ``[IPv6:2001:db8::1]`` compressed lower-case).
  ``Domain.unicode`` gives the U-label form. ``Domain.is_literal``.
- ``Mailbox(local_part, domain)``: ``local_part`` is the *decoded* local part (quoted-string
  quotes and quoted-pairs removed); ``str(mailbox)`` re-quotes it when it is not a dot-string.
  ``Mailbox.is_utf8`` when the local part or the domain's U-label form is non-ASCII.
- ``ReversePath(mailbox)``: ``mailbox is None`` for the null reverse-path ``<>``.
- ``ForwardPath(mailbox)``: the bare ``<postmaster>`` is
  ``ForwardPath(Mailbox("postmaster", None))`` with ``domain=None``
  (only allowed for the local part ``postmaster``, case-insensitive).
- ``parse_reverse_path(text, *, smtputf8) / parse_forward_path(text, *, smtputf8)``:
  ``text`` is the whole ``<...>`` token including angle brackets; source routes are
  accepted and dropped (RFC 5321 Appendix C). Raise :class:`AddressError` with a ``reply``.
- ``split_path(arg)``: split a MAIL/RCPT argument (after ``FROM:``/``TO:``) into the
  ``<...>`` token and the parameter text, honouring quoted strings.

Grammar notes (RFC 5321 §4.1.2, extended by RFC 6531 §3.3 when ``smtputf8`` is true):

- Local part: Dot-string (atext, no leading, trailing or doubled dots) or Quoted-string
  (qtextSMTP and quoted-pairSMTP). With SMTPUTF8 any non-ASCII character counts as atext
  and qtext. Bang paths and percent hacks are plain dot-strings here; relay policy decides
  what they mean. An empty local part (also ``""``) is refused.
- Domain: sub-domain labels ``Let-dig [Ldh-str]``. Pigeon also accepts ``_`` in labels,
  as real-world host names carry it. No trailing dot. Address literals: IPv4 and
  ``IPv6:``; General-address-literal tags are refused (Pigeon supports none).
- Control characters (C0, DEL, C1) and unpaired surrogates are never allowed, not even
  quoted.
- Limits (RFC 5321 §4.5.3.1): local part 64 octets as written (UTF-8 octets, quotes
  included), domain 255 octets and label 63 octets in A-label form, and the whole path
  token as given (angle brackets and source route included) 256 octets.

Mailbox lookup policy: :meth:`Mailbox.canonical_key` lower-cases the local part, so Pigeon
treats local parts case-insensitively when routing, while ``Mailbox`` equality keeps the
case exactly (RFC 5321 §2.4 says local parts may be case-sensitive).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

from pigeon.mail.reply import Reply, ReplyError

__all__ = [
    "AddressError",
    "Domain",
    "ForwardPath",
    "Mailbox",
    "ReversePath",
    "parse_domain",
    "parse_forward_path",
    "parse_mailbox",
    "parse_reverse_path",
    "split_path",
]

# RFC 5321 §4.5.3.1.1-3 limits, in octets.
MAX_LOCAL_PART_OCTETS = 64
MAX_DOMAIN_OCTETS = 255
MAX_LABEL_OCTETS = 63
MAX_PATH_OCTETS = 256

# Text longer than this is never a domain, whatever IDNA mapping would do to it.
_MAX_DOMAIN_TEXT = 1024

# atext (RFC 5322 §3.2.3, used by RFC 5321 §4.1.2); RFC 6531 §3.3 adds UTF8-non-ascii.
# The non-ASCII range is only reached in SMTPUTF8 mode (plain mode refuses non-ASCII
# earlier), and control characters and surrogates are refused before any of these run.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_DOT_STRING_RE = re.compile(rf"{_ATEXT}++(?:\.{_ATEXT}++)*+")
# Quoted-string: qtextSMTP = %d32-33 / %d35-91 / %d93-126, quoted-pairSMTP = "\" %d32-126.
_QUOTED_RE = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*+)"')
_QUOTED_PAIR_RE = re.compile(r"\\([\x20-\x7e])")
_NEEDS_ESCAPE_RE = re.compile(r'(["\\])')

# Never allowed anywhere: C0 controls (NUL, TAB, CR, LF...), DEL, C1 controls, surrogates.
_BAD_CHAR_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

# A sub-domain label once lower-cased (Let-dig [Ldh-str], plus "_").
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?")
_IPV4_RE = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_IPV6_CONTENT_RE = re.compile(r"[0-9A-Fa-f:.]+")
# General-address-literal = Standardized-tag ":" 1*dcontent (RFC 5321 §4.1.3).
_GENERAL_LITERAL_RE = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")

# The path token: "<", then characters other than '"' and '>' or whole quoted strings
# (quoted-pairs honoured), then ">". Possessive, so a failed match never backtracks.
_PATH_TOKEN_RE = re.compile(r'<(?:[^">]|"(?:[^"\\]|\\.)*+")*+>', re.DOTALL)


class AddressError(ReplyError):
    """An address that does not follow RFC 5321 §4.1.2; ``reply`` is the SMTP answer.

    Args:
        reply: the reply to send; a string becomes ``Reply(501, "5.1.3", text)``.
    """

    def __init__(self, reply: Reply | str) -> None:
        if isinstance(reply, str):
            reply = Reply(501, "5.1.3", reply)
        super().__init__(reply)


def _path_syntax_error(text: str) -> AddressError:
    return AddressError(Reply(501, "5.5.4", text))


_NON_ASCII_REPLY = Reply(553, "5.6.7", "Non-ASCII addresses require SMTPUTF8")


@dataclass(frozen=True, slots=True)
class Domain:
    """A domain or address literal in canonical ASCII form (see module docstring).

    Attributes:
        name: lower-case A-label host name, or an address literal in brackets
            (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``).
    """

    name: str

    @property
    def is_literal(self) -> bool:
        """True for an address literal such as ``[192.0.2.1]``."""
        return self.name.startswith("[")

    @property
    def unicode(self) -> str:
        """The U-label form of the name (equal to ``name`` for ASCII names and literals).

        ``xn--`` labels are decoded (RFC 5891 §5); when one does not decode, the whole
        ``name`` is returned unchanged.
        """
        if "xn--" not in self.name or self.is_literal:
            return self.name
        try:
            return ".".join(
                idna.ulabel(label) if label.startswith("xn--") else label
                for label in self.name.split(".")
            )
        except (idna.IDNAError, UnicodeError, ValueError):
            return self.name

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Mailbox:
    """``local-part@domain`` (RFC 5321 §4.1.2); ``domain`` is None only for bare postmaster.

    Attributes:
        local_part: the decoded local part (no quotes, no quoted-pair backslashes); its
            case is kept (RFC 5321 §2.4), so equality is exact on it.
        domain: the domain, or None for the bare ``postmaster`` (RFC 5321 §4.1.1.3).
    """

    local_part: str
    domain: Domain | None

    @property
    def is_utf8(self) -> bool:
        """True when the address needs SMTPUTF8 (non-ASCII local part or U-label domain).

        RFC 6531 §3.2. The domain counts when its :attr:`Domain.unicode` form is non-ASCII.
        """
        if not self.local_part.isascii():
            return True
        return self.domain is not None and not self.domain.unicode.isascii()

    @property
    def local_part_text(self) -> str:
        """The local part as written in a path: dot-string when possible, else quoted.

        Quoting escapes only ``"`` and ``\\`` (RFC 5321 §4.1.2 quoted-pairSMTP).
        """
        if _DOT_STRING_RE.fullmatch(self.local_part):
            return self.local_part
        return '"' + _NEEDS_ESCAPE_RE.sub(r"\\\1", self.local_part) + '"'

    def canonical_key(self) -> str:
        """The key Pigeon uses to look a mailbox up when routing.

        Pigeon's mailbox lookup policy: the local part is compared case-insensitively,
        the domain by its canonical ASCII name.

        Returns:
            ``local_part.lower() + "@" + domain.name``, or the lower-cased local part
            alone for the bare postmaster.
        """
        if self.domain is None:
            return self.local_part.lower()
        return f"{self.local_part.lower()}@{self.domain.name}"

    def __str__(self) -> str:
        if self.domain is None:
            return self.local_part_text
        return f"{self.local_part_text}@{self.domain.name}"


@dataclass(frozen=True, slots=True)
class ReversePath:
    """MAIL FROM's argument; ``mailbox`` None is the null reverse-path ``<>``."""

    mailbox: Mailbox | None

    @property
    def is_null(self) -> bool:
        """True for the null reverse-path ``<>`` (RFC 5321 §4.5.5)."""
        return self.mailbox is None

    def __str__(self) -> str:
        return "<>" if self.mailbox is None else f"<{self.mailbox}>"


@dataclass(frozen=True, slots=True)
class ForwardPath:
    """RCPT TO's argument (RFC 5321 §4.1.1.3)."""

    mailbox: Mailbox

    def __str__(self) -> str:
        return f"<{self.mailbox}>"


# -- checks shared by the parsers ------------------------------------------------------------


def _check_characters(text: str, smtputf8: bool) -> None:
    bad = _BAD_CHAR_RE.search(text)
    if bad is not None:
        if "\ud800" <= bad.group() <= "\udfff":
            raise AddressError("Invalid UTF-8 in address")
        raise AddressError("Control characters not allowed in address")
    if not smtputf8 and not text.isascii():
        raise AddressError(_NON_ASCII_REPLY)


# -- domains -----------------------------------------------------------------------------------


def _parse_literal(text: str) -> Domain:
    if not text.endswith("]") or text.count("[") != 1 or text.count("]") != 1:
        raise AddressError("Invalid address literal")
    content = text[1:-1]
    m = _IPV4_RE.fullmatch(content)
    if m is not None:
        octets = [int(part) for part in m.groups()]
        if max(octets) > 255:
            raise AddressError("Invalid IPv4 address literal")
        return Domain("[" + ".".join(str(octet) for octet in octets) + "]")
    if content[:5].lower() == "ipv6:":
        if not _IPV6_CONTENT_RE.fullmatch(content, 5):
            raise AddressError("Invalid IPv6 address literal")
        try:
            address = ipaddress.IPv6Address(content[5:])
        except ValueError:
            raise AddressError("Invalid IPv6 address literal") from None
        mapped = address.ipv4_mapped
        canonical = f"::ffff:{mapped}" if mapped is not None else address.compressed
        return Domain(f"[IPv6:{canonical}]")
    if _GENERAL_LITERAL_RE.fullmatch(content):
        raise AddressError("Address literal type not supported")
    raise AddressError("Invalid address literal")


def _to_ascii_labels(text: str) -> list[str]:
    """UTS 46 mapping, then U-labels to A-labels; ASCII labels are lower-cased only."""
    try:
        mapped = idna.uts46_remap(text, std3_rules=False)
    except (idna.IDNAError, UnicodeError, ValueError):
        raise AddressError("Invalid internationalized domain name") from None
    labels = mapped.split(".")
    for i, label in enumerate(labels):
        if label.isascii():
            labels[i] = label.lower()
            continue
        try:
            labels[i] = idna.alabel(label).decode("ascii")
        except (idna.IDNAError, UnicodeError, ValueError):
            try:
                too_long = len(label.encode("punycode")) + 4 > MAX_LABEL_OCTETS
            except UnicodeError:
                too_long = False
            if too_long:
                raise AddressError(
                    f"Domain label too long (max {MAX_LABEL_OCTETS} octets)"
                ) from None
            raise AddressError("Invalid internationalized domain name") from None
    return labels


def _parse_domain(text: str, *, allow_literal: bool = True) -> Domain:
    """Parse a domain whose characters were already checked."""
    if not text:
        raise AddressError("Domain name required")
    if text.startswith("["):
        if not allow_literal:
            raise AddressError("Invalid domain name")
        return _parse_literal(text)
    if len(text) > _MAX_DOMAIN_TEXT:
        raise AddressError(f"Domain too long (max {MAX_DOMAIN_OCTETS} octets)")
    labels = text.lower().split(".") if text.isascii() else _to_ascii_labels(text)
    if len(labels) > 1 and not labels[-1]:
        raise AddressError("Trailing dot not allowed in domain")
    for label in labels:
        if not label:
            raise AddressError("Invalid domain name")
        if len(label) > MAX_LABEL_OCTETS:
            raise AddressError(f"Domain label too long (max {MAX_LABEL_OCTETS} octets)")
        if not _LABEL_RE.fullmatch(label):
            raise AddressError("Invalid domain name")
    name = ".".join(labels)
    if len(name) > MAX_DOMAIN_OCTETS:
        raise AddressError(f"Domain too long (max {MAX_DOMAIN_OCTETS} octets)")
    return Domain(name)


def parse_domain(text: str, *, smtputf8: bool = False) -> Domain:
    """Parse a domain or address literal (RFC 5321 §4.1.2 Domain / address-literal).

    Host names are lower-cased; with ``smtputf8`` U-labels are mapped (UTS 46) and
    converted to A-labels (RFC 5891). Address literals are canonicalised (IPv4 without
    leading zeros, IPv6 compressed lower-case).

    Args:
        text: the domain text, without ``@``.
        smtputf8: allow U-labels (RFC 6531 §3.2).

    Returns:
        The canonical :class:`Domain`.

    Raises:
        AddressError: 501 5.1.3 for bad syntax or a limit (label 63 octets, domain 255
            octets, RFC 5321 §4.5.3.1.2), 553 5.6.7 for non-ASCII text without SMTPUTF8.
    """
    _check_characters(text, smtputf8)
    return _parse_domain(text)


# -- mailboxes ---------------------------------------------------------------------------------


def _parse_local_part(text: str) -> tuple[str, str | None]:
    """Split ``text`` into (decoded local part, domain text or None when no ``@``)."""
    if text.startswith('"'):
        m = _QUOTED_RE.match(text)
        if m is None:
            raise AddressError("Invalid quoted local part")
        raw = m.group(0)
        local = _QUOTED_PAIR_RE.sub(r"\1", m.group(1))
        rest = text[m.end() :]
        if rest and not rest.startswith("@"):
            raise AddressError("Invalid local part")
        domain_text = rest[1:] if rest else None
    else:
        raw, at, domain_text_or_empty = text.partition("@")
        domain_text = domain_text_or_empty if at else None
        if raw and not _DOT_STRING_RE.fullmatch(raw):
            raise AddressError("Invalid local part")
        local = raw
    if not local:
        raise AddressError("Empty local part")
    if len(raw.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
        raise AddressError(f"Local part too long (max {MAX_LOCAL_PART_OCTETS} octets)")
    return local, domain_text


def _parse_mailbox(text: str) -> Mailbox:
    local, domain_text = _parse_local_part(text)
    if not domain_text:
        raise AddressError("Domain name required")
    return Mailbox(local, _parse_domain(domain_text))


def parse_mailbox(text: str, *, smtputf8: bool = False) -> Mailbox:
    """Parse ``local-part@domain`` without angle brackets (RFC 5321 §4.1.2 Mailbox).

    Args:
        text: the mailbox text.
        smtputf8: allow UTF-8 local parts and U-label domains (RFC 6531 §3.3).

    Returns:
        The :class:`Mailbox`, local part decoded, domain canonical.

    Raises:
        AddressError: 501 5.1.3 for bad syntax, a missing domain or a limit (local part
            64 octets, RFC 5321 §4.5.3.1.1), 553 5.6.7 for non-ASCII without SMTPUTF8.
    """
    _check_characters(text, smtputf8)
    return _parse_mailbox(text)


# -- paths -------------------------------------------------------------------------------------


def _path_content(text: str, smtputf8: bool) -> str:
    """Check a ``<...>`` token and return what is between the brackets."""
    _check_characters(text, smtputf8)
    if len(text) < 2 or not text.startswith("<") or not text.endswith(">"):
        raise _path_syntax_error("Syntax error: address must be enclosed in <>")
    if len(text.encode("utf-8")) > MAX_PATH_OCTETS:
        raise AddressError(f"Path too long (max {MAX_PATH_OCTETS} octets)")
    return text[1:-1]


def _drop_source_route(content: str) -> str:
    """Validate and remove ``A-d-l ":"`` (RFC 5321 §4.1.2, Appendix C)."""
    if not content.startswith("@"):
        return content
    route, colon, rest = content.partition(":")
    if not colon:
        if content.count("@") == 1:
            raise AddressError("Empty local part")
        raise AddressError("Malformed source route")
    for at_domain in route.split(","):
        if not at_domain.startswith("@"):
            raise AddressError("Malformed source route")
        try:
            _parse_domain(at_domain[1:], allow_literal=False)
        except AddressError:
            raise AddressError("Malformed source route") from None
    if rest.startswith("@"):
        raise AddressError("Malformed source route")
    return rest


def parse_reverse_path(text: str, *, smtputf8: bool = False) -> ReversePath:
    """Parse MAIL FROM's ``<>`` or ``<[A-d-l ":"] Mailbox>`` (RFC 5321 §4.1.2).

    A source route is checked and dropped (RFC 5321 Appendix C).

    Args:
        text: the whole path token, angle brackets included (see :func:`split_path`).
        smtputf8: the MAIL command carried SMTPUTF8 (RFC 6531 §3.4).

    Returns:
        The :class:`ReversePath`; ``mailbox`` is None for ``<>``.

    Raises:
        AddressError: 501 5.5.4 when the brackets are missing, 501 5.1.3 for bad syntax
            or a limit (path 256 octets, RFC 5321 §4.5.3.1.3), 553 5.6.7 for non-ASCII
            without SMTPUTF8.
    """
    content = _path_content(text, smtputf8)
    if not content:
        return ReversePath(None)
    return ReversePath(_parse_mailbox(_drop_source_route(content)))


def parse_forward_path(text: str, *, smtputf8: bool = False) -> ForwardPath:
    """Parse RCPT TO's ``<Postmaster>`` or ``<[A-d-l ":"] Mailbox>`` (RFC 5321 §4.1.1.3).

    The bare postmaster (any case, no domain) gives ``Mailbox("postmaster", None)``.
    A source route is checked and dropped (RFC 5321 Appendix C).

    Args:
        text: the whole path token, angle brackets included (see :func:`split_path`).
        smtputf8: the transaction uses SMTPUTF8 (RFC 6531 §3.4).

    Returns:
        The :class:`ForwardPath`.

    Raises:
        AddressError: 501 5.5.4 when the brackets are missing, 501 5.1.3 for ``<>``, bad
            syntax or a limit (path 256 octets, RFC 5321 §4.5.3.1.3), 553 5.6.7 for
            non-ASCII without SMTPUTF8.
    """
    content = _path_content(text, smtputf8)
    if not content:
        raise AddressError("Null forward-path not allowed")
    if content.lower() == "postmaster":
        return ForwardPath(Mailbox("postmaster", None))
    return ForwardPath(_parse_mailbox(_drop_source_route(content)))


def split_path(arg: str) -> tuple[str, str]:
    """Split a MAIL/RCPT argument into the path token and the parameter text.

    ``arg`` is what follows ``MAIL FROM:`` or ``RCPT TO:`` (RFC 5321 §4.1.1.2-3). One
    space before ``<`` is tolerated (a common client bug). The path runs from ``<`` to
    the first ``>`` outside a quoted string (quoted-pairs honoured) and must be followed
    by the end or a space.

    Args:
        arg: the command argument after the colon.

    Returns:
        (``<...>`` token, parameter text with its leading spaces removed).

    Raises:
        AddressError: 501 5.5.4 when ``<`` or ``>`` is missing or the path is followed by
            something other than a space.
    """
    start = 1 if arg.startswith(" <") else 0
    if not arg.startswith("<", start):
        raise _path_syntax_error("Syntax error: expected <address>")
    m = _PATH_TOKEN_RE.match(arg, start)
    if m is None:
        raise _path_syntax_error("Syntax error: missing '>' after address")
    rest = arg[m.end() :]
    if rest and not rest.startswith(" "):
        raise _path_syntax_error("Syntax error in parameters")
    return m.group(0), rest.lstrip(" ")
