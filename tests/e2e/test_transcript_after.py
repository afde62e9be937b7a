"""The ``after`` conditions of the client transcripts, checked through Pigeon's own store.

tests/cases/test_transcripts.py plays every transcript and checks the replies; this module
plays those that run against the ``mx`` listener again, each against a fresh server, waits
until the queue has done its work, and then checks what the transcript's ``after`` field
says about the messages: what reached which Maildir, with which envelope, byte for byte.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pigeon.storage.sqlite.accounts import AccountStore
from tests.cases.runner import TRANSCRIPTS, load, run
from tests.cases.test_transcripts import _sections

from .server import DEFAULT_MAILBOXES, PigeonServer

# Pigeon's lines before the content: the MDA's Return-Path and Delivered-To, then the
# Received field the queue wrote (one field, folded over several lines).
_TRACE = re.compile(
    rb"Return-Path: <([^\r\n]*)>\r\n"
    rb"Delivered-To: ([^\r\n]*)\r\n"
    rb"(Received: [^\r\n]*(?:\r\n[ \t][^\r\n]*)*\r\n)"
)


@dataclass(frozen=True)
class Stored:
    """One message file of a Maildir, split into Pigeon's trace lines and the content.

    Attributes:
        path: the file.
        return_path: the reverse-path of the ``Return-Path`` line ("" for ``<>``).
        delivered_to: the ``Delivered-To`` address.
        received: Pigeon's ``Received`` field, with its continuation lines.
        content: the message exactly as the client sent it (after un-dot-stuffing).
    """

    path: Path
    return_path: str
    delivered_to: str
    received: bytes
    content: bytes

    @property
    def queue_id(self) -> str:
        """The queue id named in the ``Received`` field."""
        m = re.search(rb"\tid ([0-9A-Z]+)", self.received)
        assert m is not None, self.received
        return m.group(1).decode()


def read_stored(path: Path) -> Stored:
    """Split a delivered file into Pigeon's Return-Path/Delivered-To/Received lines and
    the content; fail when the lines are not exactly where the MDA puts them."""
    data = path.read_bytes()
    m = _TRACE.match(data)
    assert m is not None, data[:400]
    assert b"(Pigeon)" in m.group(3), m.group(3)
    return Stored(path, m.group(1).decode(), m.group(2).decode(), m.group(3),
                  data[m.end():])


def stored_content(path: Path) -> bytes:
    """The content of a delivered file without Pigeon's Return-Path, Delivered-To and
    Received lines."""
    return read_stored(path).content


def mailboxes(srv: PigeonServer) -> dict[str, list[Stored]]:
    """Every delivered message of every Maildir, by mailbox address."""
    out: dict[str, list[Stored]] = {}
    root = srv.data_dir / "mail"
    if not root.is_dir():
        return out
    for domain_dir in sorted(root.iterdir()):
        for box in sorted(domain_dir.iterdir()):
            address = (f"{urllib.parse.unquote(box.name)}@"
                       f"{urllib.parse.unquote(domain_dir.name)}")
            files = [p for sub in ("new", "cur") if (box / sub).is_dir()
                     for p in sorted((box / sub).iterdir())]
            if files:
                out[address] = [read_stored(p) for p in files]
    return out


def queue_messages(srv: PigeonServer) -> list[dict[str, Any]]:
    """The queue as ``pigeon queue list --json`` shows it."""
    result = srv.pigeon("queue", "list", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["corrupt"] == []
    messages: list[dict[str, Any]] = data["messages"]
    return messages


def queue_size(srv: PigeonServer) -> int:
    """Messages in the server's queue index (a read-only look, never taking its lock)."""
    db = sqlite3.connect(f"file:{srv.data_dir / 'queue.db'}?mode=ro", uri=True, timeout=10)
    try:
        count: int = db.execute("SELECT COUNT(*) FROM message").fetchone()[0]
        return count
    finally:
        db.close()


def wait_queue_empty(srv: PigeonServer, timeout: float = 30.0) -> None:
    """Poll (bounded) until every queued message is done and removed."""
    deadline = time.monotonic() + timeout
    while queue_size(srv) and time.monotonic() < deadline:
        time.sleep(0.1)
    if queue_size(srv):
        raise AssertionError(json.dumps(queue_messages(srv), indent=1))


def set_mailbox(srv: PigeonServer, address: str, quota: int | None = None) -> None:
    """Create a mailbox in the account store, or set its quota (bytes; None: no limit).

    The same as ``pigeon mailbox add``, without starting a process; the running server
    reads the store on every lookup.
    """
    store = AccountStore(srv.data_dir / "accounts.db")
    try:
        store.add_mailbox(address, quota)
    finally:
        store.close()


def _case(case_id: str) -> dict[str, Any]:
    [path] = TRANSCRIPTS.glob(f"{case_id}-*.json")
    case = load(path)
    assert case["port"] == "mx"
    return case


def _server(case: dict[str, Any], root: Path, *, extra_config: bool = True) -> PigeonServer:
    sections, boxes = _sections(case.get("config", {}))
    return PigeonServer(root, sections=sections,
                        mailboxes=boxes if extra_config else list(DEFAULT_MAILBOXES))


@pytest.fixture
def play(tmp_path: Path) -> Iterator[Any]:
    """``play(case_id)``: a fresh server, the transcript played against it, and the
    queue drained; returns the server's mailboxes."""
    servers: list[PigeonServer] = []

    def _play(case_id: str) -> dict[str, list[Stored]]:
        case = _case(case_id)
        srv = _server(case, tmp_path / case_id).start()
        servers.append(srv)
        failures = run(case, "127.0.0.1", srv.port)
        assert failures == [], f"{case['id']}: {failures}"
        wait_queue_empty(srv)
        return mailboxes(srv)

    yield _play
    for srv in servers:
        srv.stop()


def _subject(stored: Stored) -> str:
    m = re.search(rb"^Subject: ([^\r\n]*)", stored.content, re.M)
    return m.group(1).decode() if m else ""


# -- data transparency --------------------------------------------------------------------


def test_011_first_line_dot_unstuffed(play: Any) -> None:
    boxes = play("011")
    assert list(boxes) == ["bob@example.com"]
    [msg] = boxes["bob@example.com"]
    assert msg.content == b".first\r\nSubject: dots\r\n\r\n.\r\n..two\r\nx\r\n"
    assert (msg.return_path, msg.delivered_to) == ("alice@example.org", "bob@example.com")


def test_013_final_crlf_kept(play: Any) -> None:
    boxes = play("013")
    assert list(boxes) == ["bob@example.com"]
    [msg] = boxes["bob@example.com"]
    assert msg.content == b"Subject: t\r\n\r\nlast line\r\n"
    assert len(msg.content) == 25


def test_022_eight_bit_body_stored_byte_exact(play: Any) -> None:
    boxes = play("022")
    assert list(boxes) == ["bob@example.com"]
    [msg] = boxes["bob@example.com"]
    assert msg.content.endswith("\r\n\r\nnaïve\r\n".encode())
    assert msg.content == (
        b"From: alice@example.org\r\nSubject: eight bit body\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + "naïve\r\n".encode()
    )


# -- smuggling: at most one message, never one from the smuggled sender ---------------------


@pytest.mark.parametrize("case_id", ["002", "003", "005"])
def test_smuggling_at_most_one_message(play: Any, case_id: str) -> None:
    boxes = play(case_id)
    every = [m for stored in boxes.values() for m in stored]
    assert len(every) <= 1, [m.path for m in every]
    assert all(m.return_path != "ceo@example.org" for m in every)
    assert all(b"Subject: smuggled" not in m.content[:200] for m in every)
    for msg in every:
        assert (msg.return_path, msg.delivered_to) == ("alice@example.org", "bob@example.com")
        if case_id == "002":
            assert b"Testing" in msg.content and b"NO SMUGGLING" in msg.content
        else:
            assert b"MAIL FROM:<ceo@example.org>" in msg.content


# -- size limits: nothing stored ----------------------------------------------------------


@pytest.mark.parametrize("case_id", ["018", "020", "021"])
def test_size_refusals_store_nothing(play: Any, case_id: str) -> None:
    assert play(case_id) == {}


# -- envelopes ----------------------------------------------------------------------------


def test_025_smtputf8_message_stored_unchanged(tmp_path: Path) -> None:
    # jörg's mailbox is made with a 1-byte quota so that the message waits in the queue
    # (452 4.2.2) and its queue row can be read; then the quota is lifted.
    case = _case("025")
    srv = _server(case, tmp_path / "025", extra_config=False).start()
    try:
        set_mailbox(srv, "jörg@example.com", quota=1)
        assert run(case, "127.0.0.1", srv.port) == []
        deadline = time.monotonic() + 20
        while True:
            [message] = queue_messages(srv)
            [rcpt] = message["recipients"]
            if rcpt["state"] == "deferred" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert message["reverse_path"] == "jörg@example.org"
        assert message["smtputf8"] is True
        assert (rcpt["address"], rcpt["state"]) == ("jörg@example.com", "deferred")
        assert (rcpt["last_reply"]["code"], rcpt["last_reply"]["enhanced"]) == (452, "4.2.2")
        set_mailbox(srv, "jörg@example.com", quota=None)
        retried = srv.pigeon("queue", "retry", message["queue_id"])
        assert retried.returncode == 0, retried.stderr
        wait_queue_empty(srv)
        boxes = mailboxes(srv)
    finally:
        srv.stop()
    assert list(boxes) == ["jörg@example.com"]
    [msg] = boxes["jörg@example.com"]
    assert (msg.return_path, msg.delivered_to) == ("jörg@example.org", "jörg@example.com")
    assert msg.queue_id == message["queue_id"]
    assert b"with UTF8SMTP" in msg.received
    assert msg.content == (
        "From: Jörg <jörg@example.org>\r\nTo: jörg@example.com\r\nSubject: grüße\r\n\r\n"
        "hallo\r\n"
    ).encode()


def test_029_source_routes_stripped(play: Any) -> None:
    boxes = play("029")
    assert list(boxes) == ["bob@example.com"]
    [msg] = boxes["bob@example.com"]
    assert (msg.return_path, msg.delivered_to) == ("alice@example.org", "bob@example.com")
    assert msg.content == b"From: alice@example.org\r\nSubject: route\r\n\r\nhi\r\n"


def test_031_null_reverse_path_stored(play: Any) -> None:
    boxes = play("031")
    assert list(boxes) == ["alice@example.com"]
    [msg] = boxes["alice@example.com"]
    assert msg.path.read_bytes().startswith(b"Return-Path: <>\r\n")
    assert msg.return_path == ""
    assert b"Subject: Undelivered Mail Returned to Sender\r\n" in msg.content


def test_032_bare_postmaster_delivered(play: Any) -> None:
    boxes = play("032")
    assert list(boxes) == ["postmaster@example.com"]
    [msg] = boxes["postmaster@example.com"]  # four RCPTs, one mailbox: one copy
    assert (msg.return_path, msg.delivered_to) == ("alice@example.org", "postmaster@example.com")
    assert msg.content == b"From: alice@example.org\r\nSubject: pm\r\n\r\nhi\r\n"


def test_036_pipelined_message_for_bob_and_carol(play: Any) -> None:
    boxes = play("036")
    assert sorted(boxes) == ["bob@example.com", "carol@example.com"]
    [bob] = boxes["bob@example.com"]
    [carol] = boxes["carol@example.com"]
    assert bob.queue_id == carol.queue_id  # one message, two recipients
    for msg in (bob, carol):
        assert msg.return_path == "alice@example.org"
        assert msg.content == b"From: alice@example.org\r\nSubject: pipe\r\n\r\nhi\r\n"


def test_038_nested_mail_keeps_first_sender(play: Any) -> None:
    boxes = play("038")
    assert list(boxes) == ["bob@example.com"]
    [msg] = boxes["bob@example.com"]
    assert msg.return_path == "alice@example.org"
    assert _subject(msg) == "nested"


def test_040_second_ehlo_resets_transaction(play: Any) -> None:
    boxes = play("040")
    assert list(boxes) == ["alice@example.com"]
    [msg] = boxes["alice@example.com"]
    assert (msg.return_path, msg.delivered_to) == ("carol@example.org", "alice@example.com")
    assert msg.content == (b"From: carol@example.org\r\nSubject: after re-ehlo\r\n\r\nhi\r\n")


def test_042_second_transaction_has_its_own_envelope(play: Any) -> None:
    boxes = play("042")
    assert sorted(boxes) == ["alice@example.com", "bob@example.com"]
    [one] = boxes["bob@example.com"]
    [two] = boxes["alice@example.com"]
    assert one.return_path == "alice@example.org"
    assert one.content == b"From: alice@example.org\r\nSubject: one\r\n\r\nfirst\r\n"
    assert two.return_path == "carol@example.org"
    assert two.content == b"From: carol@example.org\r\nSubject: two\r\n\r\nsecond\r\n"
    assert one.queue_id != two.queue_id


def test_054_only_the_message_below_the_hop_limit_stored(play: Any) -> None:
    boxes = play("054")
    assert list(boxes) == ["bob@example.com"]
    [msg] = boxes["bob@example.com"]
    assert _subject(msg) == "not a loop"
    assert msg.content.count(b"Received: from relay.example.net") == 50
