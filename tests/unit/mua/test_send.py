"""Submission to a server, direct delivery and the target/profile/password rules, with a
scripted client session."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.mail.reply import Reply
from pigeon.mua.direct import deliver_direct
from pigeon.mua.profiles import (
    ProfileError,
    client_config_path,
    load_client_config,
    read_password_file,
)
from pigeon.mua.send import (
    ServerTarget,
    parse_server,
    queue_id_from_reply,
    reply_for_exception,
    submit_to_server,
)
from pigeon.mua.target import resolve_target
from pigeon.net.smtp_client import SmtpClientError, TransactionResult
from pigeon.routing.mx import StaticResolver

from .fakes import MAIL_OK, RCPT_OK, Server, lost

TARGET = ServerTarget("127.0.0.1", 2525, "plain", helo="client.example")


async def test_all_accepted() -> None:
    server = Server()
    result = await submit_to_server(TARGET, "a@example.com", ["b@example.com", "c@example.com"],
                                    b"x\r\n", smtputf8=True, eight_bit=True,
                                    connector=server.connect)
    assert result.all_accepted and result.queue_id == "Q00001"
    assert [r.reply.code for r in result.recipients] == [250, 250]
    assert server.params[0] is not None and server.params[0].smtputf8
    assert server.params[0].body == "8BITMIME"


async def test_one_recipient_refused() -> None:
    unknown = Reply(550, "5.1.1", "User unknown")
    server = Server(script=lambda rp, rcpts, c: TransactionResult(
        MAIL_OK, [RCPT_OK, unknown], Reply(250, "2.0.0", "Ok: queued as ABC")))
    result = await submit_to_server(TARGET, "a@example.com", ["b@example.com", "x@example.com"],
                                    b"x\r\n", connector=server.connect)
    assert not result.all_accepted
    assert [(r.recipient, r.reply.code) for r in result.recipients] == [
        ("b@example.com", 250), ("x@example.com", 550)]
    assert result.queue_id == "ABC"


async def test_connect_failure_and_lost_connection_are_replies() -> None:
    server = Server(connect_error=SmtpClientError(Reply(421, "4.4.1", "connect: refused")))
    result = await submit_to_server(TARGET, "a@example.com", ["b@example.com"], b"x\r\n",
                                    connector=server.connect)
    assert [str(r.reply) for r in result.recipients] == ["421 4.4.1 connect: refused"]
    server = Server(script=lambda *a: lost(True))
    result = await submit_to_server(TARGET, "a@example.com", ["b@example.com"], b"x\r\n",
                                    connector=server.connect)
    assert result.recipients[0].reply.code == 421 and not result.all_accepted


def test_reply_for_exception() -> None:
    assert reply_for_exception(ConnectionRefusedError(111, "Connection refused"),
                               "h:25").enhanced is not None
    assert str(reply_for_exception(OSError(101, "Network is unreachable"), "h:25")) == \
        "421 4.4.1 cannot connect to h:25: Network is unreachable"
    assert reply_for_exception(RuntimeError("boom"), "h:25").code == 421


@pytest.mark.parametrize(("text", "expected"), [
    ("250 2.0.0 Ok: queued as 0J6Z3K9Q2M7X", "0J6Z3K9Q2M7X"),
    ("250 2.0.0 Ok: Queued as 4XyZ.1", "4XyZ.1"),
    ("250 OK id=1rX", None),
])
def test_queue_id_from_reply(text: str, expected: str | None) -> None:
    code, _, rest = text.partition(" ")
    assert queue_id_from_reply(Reply(int(code), None, rest)) == expected


@pytest.mark.parametrize(("text", "security", "expected"), [
    ("mail.example.org", "starttls", ("mail.example.org", 587)),
    ("mail.example.org", "tls", ("mail.example.org", 465)),
    ("mail.example.org:2525", "tls", ("mail.example.org", 2525)),
    ("[::1]:25", "plain", ("::1", 25)),
    ("[2001:db8::1]", "starttls", ("2001:db8::1", 587)),
])
def test_parse_server(text: str, security: str, expected: tuple[str, int]) -> None:
    assert parse_server(text, security) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["", ":25", "host:0", "host:99999", "host:x", "::1",
                                  "[::1", "[::1]x", "a b:25"])
def test_parse_server_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_server(text, "starttls")


@given(st.text(max_size=40))
def test_parse_server_only_raises_value_error(text: str) -> None:
    try:
        host, port = parse_server(text, "starttls")
    except ValueError:
        return
    assert host and 0 < port < 65536


# ------------------------------------------------------------------ direct


async def test_direct_groups_by_domain_and_falls_back_to_next_mx() -> None:
    resolver = StaticResolver({
        ("example.com", "MX"): [(10, "mx1.example.com"), (20, "mx2.example.com")],
        ("mx1.example.com", "A"): ["192.0.2.1"],
        ("mx2.example.com", "A"): ["192.0.2.2"],
        ("example.net", "MX"): [(0, "mx.example.net")],
        ("mx.example.net", "A"): ["192.0.2.3"],
        ("nullmx.example", "MX"): [(0, ".")],
    })
    server = Server()
    tried: list[str] = []

    async def connector(host: str, address: str, port: int, helo: str, timeout: float):  # type: ignore[no-untyped-def]
        tried.append(f"{host}[{address}]:{port}")
        if host == "mx1.example.com":
            raise SmtpClientError(Reply(421, "4.4.1", "connect: refused"))
        return await server.connect(None)

    result = await deliver_direct(
        "a@example.org", ["b@example.com", "c@example.net", "d@example.com", "e@nullmx.example"],
        b"x\r\n", resolver=resolver, port=2525, helo="me.example", connector=connector)
    assert sorted(tried) == ["mx.example.net[192.0.2.3]:2525", "mx1.example.com[192.0.2.1]:2525",
                             "mx2.example.com[192.0.2.2]:2525"]
    assert [r.reply.code for r in result.recipients] == [250, 250, 250, 556]
    assert sorted(t[1] for t in server.transactions) == [["b@example.com", "d@example.com"],
                                                          ["c@example.net"]]


async def test_direct_nothing_reachable_is_temporary() -> None:
    resolver = StaticResolver({("example.com", "MX"): [(10, "mx.example.com")],
                               ("mx.example.com", "A"): ["192.0.2.1"]})

    async def connector(*args: object):  # type: ignore[no-untyped-def]
        raise SmtpClientError(Reply(421, "4.4.1", "connect: refused"))

    result = await deliver_direct("a@example.org", ["b@example.com"], b"x\r\n",
                                  resolver=resolver, connector=connector)
    assert str(result.recipients[0].reply) == "421 4.4.1 connect: refused"


# ------------------------------------------------------------------ profiles and targets


def write_config(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "client.toml"
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path


def test_client_config_path(tmp_path: Path) -> None:
    assert client_config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == \
        tmp_path / "pigeon" / "client.toml"


def test_profiles_and_password_order(tmp_path: Path) -> None:
    (tmp_path / "work.pass").write_text("from-profile-file\nignored\n")
    path = write_config(tmp_path, """
default = "work"
[profile.work]
server = "mail.example.org"
security = "tls"
user = "alice@example.org"
password_file = "work.pass"
from = "Alice <alice@example.org>"
[profile.home]
server = "smtp.example.net:2525"
user = "al"
password = "inline"
verify = false
[sendmail]
profile = "home"
""")
    config = load_client_config(path)
    work = config.profile(None)
    assert work is not None and work.name == "work" and work.author == "Alice <alice@example.org>"
    assert config.sendmail_profile == "home"

    def target(**kw: object) -> ServerTarget | None:
        args: dict[str, object] = {"server": None, "security": None, "user": None,
                                   "password_file": None, "profile": work, "ca_file": None,
                                   "insecure": False, "environ": {}, "prompt": None}
        args.update(kw)
        return resolve_target(**args)  # type: ignore[arg-type]

    t = target()
    assert t is not None
    assert (t.host, t.port, t.security, t.username, t.password, t.verify) == (
        "mail.example.org", 465, "tls", "alice@example.org", "from-profile-file", True)
    (tmp_path / "cli.pass").write_text("from-option\n")
    t = target(password_file=tmp_path / "cli.pass", environ={"PIGEON_PASSWORD": "env"})
    assert t is not None and t.password == "from-option"
    t = target(environ={"PIGEON_PASSWORD": "env"})
    assert t is not None and t.password == "env"
    t = target(server="other.example:25", security="plain", insecure=True)
    assert t is not None and (t.host, t.port, t.security, t.verify) == (
        "other.example", 25, "plain", False)
    home = config.profile("home")
    t = target(profile=home)
    assert t is not None and (t.password, t.verify, t.port) == ("inline", False, 2525)
    t = target(profile=None, server="h.example", user="u", prompt=lambda text: "typed")
    assert t is not None and t.password == "typed"
    with pytest.raises(ProfileError, match="no password"):
        target(profile=None, server="h.example", user="u")
    assert target(profile=None) is None
    with pytest.raises(ProfileError, match="no profile 'nope'"):
        config.profile("nope")


@pytest.mark.parametrize(("text", "message"), [
    ("[profile.a]\nserver = 1\n", "must be a non-empty string"),
    ("[profile.a]\nsecurity = \"ssl\"\n", "security"),
    ("[profile.a]\nport = 25\n", "unknown key 'port'"),
    ("colour = 1\n", "unknown key 'colour'"),
    ("default = \"missing\"\n", "no profile 'missing'"),
    ("[profile.a\n", "not valid TOML"),
    ("[sendmail]\nserver = \"x\"\n", "only the key 'profile'"),
])
def test_bad_client_config(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        load_client_config(write_config(tmp_path, text))


def test_inline_password_needs_a_private_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "[profile.a]\npassword = \"x\"\n",
                        mode=0o600 | stat.S_IRGRP | stat.S_IROTH)
    with pytest.raises(ProfileError, match="chmod 600"):
        load_client_config(path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="file not found"):
        load_client_config(tmp_path / "nope.toml")
    with pytest.raises(ProfileError, match="cannot read password file"):
        read_password_file(tmp_path / "nope")
    (tmp_path / "empty").write_text("")
    with pytest.raises(ProfileError, match="is empty"):
        read_password_file(tmp_path / "empty")


@given(st.text(max_size=200))
def test_load_client_config_only_raises_profile_error(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "client.toml"
        path.write_text(text, encoding="utf-8")
        os.chmod(path, 0o600)
        try:
            config = load_client_config(path)
        except ProfileError:
            return
        assert config.path == path
