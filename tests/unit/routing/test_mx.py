"""MX resolution (RFC 5321 §5.1, RFC 7505), transport routes and their configuration."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.config import ConfigError, Settings, load_settings
from pigeon.mail.reply import Reply
from pigeon.routing.mx import (
    DnsLookupError,
    DnsPythonResolver,
    MxHost,
    RoutingError,
    StaticResolver,
    resolve_addresses,
    resolve_mx,
)
from pigeon.routing.transport import NextHop, RouteError, TransportTable, parse_route, route_key
from tests.e2e.dns_server import ZoneServer

# -- resolve_mx ------------------------------------------------------------------------------


async def test_mx_in_preference_order() -> None:
    resolver = StaticResolver({("example.net", "MX"): [
        (20, "b.example.net"), (10, "a.example.net"), (30, "c.example.net")]})
    hosts = await resolve_mx("example.net", resolver)
    assert hosts == [MxHost("a.example.net", 10), MxHost("b.example.net", 20),
                     MxHost("c.example.net", 30)]


async def test_equal_preferences_shuffled() -> None:
    records = {("example.net", "MX"): [(10, f"mx{i}.example.net") for i in range(4)]
               + [(5, "first.example.net")]}
    orders = set()
    for seed in range(30):
        hosts = await resolve_mx("example.net", StaticResolver(records),
                                 rng=random.Random(seed))
        assert hosts[0] == MxHost("first.example.net", 5)
        assert sorted(h.name for h in hosts[1:]) == [f"mx{i}.example.net" for i in range(4)]
        orders.add(tuple(h.name for h in hosts))
    assert len(orders) > 1


async def test_host_listed_twice_tried_once_at_best_preference() -> None:
    resolver = StaticResolver({("example.net", "MX"): [
        (20, "mx.example.net."), (10, "MX.example.net"), (15, "other.example.net")]})
    assert await resolve_mx("example.net", resolver) == [
        MxHost("mx.example.net", 10), MxHost("other.example.net", 15)]


async def test_no_mx_is_implicit_mx() -> None:
    resolver = StaticResolver({("example.net", "A"): ["192.0.2.1"]})
    assert await resolve_mx("example.net", resolver) == [MxHost("example.net", 0, implicit=True)]


async def test_null_mx() -> None:
    with pytest.raises(RoutingError) as info:
        await resolve_mx("example.net", StaticResolver({("example.net", "MX"): [(0, ".")]}))
    assert info.value.reply == Reply(556, "5.1.10",
                                     "Domain example.net does not accept mail (nullMX)")


async def test_null_mx_among_others_is_skipped() -> None:
    resolver = StaticResolver({("example.net", "MX"): [(0, "."), (10, "mx.example.net")]})
    assert await resolve_mx("example.net", resolver) == [MxHost("mx.example.net", 10)]


async def test_nxdomain_and_temporary_failures() -> None:
    with pytest.raises(RoutingError) as info:
        await resolve_mx("nowhere.example", StaticResolver({}))
    assert (info.value.reply.code, str(info.value.reply.enhanced)) == (550, "5.1.2")
    resolver = StaticResolver({("example.net", "MX"): "temporary"})
    with pytest.raises(RoutingError) as info:
        await resolve_mx("example.net", resolver)
    assert (info.value.reply.code, str(info.value.reply.enhanced)) == (451, "4.4.3")


async def test_addresses_ipv6_first_then_ipv4() -> None:
    resolver = StaticResolver({
        ("mx.example.net", "A"): ["192.0.2.1", "192.0.2.2"],
        ("mx.example.net", "AAAA"): ["2001:db8::1"],
    })
    assert await resolve_addresses("mx.example.net", resolver) == [
        "2001:db8::1", "192.0.2.1", "192.0.2.2"]
    assert await resolve_addresses("mx.example.net", resolver, ipv6=False) == [
        "192.0.2.1", "192.0.2.2"]
    assert await resolve_addresses("192.0.2.9", resolver) == ["192.0.2.9"]
    assert await resolve_addresses("2001:DB8::0009", resolver) == ["2001:db8::9"]


async def test_address_failures() -> None:
    only_a = StaticResolver({("mx.example.net", "A"): ["192.0.2.1"],
                             ("mx.example.net", "AAAA"): "temporary"})
    # One family failing for now is not an error when the other answers.
    assert await resolve_addresses("mx.example.net", only_a) == ["192.0.2.1"]
    with pytest.raises(DnsLookupError) as info:
        await resolve_addresses("mx.example.net", StaticResolver({
            ("mx.example.net", "A"): "temporary", ("mx.example.net", "AAAA"): "nodata"}))
    assert info.value.kind == "temporary"
    with pytest.raises(DnsLookupError) as info:
        await resolve_addresses("gone.example.net", StaticResolver({}))
    assert info.value.kind == "nxdomain"
    assert await resolve_addresses("txt.example.net", StaticResolver(
        {("txt.example.net", "TXT"): ["x"]})) == []


async def test_dnspython_resolver_against_a_zone_server() -> None:
    zone = ZoneServer().start()
    try:
        zone.add("example.net", "MX", "20 b.example.net").add("example.net", "MX",
                                                              "10 a.example.net")
        zone.add("a.example.net", "A", "127.0.0.2").add("a.example.net", "AAAA", "::1")
        zone.add("null.example", "MX", "0 .")
        zone.add("plain.example", "A", "127.0.0.3")
        zone.add("broken.example", "MX", "10 x.example")
        zone.fail("broken.example")
        resolver = DnsPythonResolver([zone.nameserver], timeout=3, cache=False)
        assert await resolver.mx("example.net") == [(20, "b.example.net"), (10, "a.example.net")]
        assert await resolve_addresses("a.example.net", resolver) == ["::1", "127.0.0.2"]
        with pytest.raises(RoutingError) as info:
            await resolve_mx("null.example", resolver)
        assert info.value.reply.code == 556
        assert await resolve_mx("plain.example", resolver) == [
            MxHost("plain.example", 0, implicit=True)]
        for name, code in (("nowhere.example", 550), ("broken.example", 451)):
            with pytest.raises(RoutingError) as info:
                await resolve_mx(name, resolver)
            assert info.value.reply.code == code
    finally:
        zone.stop()


# -- routes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "hop"), [
    ("smtp:[192.0.2.10]:2526", NextHop("192.0.2.10", 2526, mx=False)),
    ("smtp:relay.example.net", NextHop("relay.example.net", None, mx=True)),
    ("SMTP:Relay.Example.NET:2525", NextHop("relay.example.net", 2525, mx=True)),
    ("smtp:[relay.example.net]", NextHop("relay.example.net", None, mx=False)),
    ("smtp:[2001:db8::1]:25", NextHop("2001:db8::1", 25, mx=False)),
    ("smtp:[IPv6:2001:DB8::1]", NextHop("2001:db8::1", None, mx=False)),
    ("smtp:192.0.2.7", NextHop("192.0.2.7", None, mx=False)),
    ("smtp:", NextHop(None)),
])
def test_parse_route(value: str, hop: NextHop) -> None:
    got = parse_route(value)
    assert (got.host, got.port, got.mx) == (hop.host, hop.port, hop.mx)
    assert got.tls == "opportunistic" and got.username is None


@pytest.mark.parametrize("value", [
    "relay.example.net", "lmtp:[192.0.2.1]", "smtp:[192.0.2.1", "smtp:[192.0.2.1]x",
    "smtp:2001:db8::1", "smtp:[192.0.2.1]:99999", "smtp:host:0", "smtp:bad host!",
])
def test_bad_routes(value: str) -> None:
    with pytest.raises(RouteError):
        parse_route(value)


@given(st.text(max_size=60))
def test_parse_route_only_raises_route_error(text: str) -> None:
    try:
        parse_route(text)
    except RouteError:
        pass
    try:
        route_key(text)
    except RouteError:
        pass


def test_lookup_precedence() -> None:
    relay = NextHop("smarthost.example", 587, mx=False, tls="starttls")
    table = TransportTable({
        "Example.org": "smtp:[192.0.2.1]",
        ".example.org": "smtp:[192.0.2.2]",
        ".deep.example.org": "smtp:[192.0.2.3]",
        "bypass.example": "smtp:",
    }, relay)
    assert table.lookup("example.org").host == "192.0.2.1"
    assert table.lookup("a.example.org").host == "192.0.2.2"
    assert table.lookup("x.y.deep.example.org").host == "192.0.2.3"
    assert table.lookup("other.example").host == "smarthost.example"
    assert table.lookup("bypass.example").host is None  # by MX despite the smarthost
    assert TransportTable({}).lookup("example.com") == NextHop(None)
    star = TransportTable({"*": "smtp:[192.0.2.9]:26", "local.example": "smtp:"})
    assert star.lookup("anything.example").host == "192.0.2.9"
    assert star.lookup("local.example").host is None


def test_destination_keys() -> None:
    assert NextHop(None).destination("example.net") == "example.net"
    assert parse_route("smtp:[192.0.2.1]:26").destination("a.example") == "[192.0.2.1]:26"
    assert parse_route("smtp:relay.example").destination("b.example") == "relay.example"


# -- configuration -------------------------------------------------------------------------------


def _load(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "pigeon.toml"
    path.write_text(text, encoding="utf-8")
    return load_settings(path)


def test_config_routes_relay_dns_delivery(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n", encoding="utf-8")
    settings = _load(tmp_path, """
[routes]
"Example.ORG" = "smtp:[192.0.2.10]:2526"
"*" = "smtp:relay.example.net"
[relay]
host = "smtp.provider.example"
username = "me"
password_file = "pw"
[dns]
nameservers = ["127.0.0.1:5353", "::1", "[::1]:53"]
timeout = "2s"
[delivery]
smtp_port = 2525
source_ipv4 = "127.0.0.2"
""")
    assert settings.routes == {"example.org": "smtp:[192.0.2.10]:2526",
                               "*": "smtp:relay.example.net"}
    assert settings.relay.host == "smtp.provider.example:587"
    assert settings.relay.password_file == tmp_path / "pw"
    assert settings.dns.nameservers == ["127.0.0.1:5353", "::1", "[::1]:53"]
    assert settings.dns.timeout == 2.0
    assert settings.delivery.smtp_port == 2525
    table = TransportTable.from_settings(settings)
    assert table.relay is not None
    assert (table.relay.host, table.relay.port, table.relay.tls) == (
        "smtp.provider.example", 587, "starttls")


@pytest.mark.parametrize(("text", "message"), [
    ('[routes]\n"example.org" = "lmtp:x"\n', 'must start with "smtp:"'),
    ('[routes]\n"bad domain!" = "smtp:"\n', "is not a domain"),
    ('[dns]\nnameservers = ["resolver.example"]\n', "is not a name server address"),
    ('[delivery]\nsource_ipv4 = "::1"\n', "is not an IPv4 address"),
    ('[relay]\nhost = "2001:db8::1"\n', "brackets"),
    ('[relay]\nhost = "smtp.example"\nusername = "u"\n', "password_file"),
    ('[delivery]\nsmtp_port = 0\n', "delivery.smtp_port"),
])
def test_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    assert message in str(info.value)
