"""Pigeon's configuration: one TOML file, turned into typed and validated settings.

Theory of operation: :func:`load_settings` reads the TOML file with :mod:`tomllib` and hands
the resulting tables to pydantic models in strict mode (TOML already has real types, so
``max_recipients = "100"`` is an error, not a silent conversion). Two kinds of values get
friendlier spellings through their own parsers: sizes (:func:`parse_size`, e.g. ``"35MiB"``)
and durations (:func:`parse_duration`, e.g. ``"5m"``). Every problem in the file is reported
at once, one line each, with the dotted key path (``limits.max_recipients``,
``listener[1].address``) so the operator can find it.

With no file at all, the defaults are a working zero-config setup: unprivileged listeners on
127.0.0.1 and the data under ``./pigeon-data``.

Relative paths written in a file (``server.data_dir``, ``aliases.file``, ``log.file``) are
taken relative to the directory that holds the file, so a config works the same from any
working directory. The built-in default ``./pigeon-data`` is relative to the working
directory.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

import idna
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pigeon.mail.address import AddressError, parse_mailbox

__all__ = [
    "CONFIG_ENV_VAR",
    "AliasSettings",
    "AuthSettings",
    "ConfigError",
    "DeliverySettings",
    "DnsSettings",
    "DomainSettings",
    "GiB",
    "KiB",
    "LimitSettings",
    "ListenerKind",
    "ListenerSettings",
    "LogSettings",
    "MailboxSettings",
    "MiB",
    "Pop3Settings",
    "QueueSettings",
    "RelaySettings",
    "ServerSettings",
    "Settings",
    "SmtpSettings",
    "TimeoutSettings",
    "TlsSettings",
    "default_hostname",
    "example_config",
    "load_settings",
    "parse_duration",
    "parse_host_port",
    "parse_size",
    "to_a_labels",
]

#: Environment variable naming the config file when none is given explicitly.
CONFIG_ENV_VAR = "PIGEON_CONFIG"

#: Binary size units, in bytes.
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


class ConfigError(Exception):
    """The configuration cannot be used; the message says where and why, one line per problem.

    Example message::

        config error in /etc/pigeon.toml: limits.max_recipients: Input should be a valid
        integer (got "abc")

    (one line in the message; wrapped here).
    """


# --------------------------------------------------------------------------- value parsers

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
}
_SIZE_RE = re.compile(r"^\s*(\d{1,30}(?:\.\d{1,30})?)\s*([A-Za-z]*)\s*$", re.ASCII)

_DURATION_UNITS: dict[str, int] = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(
    r"^\s*(\d{1,30}(?:\.\d{1,30})?|\.\d{1,30})\s*([A-Za-z]*)\s*$", re.ASCII
)


def parse_size(value: object) -> int:
    """Turn a configured size into a number of bytes.

    Accepts an integer (bytes) or a string: a number with an optional unit ``B``, ``KiB``,
    ``MiB``, ``GiB`` (powers of 1024) or ``KB``, ``MB``, ``GB`` (powers of 1000). Units are
    case-insensitive and may be separated from the number by spaces: ``"35MiB"``,
    ``"10 KiB"``, ``"512B"``, ``"100"``. A fraction is allowed when the result is a whole
    number of bytes (``"1.5KiB"`` is 1536 bytes).

    Args:
        value: the raw value from the TOML file.

    Returns:
        The size in bytes (may be negative only if an integer input was negative; range
        checks belong to the field).

    Raises:
        ValueError: the value is not a size.
    """
    if isinstance(value, bool):
        raise ValueError("size must be a number of bytes or a string like \"35MiB\"")
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        raise ValueError("size must be a number of bytes or a string like \"35MiB\"")
    match = _SIZE_RE.match(value)
    if match is None:
        raise ValueError("invalid size: use bytes or a number with a unit, e.g. \"35MiB\"")
    number, unit = match.groups()
    multiplier = _SIZE_UNITS.get(unit.lower())
    if multiplier is None:
        raise ValueError(
            f"unknown size unit {unit!r}: use B, KiB, MiB, GiB (1024) or KB, MB, GB (1000)"
        )
    amount = Fraction(number) * multiplier
    if amount.denominator != 1:
        raise ValueError("size is not a whole number of bytes")
    return int(amount)


def parse_duration(value: object) -> float:
    """Turn a configured duration into seconds.

    Accepts a number (seconds) or a string: a number with an optional unit ``s``, ``m``,
    ``h`` or ``d``, e.g. ``"30s"``, ``"5m"``, ``"4h"``, ``"5d"``, ``"1.5h"``, ``"300"``.

    Args:
        value: the raw value from the TOML file.

    Returns:
        The duration in seconds.

    Raises:
        ValueError: the value is not a finite duration.
    """
    if isinstance(value, bool):
        raise ValueError("duration must be a number of seconds or a string like \"5m\"")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(
                "invalid duration: use seconds or a number with a unit s, m, h or d, "
                "e.g. \"30s\", \"5m\", \"1.5h\""
            )
        number, unit = match.groups()
        multiplier = _DURATION_UNITS.get(unit.lower())
        if multiplier is None:
            raise ValueError(f"unknown duration unit {unit!r}: use s, m, h or d")
        seconds = float(number) * multiplier
    else:
        raise ValueError("duration must be a number of seconds or a string like \"5m\"")
    if not math.isfinite(seconds):
        raise ValueError("duration must be finite")
    return seconds


def parse_host_port(address: str) -> tuple[str, int]:
    """Split a listener address ``host:port`` or ``[v6]:port`` into host and port.

    Args:
        address: e.g. ``"127.0.0.1:25"``, ``"mail.example.org:587"``, ``"[::1]:25"``.

    Returns:
        ``(host, port)``; an IPv6 host is returned without brackets (``"::1"``).

    Raises:
        ValueError: no port, an empty host, a port outside 0..65535, an IPv6 address
            without brackets or an invalid address inside brackets.
    """
    text = address.strip()
    if text.startswith("["):
        close = text.find("]")
        if close == -1 or text[close + 1 : close + 2] != ":":
            raise ValueError("expected \"[ipv6]:port\", e.g. \"[::1]:25\"")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"{host!r} is not an IPv6 address") from exc
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError("expected \"host:port\", e.g. \"0.0.0.0:25\"")
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets, e.g. \"[::1]:25\"")
    if not host:
        raise ValueError("the host is empty; use 0.0.0.0 or [::] for all addresses")
    if not host.isprintable() or any(ch.isspace() for ch in host):
        raise ValueError("the host has spaces or control characters")
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"port {port_text!r} is not a number")
    digits = port_text.lstrip("0") or "0"
    if len(digits) > 5 or int(digits) > 65535:
        shown = digits if len(digits) <= 10 else digits[:10] + "..."
        raise ValueError(f"port {shown} is outside 0..65535")
    port = int(digits)
    return host, port


def to_a_labels(name: str) -> str:
    """Lower-case a domain name and encode it to IDNA A-labels (RFC 5890 §2.3.2.1).

    Args:
        name: a domain, possibly with U-labels (``"bücher.example"``) or a trailing dot.

    Returns:
        The A-label form, e.g. ``"xn--bcher-kva.example"``.

    Raises:
        ValueError: the name is empty or not a valid IDNA domain name.
    """
    text = name.strip().rstrip(".")
    if not text:
        raise ValueError("domain name is empty")
    try:
        return idna.encode(text, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise ValueError(f"{name!r} is not a valid domain name ({exc})") from exc


def default_hostname() -> str:
    """Return this machine's fully qualified name, or ``"localhost"`` if it has none.

    ``socket.getfqdn()`` is used when it contains a dot, is not ``localhost.localdomain``
    and is a valid domain name.

    Returns:
        A lower-case A-label host name.
    """
    fqdn = socket.getfqdn()
    if "." not in fqdn or fqdn.lower() == "localhost.localdomain":
        return "localhost"
    try:
        return to_a_labels(fqdn)
    except ValueError:
        return "localhost"


def _dedupe(names: list[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _relative_to_config(path: Path, info: ValidationInfo) -> Path:
    path = path.expanduser()
    base = info.context.get("base_dir") if isinstance(info.context, dict) else None
    if base is not None and not path.is_absolute():
        return Path(base) / path
    return path


Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
ConfigPath = Annotated[Path, Field(strict=False), AfterValidator(_relative_to_config)]
DomainName = Annotated[str, AfterValidator(to_a_labels)]

ListenerKind = Literal["smtp", "submission", "submissions", "pop3", "pop3s"]


# --------------------------------------------------------------------------- the settings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ServerSettings(_Section):
    """Identity and storage of this server.

    Attributes:
        hostname: the name used in the greeting, EHLO reply and Received headers
            (RFC 5321 §4.1.1.1, §4.4); lower-case A-labels.
        data_dir: where the queue, spool and mailboxes live.
        sync: how new spool and Maildir files are made durable: ``"fsync"`` (each file,
            then its directory), ``"syncfs"`` (one syncfs(2) of the file system for many
            files at once; Linux 5.17+), or ``"auto"``: syncfs where available, else fsync.
            See ``pigeon.storage.durability``.
    """

    hostname: DomainName = Field(default_factory=default_hostname)
    data_dir: ConfigPath = Path("./pigeon-data")
    sync: Literal["auto", "fsync", "syncfs"] = "auto"

    @field_validator("sync")
    @classmethod
    def _sync_available(cls, value: str) -> str:
        if value == "syncfs":
            from pigeon.storage.durability import syncfs_available

            if not syncfs_available():
                raise ValueError("syncfs needs Linux 5.17 or later; use \"auto\" or \"fsync\"")
        return value


class DomainSettings(_Section):
    """The domains this server delivers to local mailboxes (RFC 5321 §2.3.5).

    Attributes:
        local: lower-case A-label domain names, without duplicates. Default: the server
            hostname and ``localhost``.
    """

    local: list[DomainName] = Field(
        default_factory=lambda: _dedupe([default_hostname(), "localhost"])
    )

    @field_validator("local")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        return _dedupe(value)


class ListenerSettings(_Section):
    """One listening socket.

    Attributes:
        kind: ``smtp`` (MTA, RFC 5321), ``submission`` (MSA with STARTTLS, RFC 6409),
            ``submissions`` (MSA over implicit TLS, RFC 8314 §3.3), ``pop3`` (RFC 1939 with
            STLS, RFC 2595) or ``pop3s`` (POP3 over implicit TLS, RFC 8314 §3.3).
        address: ``"host:port"`` or ``"[ipv6]:port"``; port 0 picks a free port.
    """

    kind: ListenerKind
    address: str

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        parse_host_port(value)
        return value.strip()

    @property
    def host(self) -> str:
        """The host part of :attr:`address`, without IPv6 brackets."""
        return parse_host_port(self.address)[0]

    @property
    def port(self) -> int:
        """The port part of :attr:`address` (0..65535)."""
        return parse_host_port(self.address)[1]


def _default_listeners() -> list[ListenerSettings]:
    return [
        ListenerSettings(kind="smtp", address="127.0.0.1:1025"),
        ListenerSettings(kind="submission", address="127.0.0.1:1587"),
        ListenerSettings(kind="submissions", address="127.0.0.1:1465"),
        ListenerSettings(kind="pop3", address="127.0.0.1:1110"),
    ]


class LimitSettings(_Section):
    """Bounds on what one client may make the server do.

    Attributes:
        max_message_size: bytes, advertised with SIZE (RFC 1870); 35 MiB by default.
        max_recipients: forward-paths per transaction; RFC 5321 §4.5.3.1.8 asks for at
            least 100.
        max_connections: concurrent connections over all listeners.
        max_connections_per_ip: concurrent connections from one client address.
        max_hops: Received headers before a message is considered looping
            (RFC 5321 §6.3 suggests at least 100).
        max_errors: protocol errors in one session before it is closed with 421.
        max_line_length: bytes in a text line including CRLF; RFC 5321 §4.5.3.1.6 sets
            the minimum at 1000.
        max_command_length: bytes in a command line including CRLF; RFC 5321 §4.5.3.1.4
            sets the minimum at 512.
        connections_per_minute_per_ip: new connections one client address may open per
            minute, over all listeners; beyond it ``421 4.7.0``. 0 is no limit.
        messages_per_minute_per_ip: messages (MAIL commands) one client address may start
            per minute; beyond it ``450 4.7.1``. 0 is no limit.
        messages_per_minute_per_user: messages one authenticated user may start per minute;
            beyond it ``450 4.7.1``. 0 is no limit.
        max_unknown_recipients: recipients refused as unknown (``550 5.1.1``) in one session
            before it is closed with ``421`` (directory-harvest defence).
    """

    max_message_size: Size = Field(default=35 * MiB, ge=1)
    max_recipients: int = Field(default=100, ge=1)
    max_connections: int = Field(default=1000, ge=1)
    max_connections_per_ip: int = Field(default=20, ge=1)
    max_hops: int = Field(default=100, ge=1)
    max_errors: int = Field(default=20, ge=1)
    max_line_length: int = Field(default=1000, ge=1000)
    max_command_length: int = Field(default=512, ge=512)
    connections_per_minute_per_ip: int = Field(default=600, ge=0)
    messages_per_minute_per_ip: int = Field(default=0, ge=0)
    messages_per_minute_per_user: int = Field(default=300, ge=0)
    max_unknown_recipients: int = Field(default=20, ge=1)


class TimeoutSettings(_Section):
    """How long the server waits, in seconds.

    Attributes:
        command: wait for the next command; RFC 5321 §4.5.3.2.7 asks for at least 5 minutes.
        data: wait for the next block of content during DATA or BDAT.
        shutdown_grace: on shutdown, time given to running sessions and deliveries to finish.
    """

    command: Duration = Field(default=300.0, gt=0)
    data: Duration = Field(default=600.0, gt=0)
    shutdown_grace: Duration = Field(default=30.0, ge=0)


class SmtpSettings(_Section):
    """SMTP server behaviour.

    Attributes:
        greet_pause: seconds to wait before the greeting; a client that talks first is
            rejected (RFC 5321 §4.3.1 says the client waits for the greeting). 0 is off.
        vrfy: ``ambiguous`` answers ``252`` (RFC 5321 §3.5.3) or ``disabled`` answers ``502``.
        expn: answer EXPN (RFC 5321 §3.5.2) for mailing lists; off by default.
        banner: text after the hostname in the ``220`` greeting.
    """

    greet_pause: Duration = Field(default=0.0, ge=0)
    vrfy: Literal["ambiguous", "disabled"] = "ambiguous"
    expn: bool = False
    banner: str = "ESMTP Pigeon"

    @field_validator("banner")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if any(ch in value for ch in "\r\n") or not value.isprintable():
            raise ValueError("banner must be one line of printable text")
        return value


class Pop3Settings(_Section):
    """POP3 server behaviour (listener kinds ``pop3`` and ``pop3s``).

    Attributes:
        autologout: seconds of client silence after which a session is closed without
            a response and without removing anything (RFC 1939 §3: at least 10 minutes).
    """

    autologout: Duration = Field(default=600.0, ge=600)


class MailboxSettings(_Section):
    """A local mailbox.

    Attributes:
        address: ``local-part@domain``; the domain is lower-cased and IDNA-encoded and must
            be one of ``domains.local``.
        quota: bytes the mailbox may hold, or None for no limit.
    """

    address: str
    quota: Size | None = Field(default=None, ge=1)

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        text = value.strip()
        local, sep, domain = text.rpartition("@")
        if not sep or not domain:
            raise ValueError("expected a mailbox \"local-part@domain\"")
        if not local:  # "@domain": a catch-all for the domain
            return f"@{to_a_labels(domain)}"
        try:
            mailbox = parse_mailbox(text, smtputf8=True)
        except AddressError as exc:
            raise ValueError(f"not a valid mailbox: {exc.reply.text}") from None
        return str(mailbox)

    @property
    def domain(self) -> str:
        """The A-label domain of :attr:`address`."""
        return self.address.rpartition("@")[2]


class QueueSettings(_Section):
    """Retry policy of the store-and-forward queue (RFC 5321 §4.5.4.1), in seconds.

    Attributes:
        retry_min: delay before the first retry (RFC 5321 §4.5.4.1 asks for at least 30 min
            in general; 5 min is common for the first retry).
        retry_max: the backoff never grows beyond this.
        max_lifetime: after this a deferred recipient is failed and a DSN is sent
            (RFC 5321 §4.5.4.1 suggests at least 4-5 days).
        delay_warning: send a "delayed" DSN (RFC 3464 §2.3.3) after this; 0 turns it off.
        delivery_concurrency: deliveries running at the same time.
    """

    retry_min: Duration = Field(default=300.0, gt=0)
    retry_max: Duration = Field(default=4000.0, gt=0)
    max_lifetime: Duration = Field(default=5 * 86400.0, gt=0)
    delay_warning: Duration = Field(default=4 * 3600.0, ge=0)
    delivery_concurrency: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> QueueSettings:
        if self.retry_max < self.retry_min:
            raise ValueError(
                f"retry_max ({self.retry_max:g}s) is less than retry_min ({self.retry_min:g}s)"
            )
        return self


class AliasSettings(_Section):
    """Aliases (RFC 5321 §3.9.1).

    Attributes:
        file: an aliases file, or None for none.
    """

    file: ConfigPath | None = None


class LogSettings(_Section):
    """Logging.

    Attributes:
        level: the lowest level written.
        file: also append to this file (stderr always gets the log).
    """

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: ConfigPath | None = None


class TlsSettings(_Section):
    """The server certificate for STARTTLS (RFC 3207) and implicit TLS (RFC 8314).

    Attributes:
        cert: PEM certificate chain (the server certificate first), or None.
        key: PEM private key of ``cert``, or None. With neither, a self-signed certificate
            for ``server.hostname`` is made at first start under ``<data_dir>/tls/``.
            Both files are read again on SIGHUP.
    """

    cert: ConfigPath | None = None
    key: ConfigPath | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> TlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: set both, or neither for a "
                             "self-signed certificate")
        return self


class AuthSettings(_Section):
    """SMTP AUTH (RFC 4954) and the defences around password checks.

    Attributes:
        on_smtp: offer AUTH on ``smtp`` listeners too (after STARTTLS).
        allow_plaintext_on_loopback: offer AUTH without TLS to clients on 127.0.0.0/8 and
            ::1 (otherwise AUTH without TLS is refused with ``538 5.7.11``).
        sender_login_match: an authenticated user may only use reverse-paths they own
            (their address, ``+tag`` forms of it and their aliases), else ``553 5.7.1``.
        failures_before_delay: failed logins from one client address before every further
            failure reply is delayed by ``failure_delay``.
        failure_delay: the delay, in seconds.
        max_failures_per_ip: failed logins from one client address within
            ``failure_window`` before that address is refused (``421 4.7.0``) for
            ``block_time``.
        failure_window: seconds over which failures are counted.
        block_time: seconds a client address stays blocked.
        account_lockout_failures: failed logins for one account within
            ``failure_window`` (from any address) before the account is locked for
            ``account_lockout_time`` (``454 4.7.0``); 0 never locks.
        account_lockout_time: seconds an account stays locked.
    """

    on_smtp: bool = False
    allow_plaintext_on_loopback: bool = False
    sender_login_match: bool = True
    failures_before_delay: int = Field(default=3, ge=0)
    failure_delay: Duration = Field(default=2.0, ge=0)
    max_failures_per_ip: int = Field(default=10, ge=1)
    failure_window: Duration = Field(default=900.0, gt=0)
    block_time: Duration = Field(default=900.0, gt=0)
    account_lockout_failures: int = Field(default=30, ge=0)
    account_lockout_time: Duration = Field(default=900.0, gt=0)


def _network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP network (e.g. \"192.0.2.0/24\", \"2001:db8::/32\", "
            "\"127.0.0.1\")"
        ) from None


class RelaySettings(_Section):
    """Who may send mail to non-local domains (never an open relay).

    Attributes:
        trusted_networks: client networks allowed to relay without AUTH, e.g.
            ``["192.0.2.0/24"]``. Empty by default: even loopback must be listed.
        host: the smarthost ``"host:port"`` (or ``"host"`` for port 587, ``"[v6]:port"``)
            through which all non-local mail goes, or None to deliver by MX.
        tls: how to reach the smarthost: ``starttls`` (RFC 3207), ``implicit`` (RFC 8314
            §3.3) or ``none``; AUTH is only ever sent over TLS unless this is ``none``.
        username: the SMTP AUTH (PLAIN or LOGIN) user at the smarthost, or None for no
            AUTH.
        password_file: a file whose first line is the password (keep it mode 0600).
        verify: check the smarthost's certificate and name.
    """

    trusted_networks: list[Annotated[str, AfterValidator(_network)]] = Field(
        default_factory=list
    )
    host: str | None = None
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    username: str | None = None
    password_file: ConfigPath | None = None
    verify: bool = False

    @field_validator("host")
    @classmethod
    def _check_relay_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        if ":" not in text or (text.startswith("[") and text.endswith("]")):
            text = f"{text}:587"
        host, _ = parse_host_port(text)
        if not host.startswith("[") and ":" not in host:
            to_a_labels(host)
        return text

    @model_validator(mode="after")
    def _password_with_user(self) -> RelaySettings:
        if self.username is not None and self.password_file is None:
            raise ValueError("username needs password_file (a file holding the password)")
        return self


def _nameserver(value: str) -> str:
    text = value.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        host, port = parse_host_port(text)
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{value!r} is not a name server address (e.g. \"192.0.2.53\", "
            "\"127.0.0.1:5353\", \"[::1]:53\")"
        ) from None
    if port == 0:
        raise ValueError(f"{value!r}: port 0 is not a name server port")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DnsSettings(_Section):
    """How outbound delivery resolves MX and address records.

    Attributes:
        nameservers: resolver addresses, ``"ip"`` or ``"ip:port"`` (``"[v6]:port"``);
            empty means the system resolver (``/etc/resolv.conf``).
        timeout: seconds one lookup may take over all servers and retries; a lookup that
            times out defers delivery.
    """

    nameservers: list[Annotated[str, AfterValidator(_nameserver)]] = Field(
        default_factory=list
    )
    timeout: Duration = Field(default=10.0, gt=0)


def _ip_of_family(version: int) -> Callable[[str | None], str | None]:
    def check(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            address = ipaddress.ip_address(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv{version} address") from None
        if address.version != version:
            raise ValueError(f"{value!r} is not an IPv{version} address")
        return str(address)

    return check


class DeliverySettings(_Section):
    """Outbound delivery over SMTP (the MTA client, RFC 5321 §5 and §4.5.3.2).

    Attributes:
        smtp_port: the port of remote MX hosts (25; tests use another).
        helo_name: the name in EHLO; default: ``server.hostname``.
        source_ipv4: the local IPv4 address to connect from, or None for any.
        source_ipv6: the local IPv6 address to connect from, or None for any.
        connections_per_destination: connections open at once to one destination (a
            domain, or a route's next hop).
        max_connections: outbound connections open at once in total.
        connect_timeout: seconds to open a connection (and finish a TLS handshake).
        command_timeout: seconds to wait for a reply to MAIL or RCPT; the other limits of
            RFC 5321 §4.5.3.2 scale with it (greeting 1x, DATA 0.4x, each content block
            0.6x, end of data 2x).
        idle_time: seconds an idle connection is kept for the next message to the same
            destination.
        max_messages_per_connection: messages one connection carries before it is closed.
        max_recipients_per_transaction: RCPT commands in one transaction (RFC 5321
            §4.5.3.1.8 makes servers take at least 100); more go in further transactions.
        tls: TLS towards MX hosts: ``opportunistic`` (STARTTLS when offered) or ``none``.
    """

    smtp_port: int = Field(default=25, ge=1, le=65535)
    helo_name: DomainName | None = None
    source_ipv4: Annotated[str | None, AfterValidator(_ip_of_family(4))] = None
    source_ipv6: Annotated[str | None, AfterValidator(_ip_of_family(6))] = None
    connections_per_destination: int = Field(default=20, ge=1)
    max_connections: int = Field(default=100, ge=1)
    connect_timeout: Duration = Field(default=30.0, gt=0)
    command_timeout: Duration = Field(default=300.0, gt=0)
    idle_time: Duration = Field(default=5.0, ge=0)
    max_messages_per_connection: int = Field(default=100, ge=1)
    max_recipients_per_transaction: int = Field(default=100, ge=1)
    tls: Literal["opportunistic", "none"] = "opportunistic"


def _check_routes(value: dict[str, str]) -> dict[str, str]:
    from pigeon.routing.transport import RouteError, parse_route, route_key

    out: dict[str, str] = {}
    problems: list[str] = []
    for key, route in value.items():
        try:
            parse_route(route)
            out[route_key(key)] = route.strip()
        except RouteError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return out


class Settings(_Section):
    """Everything Pigeon is configured with; the root of the TOML file.

    Build one with :func:`load_settings`; ``Settings()`` is the zero-config default.
    """

    server: ServerSettings = Field(default_factory=ServerSettings)
    domains: DomainSettings = Field(default_factory=DomainSettings)
    listener: list[ListenerSettings] = Field(default_factory=_default_listeners)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    smtp: SmtpSettings = Field(default_factory=SmtpSettings)
    pop3: Pop3Settings = Field(default_factory=Pop3Settings)
    mailbox: list[MailboxSettings] = Field(default_factory=list)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    aliases: AliasSettings = Field(default_factory=AliasSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    dns: DnsSettings = Field(default_factory=DnsSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    routes: Annotated[dict[str, str], AfterValidator(_check_routes)] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if "local" not in self.domains.model_fields_set:
            self.domains.local = _dedupe([self.server.hostname, "localhost"])
        problems: list[str] = []
        seen_addresses: dict[tuple[str, int], int] = {}
        for index, listener in enumerate(self.listener):
            host, port = parse_host_port(listener.address)
            if port == 0:
                continue
            key = (host.lower(), port)
            if key in seen_addresses:
                problems.append(
                    f"listener[{index}].address: {listener.address} is already used by "
                    f"listener[{seen_addresses[key]}]"
                )
            seen_addresses[key] = index
        seen_mailboxes: dict[str, int] = {}
        for index, mailbox in enumerate(self.mailbox):
            if mailbox.domain not in self.domains.local:
                problems.append(
                    f"mailbox[{index}].address: the domain {mailbox.domain!r} is not in "
                    f"domains.local"
                )
            folded = mailbox.address.lower()
            if folded in seen_mailboxes:
                problems.append(
                    f"mailbox[{index}].address: {mailbox.address} is already defined by "
                    f"mailbox[{seen_mailboxes[folded]}]"
                )
            seen_mailboxes[folded] = index
        if problems:
            raise ValueError("\n".join(problems))
        return self


# --------------------------------------------------------------------------- loading


def load_settings(path: Path | None) -> Settings:
    """Load and validate the configuration.

    Args:
        path: the TOML file; None means ``$PIGEON_CONFIG`` if set and non-empty, else the
            zero-config defaults.

    Returns:
        The validated settings. Relative paths in the file are made relative to the
        file's directory.

    Raises:
        ConfigError: the file is missing or unreadable, is not valid TOML, or has unknown
            keys or bad values; the message has one line per problem.
    """
    if path is None:
        env = os.environ.get(CONFIG_ENV_VAR, "")
        if not env:
            try:
                return Settings()
            except ValidationError as exc:  # pragma: no cover - defaults are valid
                raise ConfigError(_format_errors("built-in defaults", exc)) from exc
        path = Path(env)
    where = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"config error in {where}: file not found") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config error in {where}: is a directory, not a file") from exc
    except OSError as exc:
        raise ConfigError(f"config error in {where}: cannot read: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config error in {where}: not UTF-8 text (byte {exc.start})"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error in {where}: invalid TOML: {exc}") from exc
    base_dir = path.expanduser().absolute().parent
    try:
        return Settings.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_format_errors(where, exc)) from exc


def _format_errors(where: str, exc: ValidationError) -> str:
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        key = _dotted(loc)
        if error["type"] == "extra_forbidden":
            problem = f"unknown key {key!r}"
            hint = _suggest(loc)
            if hint:
                problem += f" (did you mean {hint!r}?)"
            lines.append(problem)
            continue
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if not key:
            # Checks across sections already name their keys, one per line.
            lines.extend(message.splitlines())
            continue
        value = error.get("input")
        if error["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        elif error["type"] in ("model_type", "model_attributes_type", "dict_type"):
            lines.append(f"{key}: must be a table (got {_show(value)})")
        elif error["type"] == "list_type":
            lines.append(f"{key}: must be an array (got {_show(value)})")
        elif isinstance(value, dict):
            # A check over a whole table: the message names the keys.
            lines.append(f"{key}: {message}")
        else:
            lines.append(f"{key}: {message} (got {_show(value)})")
    return "\n".join(f"config error in {where}: {line}" for line in lines)


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _show(value: object, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # nan/inf and other values json refuses
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _suggest(loc: tuple[int | str, ...]) -> str | None:
    """Return the dotted key the operator probably meant for an unknown key at ``loc``."""
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    unknown = loc[-1]
    if not isinstance(unknown, str):
        return None
    close = difflib.get_close_matches(unknown, list(model.model_fields), n=1, cutoff=0.7)
    if not close:
        return None
    return _dotted((*loc[:-1], close[0]))


# --------------------------------------------------------------------------- example


def example_config() -> str:
    """Return a complete, annotated production configuration in TOML.

    Every key is present with a comment; the result loads with :func:`load_settings`.

    Returns:
        The TOML text.
    """
    return _EXAMPLE


_EXAMPLE = """\
# Pigeon configuration (TOML). Check a file with: pigeon config check -c FILE
#
# Sizes are bytes or a number with a unit: B, KiB, MiB, GiB (1024) or KB, MB, GB (1000).
# Durations are seconds or a number with a unit: s, m, h, d (e.g. "30s", "5m", "1.5h").
# Relative paths are relative to the directory of this file.

[server]
# Name used in the SMTP greeting, the EHLO reply and Received headers (RFC 5321 §4.1.1.1).
# It should be the name the MX record points at, with matching A/AAAA and PTR records.
hostname = "mail.example.org"
# Queue, spool, mailboxes and the self-signed certificate live here.
data_dir = "/var/lib/pigeon"
# How new spool and Maildir files reach stable storage: "fsync" (each file and its
# directory), "syncfs" (one syncfs(2) for many files at once, Linux 5.17+), or "auto"
# (syncfs where available). syncfs also flushes other pending writes on the same file
# system: give data_dir its own file system if other programs write a lot there.
sync = "auto"

[domains]
# Mail for these domains is delivered to local mailboxes; everything else is relayed
# (only for authenticated submission clients; Pigeon is never an open relay).
local = ["example.org", "mail.example.org"]

# Listeners. kind is one of:
#   smtp         MTA: mail from other servers (port 25, STARTTLS offered)
#   submission   MSA: mail from your users, AUTH after STARTTLS (ports 587 and 2525)
#   submissions  MSA over implicit TLS (port 465, RFC 8314)
#   pop3         POP3 with STLS (port 110)
#   pop3s        POP3 over implicit TLS (port 995)
# address is "host:port" or "[ipv6]:port"; 0.0.0.0 listens on all IPv4 addresses and
# [::] on all IPv6 addresses.
[[listener]]
kind = "smtp"
address = "0.0.0.0:25"

[[listener]]
kind = "submission"
address = "0.0.0.0:587"

[[listener]]
# A second submission port for networks that block 587.
kind = "submission"
address = "0.0.0.0:2525"

[[listener]]
kind = "submissions"
address = "0.0.0.0:465"

[[listener]]
kind = "pop3"
address = "0.0.0.0:110"

[[listener]]
kind = "pop3s"
address = "0.0.0.0:995"

[limits]
# Largest message accepted, advertised with SIZE (RFC 1870).
max_message_size = "35MiB"
# Recipients per message (RFC 5321 §4.5.3.1.8: at least 100).
max_recipients = 100
# Connections at the same time, over all listeners and from one client address.
max_connections = 1000
max_connections_per_ip = 20
# Received headers before a message is treated as a mail loop (RFC 5321 §6.3).
max_hops = 100
# Protocol errors in one session before it is closed with 421.
max_errors = 20
# Longest text line and command line in bytes, CRLF included
# (RFC 5321 §4.5.3.1.6 and §4.5.3.1.4; these are the minimums).
max_line_length = 1000
max_command_length = 512
# New connections one client address may open per minute (0: no limit).
connections_per_minute_per_ip = 600
# Messages one client address, and one authenticated user, may start per minute; beyond
# it MAIL gets "450 4.7.1" (0: no limit).
messages_per_minute_per_ip = 0
messages_per_minute_per_user = 300
# Recipients refused as unknown in one session before it is closed (harvest defence).
max_unknown_recipients = 20

[timeouts]
# Wait for the next command (RFC 5321 §4.5.3.2.7: at least 5 minutes).
command = "5m"
# Wait for the next block of message content during DATA or BDAT.
data = "10m"
# On shutdown, time given to running sessions and deliveries.
shutdown_grace = "30s"

[smtp]
# Wait this long before the greeting and reject clients that talk first; "0s" is off.
greet_pause = "0s"
# VRFY: "ambiguous" answers 252 without saying whether a mailbox exists, "disabled" answers 502.
vrfy = "ambiguous"
# EXPN reveals list members; leave it off on the public Internet.
expn = false
# Text after the hostname in the 220 greeting.
banner = "ESMTP Pigeon"

[pop3]
# Close a silent session after this, without applying its deletions (RFC 1939 §3: at
# least 10 minutes).
autologout = "10m"

# Local mailboxes. The domain must be one of domains.local. quota is a size; leave it
# out for no limit.
[[mailbox]]
address = "postmaster@example.org"

[[mailbox]]
address = "alice@example.org"
quota = "2GiB"

[queue]
# Retries back off from retry_min up to retry_max between attempts.
retry_min = "5m"
retry_max = "4000s"
# A recipient still deferred after this fails and the sender gets a DSN (RFC 5321 §4.5.4.1).
max_lifetime = "5d"
# Send a "delayed" DSN after this; "0s" turns it off.
delay_warning = "4h"
# Deliveries running at the same time.
delivery_concurrency = 20

[aliases]
# Aliases file: one "name: target, target" per line. Leave it out for no aliases.
file = "/etc/pigeon/aliases"

[log]
# DEBUG, INFO, WARNING or ERROR.
level = "INFO"
# The log always goes to stderr; also append it to this file.
file = "/var/log/pigeon/pigeon.log"

[dns]
# Name servers for MX and address lookups, "ip" or "ip:port"; leave it out (or empty)
# for the system resolver.
nameservers = ["127.0.0.53"]
# Seconds one lookup may take; a lookup that times out defers the delivery.
timeout = "10s"

[delivery]
# Port of remote MX hosts.
smtp_port = 25
# Name said in EHLO; defaults to server.hostname.
helo_name = "mail.example.org"
# Local addresses to send from; leave them out to let the system choose.
source_ipv4 = "192.0.2.25"
source_ipv6 = "2001:db8::25"
# Connections open at once to one destination, and in total.
connections_per_destination = 20
max_connections = 100
# Time limits (RFC 5321 §4.5.3.2): connecting, and the reply to MAIL/RCPT (the other
# limits scale with it: DATA 2m, each block of content 3m, end of data 10m).
connect_timeout = "30s"
command_timeout = "5m"
# An idle connection is kept this long for the next message to the same destination,
# and carries at most this many messages.
idle_time = "5s"
max_messages_per_connection = 100
# RCPT commands per transaction; more recipients go in further transactions.
max_recipients_per_transaction = 100
# TLS towards MX hosts: "opportunistic" (STARTTLS when offered) or "none".
tls = "opportunistic"

[routes]
# Next hops by recipient domain, like Postfix's transport(5). Keys: "example.org" (that
# domain), ".example.org" (its subdomains) or "*" (everything else). Values:
# "smtp:host" (MX lookup for host), "smtp:[host]:port" or "smtp:[192.0.2.10]:2526" (no MX
# lookup), "smtp:" (MX lookup for the recipient's domain).
"partner.example" = "smtp:[192.0.2.10]:2526"
".internal.example.org" = "smtp:mx.internal.example.org"

[tls]
# Certificate chain and key in PEM, read again on SIGHUP. Leave both out to use a
# self-signed certificate for server.hostname, made at first start in <data_dir>/tls/.
cert = "/etc/pigeon/tls/fullchain.pem"
key = "/etc/pigeon/tls/privkey.pem"

[auth]
# Offer AUTH on the smtp listener too (after STARTTLS); users normally use 587/465.
on_smtp = false
# Offer AUTH without TLS to clients on 127.0.0.0/8 and ::1 (e.g. a local webmail).
allow_plaintext_on_loopback = false
# Authenticated users may only send as their own address, its +tag forms and aliases.
sender_login_match = true
# After this many failed logins from one address, each further failure waits failure_delay;
# at max_failures_per_ip within failure_window the address is blocked for block_time.
failures_before_delay = 3
failure_delay = "2s"
max_failures_per_ip = 10
failure_window = "15m"
block_time = "15m"
# Failed logins for one account (from any address) before it is locked; 0 never locks.
account_lockout_failures = 30
account_lockout_time = "15m"

[relay]
# Client networks that may relay without AUTH (e.g. your web servers). Empty by default:
# unauthenticated clients, even on loopback, only reach local domains.
trusted_networks = ["192.0.2.0/24", "2001:db8::/32"]
# Send all non-local mail through this smarthost ("host:port"; port 587 when left out)
# instead of delivering by MX, e.g. where port 25 is blocked. Leave host out to use MX.
host = "smtp.provider.example:587"
# "starttls", "implicit" (port 465) or "none"; AUTH is only sent over TLS unless "none".
tls = "starttls"
# SMTP AUTH at the smarthost; the password is the first line of password_file.
username = "mail@example.org"
password_file = "/etc/pigeon/relay-password"
# Check the smarthost's certificate against the system's trusted CAs.
verify = true
"""
