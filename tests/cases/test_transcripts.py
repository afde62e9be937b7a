"""Every client transcript in tests/cases/transcripts is played against a running Pigeon.

A server is started per distinct deployment config (the transcripts' ``config`` field) and
shared by the transcripts that use the same one.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pigeon.mail.reply import Reply
from tests.e2e.dns_server import ZoneServer
from tests.e2e.outbound_peer import FakeMx, free_port, queue_messages
from tests.e2e.server import DEFAULT_MAILBOXES, PigeonServer

from .runner import TRANSCRIPTS, load, run

# What each transcript needs beyond an inbound MTA listener; cases whose needs are not yet
# served are skipped with the reason.
_NEEDS_PROXY = "needs PROXY protocol support on the listener"
_NEEDS_NEXT_HOP = "needs outbound delivery to a test next hop (config keys {keys})"
# Deployment keys that describe a next hop or DNS for outbound delivery.
_OUTBOUND_KEYS = frozenset({"next_hop_rejects_rcpt", "queue_retry_fast", "dns_overrides"})
# The submission transcripts log in as this user (AUTH PLAIN in the cases).
TRANSCRIPT_USERS = {"alice@example.com": "correct-horse-battery"}
# Which listener a transcript's "port" names.
_LISTENER_FOR_PORT = {"mx": "smtp", "submission": "submission"}


def _skip_reason(case: dict[str, Any]) -> str | None:
    # Cases with next-hop keys run against a scripted next hop (see _next_hop below).
    outbound = sorted(_OUTBOUND_KEYS & set(case.get("config", {})) - _SERVED_OUTBOUND_KEYS)
    if outbound:
        return _NEEDS_NEXT_HOP.format(keys=", ".join(outbound))
    return None


def _sections(config: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    sections: dict[str, dict[str, Any]] = {}
    mailboxes = list(DEFAULT_MAILBOXES)
    for key, value in config.items():
        if key == "max_message_size":
            sections.setdefault("limits", {})["max_message_size"] = value
        elif key == "max_received_headers":
            sections.setdefault("limits", {})["max_hops"] = value
        elif key == "idle_timeout_seconds":
            sections.setdefault("timeouts", {}).update(command=value, data=value)
        elif key == "mailboxes_extra":
            mailboxes += value
        # Keys about a PROXY front end only matter to steps marked only_if; without the
        # flag those steps are not played.
    return sections, mailboxes


_CASES = sorted(TRANSCRIPTS.glob("*.json"))
_servers: dict[str, PigeonServer] = {}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, PigeonServer]]:
    yield _servers
    for srv in _servers.values():
        srv.stop()
    _servers.clear()


def _server_for(config: dict[str, Any], servers: dict[str, PigeonServer], root: Path
                ) -> PigeonServer:
    key = json.dumps(config, sort_keys=True)
    if key not in servers:
        sections, mailboxes = _sections(config)
        srv = PigeonServer(root / f"srv{len(servers)}", sections=sections, mailboxes=mailboxes,
                           listeners=["smtp", "submission"], users=dict(TRANSCRIPT_USERS))
        servers[key] = srv.start()
    return servers[key]


@pytest.mark.parametrize("path", _CASES, ids=[p.stem for p in _CASES])
def test_transcript(path: Path, servers: dict[str, PigeonServer],
                    tmp_path_factory: pytest.TempPathFactory) -> None:
    case = load(path)
    reason = _skip_reason(case)
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.getbasetemp() / "transcripts"
    if _needs_next_hop(case):
        with _next_hop(case, root / f"outbound-{case['id']}") as (srv, mx):
            failures = run(case, "127.0.0.1", srv.ports[_LISTENER_FOR_PORT[case["port"]]])
            assert not failures, f"{case['id']} {case['title']}:\n" + "\n".join(failures)
            _AFTER.get(case["id"], _after_default)(srv, mx)
        return
    srv = _server_for(case.get("config", {}), servers, root)
    failures = run(case, "127.0.0.1", srv.ports[_LISTENER_FOR_PORT[case["port"]]])
    assert not failures, f"{case['id']} {case['title']}:\n" + "\n".join(failures)


# -- outbound cases: a DNS zone and a scripted MX for example.net, then the "after" checks

_SERVED_OUTBOUND_KEYS = frozenset({"next_hop_rejects_rcpt", "queue_retry_fast", "dns_overrides"})
_REMOTE_RCPT = re.compile(r"RCPT TO:<[^>]*@example\.net>", re.IGNORECASE)


def _needs_next_hop(case: dict[str, Any]) -> bool:
    return bool(_OUTBOUND_KEYS & set(case.get("config", {}))) or any(
        _REMOTE_RCPT.search(step.get("send") or "") for step in case["steps"])


@contextmanager
def _next_hop(case: dict[str, Any], root: Path) -> Iterator[tuple[PigeonServer, FakeMx]]:
    """A Pigeon whose mail for example.net goes (by MX) to a scripted next hop."""
    config = case.get("config", {})
    rejects = {a.lower(): Reply(550, "5.1.1", f"<{a}>: Recipient address rejected")
               for a in config.get("next_hop_rejects_rcpt", [])}
    own_port = free_port("127.0.0.1")
    zone = ZoneServer().start()
    mx = FakeMx(host="127.0.0.2", hostname="mx.example.net", rcpt_replies=rejects).start()
    smtp_port = mx.port
    overrides: dict[str, str] = config.get("dns_overrides", {})
    if overrides:
        for key, value in overrides.items():
            name, rtype = key.split()
            zone.add(name, rtype, value)
        smtp_port = own_port  # the overrides point example.net at this very host
    else:
        zone.add("example.net", "MX", "10 mx.example.net").add("mx.example.net", "A",
                                                              "127.0.0.2")
    sections, mailboxes = _sections(config)
    sections["dns"] = {"nameservers": [zone.nameserver], "timeout": 3}
    sections["delivery"] = {"smtp_port": smtp_port, "connect_timeout": 5}
    if config.get("queue_retry_fast"):
        sections["queue"] = {"retry_min": 1, "retry_max": 2}
    srv = PigeonServer(root, sections=sections, mailboxes=mailboxes,
                       listeners=["smtp", "submission"], users=dict(TRANSCRIPT_USERS),
                       listen_ports={"smtp": own_port})
    try:
        srv.start()
        yield srv, mx
    finally:
        srv.stop()
        mx.stop()
        zone.stop()


def _settled(srv: PigeonServer, timeout: float = 30.0) -> None:
    """Wait (bounded) until the queue is empty: every recipient delivered or bounced."""
    deadline = time.monotonic() + timeout
    while queue_messages(srv.data_dir):
        assert time.monotonic() < deadline, f"queue not empty: {queue_messages(srv.data_dir)}"
        time.sleep(0.05)


def _dsns(srv: PigeonServer) -> list[bytes]:
    return [p.read_bytes() for p in srv.maildir_files("alice@example.com")]


def _after_default(srv: PigeonServer, mx: FakeMx) -> None:
    _settled(srv)


def _after_006(srv: PigeonServer, mx: FakeMx) -> None:
    # Accepted or refused inbound; if accepted, the next hop got it once, CRLF only.
    _settled(srv)
    assert len(mx.messages) <= 1
    for wire in mx.wire.values():
        data = bytes(wire)
        assert re.search(rb"[^\r]\n", data) is None, data
        assert b"\n.\r\n" not in data.replace(b"\r\n.\r\n", b"")


def _after_014(srv: PigeonServer, mx: FakeMx) -> None:
    _settled(srv)
    [message] = mx.messages
    assert message.content.endswith(b"\r\n\r\nbefore\r\n.\r\nafter\r\n")
    [wire] = [bytes(w) for w in mx.wire.values()]
    assert b"\r\nbefore\r\n..\r\nafter\r\n.\r\n" in wire
    assert b"500 " not in wire


def _after_053(srv: PigeonServer, mx: FakeMx) -> None:
    _settled(srv)
    assert mx.messages == []
    [dsn] = _dsns(srv)
    assert dsn.startswith(b"Return-Path: <>\r\n")
    assert b"multipart/report" in dsn and b"report-type=delivery-status" in dsn
    assert b"Subject: normal message" in dsn
    assert b"null-sender message" not in dsn
    assert b"Final-Recipient: rfc822; reject-me@example.net" in dsn


def _after_055(srv: PigeonServer, mx: FakeMx) -> None:
    _settled(srv)
    log = srv.log()
    assert len(re.findall(r" connect from \[[^]]+\]:\d+ \(smtp\)", log)) <= 1
    dsns = _dsns(srv)
    assert len(dsns) == 1, len(dsns)
    assert re.search(rb"\r\nStatus: 5\.4\.\d+\r\n", dsns[0])
    assert b"loops back to myself" in dsns[0]


_AFTER: dict[str, Callable[[PigeonServer, FakeMx], None]] = {
    "006": _after_006,
    "014": _after_014,
    "053": _after_053,
    "055": _after_055,
}
