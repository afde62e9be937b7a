"""Tests for pigeon.config: defaults, value parsers, error messages, paths, the example."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import get_args, get_origin

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from pigeon import config as config_module
from pigeon.config import (
    ConfigError,
    DomainSettings,
    ListenerSettings,
    MailboxSettings,
    Settings,
    default_hostname,
    example_config,
    load_settings,
    parse_duration,
    parse_host_port,
    parse_size,
    to_a_labels,
)


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIGEON_CONFIG", raising=False)


@pytest.fixture
def fqdn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the machine's name 'mx.example.net' so defaults do not depend on the host."""
    monkeypatch.setattr(config_module.socket, "getfqdn", lambda: "mx.example.net")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- defaults


def test_zero_config_defaults(fqdn: None) -> None:
    settings = load_settings(None)
    assert settings.server.hostname == "mx.example.net"
    assert settings.server.data_dir == Path("pigeon-data")
    assert settings.domains.local == ["mx.example.net", "localhost"]
    assert [(item.kind, item.host, item.port) for item in settings.listener] == [
        ("smtp", "127.0.0.1", 1025),
        ("submission", "127.0.0.1", 1587),
        ("submissions", "127.0.0.1", 1465),
        ("pop3", "127.0.0.1", 1110),
    ]
    assert settings.limits.model_dump() == {
        "max_message_size": 36700160,
        "max_recipients": 100,
        "max_connections": 1000,
        "max_connections_per_ip": 20,
        "max_hops": 100,
        "max_errors": 20,
        "max_line_length": 1000,
        "max_command_length": 512,
        "connections_per_minute_per_ip": 600,
        "messages_per_minute_per_ip": 0,
        "messages_per_minute_per_user": 300,
        "max_unknown_recipients": 20,
    }
    assert settings.timeouts.model_dump() == {
        "command": 300.0,
        "data": 600.0,
        "shutdown_grace": 30.0,
    }
    assert settings.smtp.model_dump() == {
        "greet_pause": 0.0,
        "vrfy": "ambiguous",
        "expn": False,
        "banner": "ESMTP Pigeon",
    }
    assert settings.mailbox == []
    assert settings.queue.model_dump() == {
        "retry_min": 300.0,
        "retry_max": 4000.0,
        "max_lifetime": 432000.0,
        "delay_warning": 14400.0,
        "delivery_concurrency": 20,
    }
    assert settings.aliases.file is None
    assert settings.log.level == "INFO"
    assert settings.log.file is None


@pytest.mark.parametrize(
    ("fqdn_value", "expected"),
    [
        ("mx.example.net", "mx.example.net"),
        ("MX.Example.NET", "mx.example.net"),
        ("vm", "localhost"),
        ("localhost.localdomain", "localhost"),
        ("LOCALHOST.LOCALDOMAIN", "localhost"),
        ("bad_name.example", "localhost"),
    ],
)
def test_default_hostname(
    monkeypatch: pytest.MonkeyPatch, fqdn_value: str, expected: str
) -> None:
    monkeypatch.setattr(config_module.socket, "getfqdn", lambda: fqdn_value)
    assert default_hostname() == expected


def test_local_domains_default_follows_configured_hostname(tmp_path: Path, fqdn: None) -> None:
    path = write(tmp_path / "p.toml", '[server]\nhostname = "Mail.Example.ORG."\n')
    settings = load_settings(path)
    assert settings.server.hostname == "mail.example.org"
    assert settings.domains.local == ["mail.example.org", "localhost"]


def test_local_domains_hostname_localhost_is_not_repeated(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", '[server]\nhostname = "localhost"\n')
    assert load_settings(path).domains.local == ["localhost"]


def test_local_domains_are_lowercased_idna_and_deduplicated(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.toml",
        '[domains]\nlocal = ["Example.ORG", "example.org.", "Bücher.example", "localhost"]\n',
    )
    assert load_settings(path).domains.local == [
        "example.org",
        "xn--bcher-kva.example",
        "localhost",
    ]


def test_domain_settings_alone_has_defaults(fqdn: None) -> None:
    assert DomainSettings().local == ["mx.example.net", "localhost"]


# --------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1048576, 1048576),
        ("100", 100),
        ("512B", 512),
        ("512 b", 512),
        ("10 KiB", 10240),
        ("10kib", 10240),
        ("35MiB", 36700160),
        ("1GiB", 1073741824),
        ("1.5KiB", 1536),
        ("10KB", 10000),
        ("10 MB", 10000000),
        ("2GB", 2000000000),
        (" 7 MiB ", 7340032),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", 'invalid size: use bytes or a number with a unit, e.g. "35MiB"'),
        ("MiB", 'invalid size: use bytes or a number with a unit, e.g. "35MiB"'),
        ("-1MiB", 'invalid size: use bytes or a number with a unit, e.g. "35MiB"'),
        ("1 2", 'invalid size: use bytes or a number with a unit, e.g. "35MiB"'),
        ("\u0661\u0662", 'invalid size: use bytes or a number with a unit, e.g. "35MiB"'),
        ("9" * 31, 'invalid size: use bytes or a number with a unit, e.g. "35MiB"'),
        ("5 TiB", "unknown size unit 'TiB': use B, KiB, MiB, GiB (1024) or KB, MB, GB (1000)"),
        ("1.5B", "size is not a whole number of bytes"),
        (1.5, 'size must be a number of bytes or a string like "35MiB"'),
        (True, 'size must be a number of bytes or a string like "35MiB"'),
        (None, 'size must be a number of bytes or a string like "35MiB"'),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value) == message


_SIZE_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
               "KB": 1000, "MB": 1000**2, "GB": 1000**3}


@given(
    number=st.integers(min_value=0, max_value=10**15),
    unit=st.sampled_from(sorted(_SIZE_UNITS)),
    space=st.sampled_from(["", " ", "  "]),
    upper=st.booleans(),
)
def test_parse_size_property(number: int, unit: str, space: str, upper: bool) -> None:
    text = f"{number}{space}{unit.upper() if upper else unit}"
    assert parse_size(text) == number * _SIZE_UNITS[unit]


@given(st.text(max_size=30))
def test_parse_size_only_raises_value_error(text: str) -> None:
    try:
        result = parse_size(text)
    except ValueError:
        return
    assert isinstance(result, int)
    assert result >= 0


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (30, 30.0),
        (2.5, 2.5),
        ("300", 300.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("4h", 14400.0),
        ("5d", 432000.0),
        ("4000s", 4000.0),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        (" 10 M ", 600.0),
    ],
)
def test_parse_duration(value: object, expected: float) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", 'invalid duration: use seconds or a number with a unit s, m, h or d, '
             'e.g. "30s", "5m", "1.5h"'),
        ("-5s", 'invalid duration: use seconds or a number with a unit s, m, h or d, '
                'e.g. "30s", "5m", "1.5h"'),
        ("5 minutes", "unknown duration unit 'minutes': use s, m, h or d"),
        ("2w", "unknown duration unit 'w': use s, m, h or d"),
        (float("inf"), "duration must be finite"),
        (float("nan"), "duration must be finite"),
        (False, 'duration must be a number of seconds or a string like "5m"'),
        ([5], 'duration must be a number of seconds or a string like "5m"'),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == message


_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@given(
    number=st.integers(min_value=0, max_value=10**9),
    unit=st.sampled_from(sorted(_DURATION_UNITS)),
    space=st.sampled_from(["", " "]),
)
def test_parse_duration_property(number: int, unit: str, space: str) -> None:
    assert parse_duration(f"{number}{space}{unit}") == float(number) * _DURATION_UNITS[unit]


@given(st.one_of(st.text(max_size=30), st.floats(), st.integers()))
def test_parse_duration_only_raises_value_error(value: object) -> None:
    try:
        result = parse_duration(value)
    except ValueError:
        return
    assert isinstance(result, float)


# --------------------------------------------------------------------------- listener addresses


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        ("127.0.0.1:1025", "127.0.0.1", 1025),
        ("0.0.0.0:25", "0.0.0.0", 25),
        ("mail.example.org:587", "mail.example.org", 587),
        ("[::1]:25", "::1", 25),
        ("[::]:465", "::", 465),
        ("[2001:db8::25]:2525", "2001:db8::25", 2525),
        ("[fe80::1%eth0]:110", "fe80::1%eth0", 110),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("localhost:65535", "localhost", 65535),
        (" 127.0.0.1:25 ", "127.0.0.1", 25),
    ],
)
def test_parse_host_port(address: str, host: str, port: int) -> None:
    assert parse_host_port(address) == (host, port)
    listener = ListenerSettings(kind="smtp", address=address)
    assert (listener.host, listener.port) == (host, port)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1", 'expected "host:port", e.g. "0.0.0.0:25"'),
        (":25", "the host is empty; use 0.0.0.0 or [::] for all addresses"),
        ("[]:25", "'' is not an IPv6 address"),
        ("127.0.0.1:65536", "port 65536 is outside 0..65535"),
        ("127.0.0.1:" + "9" * 50, "port 9999999999... is outside 0..65535"),
        ("127.0.0.1:\u0662\u0665", "port '\u0662\u0665' is not a number"),
        ("127.0.0.1:", "port '' is not a number"),
        ("127.0.0.1:-1", "port '-1' is not a number"),
        ("127.0.0.1:smtp", "port 'smtp' is not a number"),
        ("::1:25", 'put an IPv6 address in brackets, e.g. "[::1]:25"'),
        ("[::1]25", 'expected "[ipv6]:port", e.g. "[::1]:25"'),
        ("[::1:25", 'expected "[ipv6]:port", e.g. "[::1]:25"'),
        ("[1.2.3.4]:25", "'1.2.3.4' is not an IPv6 address"),
        ("my host:25", "the host has spaces or control characters"),
    ],
)
def test_parse_host_port_rejects(address: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_host_port(address)
    assert str(info.value) == message


@given(host=st.ip_addresses(v=4), port=st.integers(min_value=0, max_value=65535))
def test_parse_host_port_ipv4_property(host: object, port: int) -> None:
    assert parse_host_port(f"{host}:{port}") == (str(host), port)


@given(host=st.ip_addresses(v=6), port=st.integers(min_value=0, max_value=65535))
def test_parse_host_port_ipv6_property(host: object, port: int) -> None:
    assert parse_host_port(f"[{host}]:{port}") == (str(host), port)


@given(st.text(max_size=40))
def test_parse_host_port_only_raises_value_error(text: str) -> None:
    try:
        host, port = parse_host_port(text)
    except ValueError:
        return
    assert host
    assert 0 <= port <= 65535


# --------------------------------------------------------------------------- domains


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("example.org", "example.org"),
        ("EXAMPLE.Org.", "example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
    ],
)
def test_to_a_labels(name: str, expected: str) -> None:
    assert to_a_labels(name) == expected


@pytest.mark.parametrize("name", ["", ".", "under_score.example", "-lead.example", "a..b"])
def test_to_a_labels_rejects(name: str) -> None:
    with pytest.raises(ValueError):
        to_a_labels(name)


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(
    lambda label: label[2:4] != "--"
)


@given(st.lists(_LABEL, min_size=1, max_size=4))
def test_to_a_labels_property_ascii(labels: list[str]) -> None:
    name = ".".join(labels)
    assert to_a_labels(name.upper()) == name
    assert to_a_labels(name) == name


@given(st.text(max_size=30))
def test_to_a_labels_is_idempotent_or_rejects(text: str) -> None:
    try:
        once = to_a_labels(text)
    except ValueError:
        return
    assert once.isascii()
    assert once == once.lower()
    assert to_a_labels(once) == once


# --------------------------------------------------------------------------- loading files


def test_load_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pigeon.toml",
        """
[server]
hostname = "mail.example.org"
data_dir = "/srv/pigeon"

[domains]
local = ["example.org"]

[[listener]]
kind = "smtp"
address = "0.0.0.0:25"

[[listener]]
kind = "pop3s"
address = "[::]:995"

[limits]
max_message_size = "10MiB"
max_recipients = 50

[timeouts]
command = "5m"
data = 120

[smtp]
greet_pause = "2s"
vrfy = "disabled"
expn = true
banner = "ESMTP ready"

[[mailbox]]
address = "Alice@Example.ORG"
quota = "1GiB"

[queue]
retry_min = "1m"
retry_max = "1h"
delay_warning = 0

[log]
level = "DEBUG"
""",
    )
    settings = load_settings(path)
    assert settings.server.data_dir == Path("/srv/pigeon")
    assert [(item.kind, item.host, item.port) for item in settings.listener] == [
        ("smtp", "0.0.0.0", 25),
        ("pop3s", "::", 995),
    ]
    assert settings.limits.max_message_size == 10485760
    assert settings.limits.max_recipients == 50
    assert settings.timeouts.command == 300.0
    assert settings.timeouts.data == 120.0
    assert settings.smtp.greet_pause == 2.0
    assert settings.smtp.vrfy == "disabled"
    assert settings.smtp.expn is True
    assert settings.smtp.banner == "ESMTP ready"
    assert settings.mailbox == [MailboxSettings(address="Alice@example.org", quota=1073741824)]
    assert settings.mailbox[0].domain == "example.org"
    assert settings.queue.retry_min == 60.0
    assert settings.queue.retry_max == 3600.0
    assert settings.queue.delay_warning == 0.0
    assert settings.log.level == "DEBUG"


def test_empty_file_gives_defaults(tmp_path: Path, fqdn: None) -> None:
    settings = load_settings(write(tmp_path / "p.toml", ""))
    assert settings.domains.local == ["mx.example.net", "localhost"]
    assert len(settings.listener) == 4
    # The default data_dir is not "in the file": it stays relative to the working directory.
    assert settings.server.data_dir == Path("pigeon-data")


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "etc" / "pigeon.toml",
        '[server]\ndata_dir = "data"\n[aliases]\nfile = "aliases"\n'
        '[log]\nfile = "../log/pigeon.log"\n',
    )
    settings = load_settings(path)
    assert settings.server.data_dir == tmp_path / "etc" / "data"
    assert settings.aliases.file == tmp_path / "etc" / "aliases"
    assert settings.log.file == tmp_path / "etc" / "../log/pigeon.log"


def test_relative_config_path_gives_absolute_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "etc" / "pigeon.toml", '[server]\ndata_dir = "./data"\n')
    monkeypatch.chdir(tmp_path)
    settings = load_settings(Path("etc/pigeon.toml"))
    assert settings.server.data_dir == tmp_path / "etc" / "data"
    assert settings.server.data_dir.is_absolute()


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", '[server]\ndata_dir = "/var/lib/pigeon"\n')
    assert load_settings(path).server.data_dir == Path("/var/lib/pigeon")


def test_pigeon_config_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "env.toml", "[limits]\nmax_recipients = 7\n")
    monkeypatch.setenv("PIGEON_CONFIG", str(path))
    assert load_settings(None).limits.max_recipients == 7


def test_explicit_path_wins_over_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGEON_CONFIG", str(write(tmp_path / "a.toml", "[limits]\nmax_hops = 5\n")))
    explicit = write(tmp_path / "b.toml", "[limits]\nmax_hops = 9\n")
    assert load_settings(explicit).limits.max_hops == 9


def test_empty_env_var_means_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIGEON_CONFIG", "")
    assert load_settings(None).limits.max_hops == 100


def test_env_var_naming_a_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.toml"
    monkeypatch.setenv("PIGEON_CONFIG", str(missing))
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert str(info.value) == f"config error in {missing}: file not found"


# --------------------------------------------------------------------------- error messages


def errors_for(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path / "pigeon.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    prefix = f"config error in {path}: "
    lines = str(info.value).splitlines()
    assert all(line.startswith(prefix) for line in lines)
    return [line[len(prefix) :] for line in lines]


def test_unknown_key_is_named(tmp_path: Path) -> None:
    assert errors_for(tmp_path, "[limits]\nmax_recepients = 5\n") == [
        "unknown key 'limits.max_recepients' (did you mean 'limits.max_recipients'?)"
    ]


def test_unknown_key_without_suggestion(tmp_path: Path) -> None:
    assert errors_for(tmp_path, "[smtp]\nzzz = 1\n") == ["unknown key 'smtp.zzz'"]


def test_unknown_table_and_unknown_key_in_listener(tmp_path: Path) -> None:
    text = '[listeners]\nx = 1\n[[listener]]\nkind = "smtp"\naddress = "127.0.0.1:25"\nkinds = 1\n'
    assert errors_for(tmp_path, text) == [
        "unknown key 'listener[0].kinds' (did you mean 'listener[0].kind'?)",
        "unknown key 'listeners' (did you mean 'listener'?)",
    ]


def test_bad_value_is_named(tmp_path: Path) -> None:
    assert errors_for(tmp_path, '[limits]\nmax_recipients = "abc"\n') == [
        'limits.max_recipients: Input should be a valid integer (got "abc")'
    ]


def test_strings_are_not_converted_to_numbers_or_bools(tmp_path: Path) -> None:
    assert errors_for(tmp_path, '[limits]\nmax_recipients = "100"\n[smtp]\nexpn = "yes"\n') == [
        'limits.max_recipients: Input should be a valid integer (got "100")',
        'smtp.expn: Input should be a valid boolean (got "yes")',
    ]


def test_every_problem_on_its_own_line(tmp_path: Path) -> None:
    text = """
[limits]
max_recipients = 0
max_message_size = "12 furlongs"
max_line_length = 80

[timeouts]
command = "5 minutes"

[[listener]]
kind = "smtp"
address = "127.0.0.1:25"

[[listener]]
kind = "smtpx"
address = "127.0.0.1:99999"

[[listener]]
kind = "pop3"
"""
    assert errors_for(tmp_path, text) == [
        "listener[1].kind: Input should be 'smtp', 'submission', 'submissions', 'pop3' or "
        "'pop3s' (got \"smtpx\")",
        'listener[1].address: port 99999 is outside 0..65535 (got "127.0.0.1:99999")',
        "listener[2].address: required key is missing",
        "limits.max_message_size: unknown size unit 'furlongs': use B, KiB, MiB, GiB (1024) "
        'or KB, MB, GB (1000) (got "12 furlongs")',
        "limits.max_recipients: Input should be greater than or equal to 1 (got 0)",
        "limits.max_line_length: Input should be greater than or equal to 1000 (got 80)",
        "timeouts.command: unknown duration unit 'minutes': use s, m, h or d "
        '(got "5 minutes")',
    ]


def test_wrong_shapes(tmp_path: Path) -> None:
    assert errors_for(tmp_path, 'server = 5\nlistener = {kind = "smtp"}\n') == [
        "server: must be a table (got 5)",
        'listener: must be an array (got {"kind": "smtp"})',
    ]


def test_negative_and_non_finite_durations(tmp_path: Path) -> None:
    assert errors_for(tmp_path, "[timeouts]\ndata = -1\nshutdown_grace = nan\n") == [
        "timeouts.data: Input should be greater than 0 (got -1.0)",
        "timeouts.shutdown_grace: duration must be finite (got NaN)",
    ]


def test_retry_max_below_retry_min(tmp_path: Path) -> None:
    assert errors_for(tmp_path, '[queue]\nretry_min = "1h"\nretry_max = "10m"\n') == [
        "queue: retry_max (600s) is less than retry_min (3600s)"
    ]


def test_duplicate_listener_address(tmp_path: Path) -> None:
    text = (
        '[[listener]]\nkind = "smtp"\naddress = "[::1]:25"\n'
        '[[listener]]\nkind = "submission"\naddress = "[::1]:25"\n'
        '[[listener]]\nkind = "smtp"\naddress = "127.0.0.1:0"\n'
        '[[listener]]\nkind = "pop3"\naddress = "127.0.0.1:0"\n'
    )
    assert errors_for(tmp_path, text) == [
        "listener[1].address: [::1]:25 is already used by listener[0]"
    ]


def test_mailbox_checks(tmp_path: Path) -> None:
    text = (
        '[domains]\nlocal = ["example.org"]\n'
        '[[mailbox]]\naddress = "bob@example.net"\n'
        '[[mailbox]]\naddress = "alice@example.org"\n'
        '[[mailbox]]\naddress = "Alice@EXAMPLE.org"\n'
        '[[mailbox]]\naddress = "nobody"\n'
    )
    assert errors_for(tmp_path, text) == [
        'mailbox[3].address: expected a mailbox "local-part@domain" (got "nobody")'
    ]
    assert errors_for(tmp_path, text.rsplit("[[mailbox]]", 1)[0]) == [
        "mailbox[0].address: the domain 'example.net' is not in domains.local",
        "mailbox[2].address: Alice@example.org is already defined by mailbox[1]",
    ]


def test_bad_hostname_and_banner(tmp_path: Path) -> None:
    text = '[server]\nhostname = "bad_host"\n[smtp]\nbanner = "two\\nlines"\n'
    assert errors_for(tmp_path, text) == [
        "server.hostname: 'bad_host' is not a valid domain name (Codepoint U+005F at "
        "position 4 of 'bad_host' not allowed) (got \"bad_host\")",
        'smtp.banner: banner must be one line of printable text (got "two\\nlines")',
    ]


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(missing)
    assert str(info.value) == f"config error in {missing}: file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert str(info.value) == f"config error in {tmp_path}: is a directory, not a file"


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[limits]\nmax_recipients = \n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == (
        f"config error in {path}: invalid TOML: Invalid value (at line 2, column 18)"
    )


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_bytes(b'[smtp]\nbanner = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value) == f"config error in {path}: not UTF-8 text (byte 20)"


# --------------------------------------------------------------------------- example


def test_example_config_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path / "pigeon.toml", example_config()))
    assert settings.server.hostname == "mail.example.org"
    assert settings.server.data_dir == Path("/var/lib/pigeon")
    assert settings.domains.local == ["example.org", "mail.example.org"]
    assert [(item.kind, item.host, item.port) for item in settings.listener] == [
        ("smtp", "0.0.0.0", 25),
        ("submission", "0.0.0.0", 587),
        ("submission", "0.0.0.0", 2525),
        ("submissions", "0.0.0.0", 465),
        ("pop3", "0.0.0.0", 110),
        ("pop3s", "0.0.0.0", 995),
    ]
    assert settings.limits == Settings().limits
    assert settings.timeouts == Settings().timeouts
    assert settings.queue == Settings().queue


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if get_origin(annotation) is list:
            annotation = get_args(annotation)[0]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


# Tables whose keys are data (domains), not settings.
_FREE_TABLES = frozenset({"routes"})


def _present(data: dict[str, object], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in data.items():
        if not prefix and name in _FREE_TABLES:
            keys.add(name)
            continue
        items = value if isinstance(value, list) else [value]
        if items and all(isinstance(item, dict) for item in items):
            for item in items:
                assert isinstance(item, dict)
                keys |= _present(item, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def test_example_config_has_every_key() -> None:
    present = _present(tomllib.loads(example_config()))
    assert present == _keys(Settings)
    assert len(present) == 69
