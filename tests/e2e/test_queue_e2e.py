"""End to end: the queue, local delivery, DSNs and the ``pigeon queue`` tools on a running
server.

Each test gets a fresh server. A message that must stay in the queue is sent to ``dave``, a
mailbox with a quota of 1 KiB: a message bigger than that is
accepted at RCPT (the mailbox is empty) and deferred at delivery with ``452 4.2.2``, and is
delivered once the quota is lifted.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import smtplib
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage, Message
from pathlib import Path
from typing import Any

import pytest

from .server import PigeonServer
from .test_transcript_after import (
    mailboxes,
    queue_messages,
    read_stored,
    set_mailbox,
    wait_queue_empty,
)

ALIASES = """\
# test aliases
team: carol, someone@[127.0.0.1]
ghost: nobody-here
"""
DAVE = "dave@example.com"
BIG = 3000  # bytes of filler: more than dave's 1 KiB quota
Queue = list[dict[str, Any]]


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[PigeonServer]:
    root = tmp_path / "pigeon"
    root.mkdir()
    (root / "aliases").write_text(ALIASES, encoding="utf-8")
    server = PigeonServer(root, sections={"aliases": {"file": str(root / "aliases")}})
    server.start()
    yield server
    server.stop()


def cli(srv: PigeonServer, *args: str) -> str:
    """Run ``pigeon ARGS``; it must succeed; return its output."""
    result = srv.pigeon(*args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def message(subject: str, *, sender: str = "alice@example.com", size: int = 0) -> bytes:
    body = ("y" * 70 + "\r\n") * (size // 72) if size else "hello\r\n"
    return (
        f"From: {sender}\r\nTo: someone\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@client.example.net>\r\n\r\n{body}"
    ).encode()


def send(srv: PigeonServer, reverse_path: str, forward_paths: list[str], content: bytes) -> str:
    """One SMTP transaction; every recipient must be accepted; return the queue id."""
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.example.net",
                      timeout=30) as client:
        client.ehlo()
        assert client.mail(reverse_path)[0] == 250
        for forward_path in forward_paths:
            assert client.rcpt(forward_path) == (250, b"2.1.5 Ok"), forward_path
        code, reply = client.data(content)
    assert code == 250, reply
    m = re.fullmatch(rb"2\.0\.0 Ok: queued as ([0-9A-Z]+)", reply)
    assert m is not None, reply
    return m.group(1).decode()


def wait_until(srv: PigeonServer, predicate: Callable[[], object], what: str,
               timeout: float = 20.0) -> None:
    """Poll ``predicate`` (bounded) until it is true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}; queue: {json.dumps(queue_messages(srv), indent=1)}")
        time.sleep(0.05)


def wait_attempt(srv: PigeonServer, queue_id: str, address: str, attempt: int = 1) -> None:
    """Wait until the server has recorded the result of an attempt (its log line)."""
    line = f"{queue_id}: to=<{address}> attempt={attempt} status="
    wait_until(srv, lambda: line in srv.log(), f"no {line!r}")


def in_queue(srv: PigeonServer, queue_id: str) -> bool:
    """The queue index still has the message (a read-only look)."""
    db = sqlite3.connect(f"file:{srv.data_dir / 'queue.db'}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT 1 FROM message WHERE queue_id = ?", (queue_id,)).fetchone()
    finally:
        db.close()
    return row is not None


def wait_gone(srv: PigeonServer, queue_id: str) -> None:
    """Wait until the message has left the queue."""
    wait_until(srv, lambda: not in_queue(srv, queue_id), f"{queue_id} still queued")


def entry(messages: Queue, queue_id: str) -> dict[str, Any] | None:
    return next((m for m in messages if m["queue_id"] == queue_id), None)


def recipients(srv: PigeonServer, queue_id: str) -> dict[str, dict[str, Any]]:
    """The message's recipients by address, from ``pigeon queue list --json``."""
    found = entry(queue_messages(srv), queue_id)
    assert found is not None, queue_id
    return {r["address"]: r for r in found["recipients"]}


def deferred_for_dave(srv: PigeonServer, subject: str = "for dave", *,
                      add_mailbox: bool = True) -> str:
    """Queue a message that dave's quota defers; return its queue id once deferred."""
    if add_mailbox:
        set_mailbox(srv, DAVE, quota=1024)
    queue_id = send(srv, "alice@example.com", [DAVE], message(subject, size=BIG))
    wait_attempt(srv, queue_id, DAVE)
    rcpt = recipients(srv, queue_id)[DAVE]
    assert (rcpt["state"], rcpt["attempts"]) == ("deferred", 1)
    reply = rcpt["last_reply"]
    assert (reply["code"], reply["enhanced"], reply["text"]) == (452, "4.2.2", "Mailbox full")
    return queue_id


def lift_quota(srv: PigeonServer) -> None:
    set_mailbox(srv, DAVE, quota=None)


def parse(path: Path) -> Message:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def dsn_report(path: Path) -> tuple[EmailMessage, list[Message]]:
    """Parse a DSN (RFC 3464); return it and its per-message + per-recipient field blocks."""
    dsn = parse(path)
    assert isinstance(dsn, EmailMessage)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    [status] = [p for p in dsn.iter_parts() if p.get_content_type() == "message/delivery-status"]
    blocks = status.get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2
    return dsn, blocks


def original_headers(dsn: EmailMessage) -> str:
    [part] = [p for p in dsn.iter_parts()
              if p.get_content_type() in ("text/rfc822-headers", "message/rfc822")]
    return part.as_string()


# -- delivery and recipient states --------------------------------------------------------


def test_two_users_and_an_alias_to_local_and_remote(srv: PigeonServer) -> None:
    content = message("to several")
    queue_id = send(srv, "alice@example.org",
                    ["bob@example.com", "alice@example.com", "team@example.com"], content)
    wait_attempt(srv, queue_id, "someone@[127.0.0.1]")
    rcpts = recipients(srv, queue_id)
    assert list(rcpts) == ["bob@example.com", "alice@example.com", "carol@example.com",
                           "someone@[127.0.0.1]"]
    for address in ("bob@example.com", "alice@example.com", "carol@example.com"):
        r = rcpts[address]
        assert (r["route"], r["state"], r["attempts"]) == ("local", "delivered", 1)
        assert (r["last_reply"]["code"], r["last_reply"]["enhanced"]) == (250, "2.0.0")
    assert rcpts["carol@example.com"]["original"] == "team@example.com"
    remote = rcpts["someone@[127.0.0.1]"]
    # No remote agent yet: 4.4.0; with one, the refused connection to port 25: 4.x.x.
    assert (remote["route"], remote["state"], remote["original"]) == (
        "remote", "deferred", "team@example.com")
    assert remote["last_reply"]["code"] // 100 == 4
    assert remote["last_reply"]["enhanced"].startswith("4.")

    boxes = mailboxes(srv)
    assert sorted(boxes) == ["alice@example.com", "bob@example.com", "carol@example.com"]
    for address, stored in boxes.items():
        [msg] = stored
        assert (msg.return_path, msg.delivered_to) == ("alice@example.org", address)
        assert msg.queue_id == queue_id
        assert msg.content == content
    # The message stays queued for its remote recipient only.
    assert [m["queue_id"] for m in queue_messages(srv)] == [queue_id]


# -- DSNs ---------------------------------------------------------------------------------


def _one_failure_dsn(srv: PigeonServer, queue_id: str, final: str,
                     original: str | None) -> None:
    wait_gone(srv, queue_id)
    wait_queue_empty(srv)  # the DSN itself delivered
    boxes = mailboxes(srv)
    assert list(boxes) == ["alice@example.com"]
    [stored] = boxes["alice@example.com"]
    assert (stored.return_path, stored.delivered_to) == ("", "alice@example.com")
    dsn, blocks = dsn_report(stored.path)
    assert dsn["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.com>"
    assert [a.addr_spec for a in dsn["To"].addresses] == ["alice@example.com"]
    assert blocks[0]["Reporting-MTA"] == "dns; mx.example.com"
    [rcpt] = blocks[1:]
    assert rcpt["Final-Recipient"] == f"rfc822; {final}"
    # Original-Recipient only when the address was rewritten (RFC 3464 §2.3.1).
    assert rcpt["Original-Recipient"] == (original and f"rfc822; {original}")
    assert rcpt["Action"] == "failed"
    assert re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", rcpt["Status"])
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Diagnostic-Code"].startswith("smtp; 550 5.1.1 ")
    headers = original_headers(dsn)
    assert f"\tid {queue_id}" in headers
    assert "Subject: doomed" in headers
    assert "Message-ID: <doomed@client.example.net>" in headers


def test_alias_to_a_missing_mailbox_gives_one_dsn(srv: PigeonServer) -> None:
    queue_id = send(srv, "alice@example.com", ["ghost@example.com"], message("doomed"))
    _one_failure_dsn(srv, queue_id, "nobody-here@example.com", "ghost@example.com")


def test_mailbox_removed_after_rcpt_gives_one_dsn(srv: PigeonServer) -> None:
    set_mailbox(srv, DAVE)
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.example.net",
                      timeout=30) as client:
        client.ehlo()
        assert client.mail("alice@example.com")[0] == 250
        assert client.rcpt(DAVE)[0] == 250
        cli(srv, "mailbox", "del", DAVE)
        code, reply = client.data(message("doomed"))
    assert code == 250, reply
    queue_id = reply.decode().rpartition(" ")[2]
    _one_failure_dsn(srv, queue_id, DAVE, None)


def test_null_reverse_path_failure_gives_no_dsn(srv: PigeonServer) -> None:
    queue_id = send(srv, "<>", ["ghost@example.com"], message("bounce of a bounce"))
    wait_gone(srv, queue_id)
    assert queue_messages(srv) == []
    assert mailboxes(srv) == {}
    assert re.search(rf"{queue_id}: to=<nobody-here@example.com> attempt=1 status=failed",
                     srv.log())
    assert "DSN" not in srv.log().split(f"{queue_id}: to=", 1)[1]


# -- pigeon queue --------------------------------------------------------------------------


def test_queue_list_json(srv: PigeonServer) -> None:
    queue_id = deferred_for_dave(srv)
    [m] = queue_messages(srv)
    assert m["queue_id"] == queue_id
    assert m["reverse_path"] == "alice@example.com"
    assert m["size"] == (srv.data_dir / "spool" / "queue" / queue_id).stat().st_size
    assert m["size"] > BIG
    assert (m["client_address"], m["client_name"]) == ("127.0.0.1", "client.example.net")
    assert (m["smtputf8"], m["is_dsn"], m["body"]) == (False, False, None)
    assert m["arrival_iso"].endswith("+00:00")
    [r] = m["recipients"]
    assert {k: r[k] for k in ("address", "original", "route", "state", "attempts")} == {
        "address": DAVE, "original": DAVE, "route": "local", "state": "deferred", "attempts": 1}
    assert r["next_attempt_at"] >= m["arrival"] + 300  # retry_min, pushed out before trying
    assert r["last_reply"] == {"status": "deferred", "code": 452, "enhanced": "4.2.2",
                               "text": "Mailbox full", "remote_host": None}


def test_queue_list_text(srv: PigeonServer) -> None:
    assert cli(srv, "queue", "list") == "Mail queue is empty\n"
    queue_id = deferred_for_dave(srv)
    size = (srv.data_dir / "spool" / "queue" / queue_id).stat().st_size
    lines = cli(srv, "queue", "list").splitlines()
    assert lines[0].split() == ["-Queue", "ID-", "--Size--", "----Arrival", "Time----",
                                "-Sender/Recipient-------"]
    assert lines[1].split()[:2] == [queue_id, str(size)]
    assert lines[1].endswith(" alice@example.com")
    assert lines[2].strip() == "(452 4.2.2 Mailbox full)"
    assert lines[3].strip() == f"{DAVE} [deferred]"
    assert lines[-1] == f"-- {size} bytes in 1 message."


def test_queue_show_with_content(srv: PigeonServer) -> None:
    queue_id = deferred_for_dave(srv)
    shown = cli(srv, "queue", "show", queue_id)
    assert f"queue id:      {queue_id}\n" in shown
    assert "reverse-path:  <alice@example.com>\n" in shown
    assert "client:        client.example.net [127.0.0.1]\n" in shown
    assert f"recipient:     {DAVE} route=local state=deferred attempts=1\n" in shown
    assert "  last reply:   452 4.2.2 Mailbox full\n" in shown
    spool = (srv.data_dir / "spool" / "queue" / queue_id).read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "pigeon", "queue", "show", queue_id, "--content",
         "-c", str(srv.config_path)], capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    header, _, content = result.stdout.partition(b"\n\n")
    assert header + b"\n" == shown.encode()
    assert content == spool
    assert spool.startswith(b"Received: from client.example.net ([127.0.0.1])\r\n")
    assert spool.endswith(message("for dave", size=BIG))
    unknown = srv.pigeon("queue", "show", "NOSUCHID")
    assert (unknown.returncode, unknown.stdout) == (1, "")
    assert unknown.stderr == "pigeon queue: no message with queue id NOSUCHID\n"


def test_queue_hold_and_release(srv: PigeonServer) -> None:
    queue_id = deferred_for_dave(srv)
    assert cli(srv, "queue", "hold", queue_id) == f"{queue_id}: 1 recipient held\n"
    assert cli(srv, "queue", "list").splitlines()[1].startswith(f"{queue_id}! ")
    lift_quota(srv)
    assert cli(srv, "queue", "flush") == "0 recipients scheduled for delivery now\n"
    # A later message to dave is delivered at once; the held one stays where it was.
    later = send(srv, "alice@example.com", [DAVE], message("later"))
    wait_gone(srv, later)
    rcpt = recipients(srv, queue_id)[DAVE]
    assert (rcpt["state"], rcpt["attempts"]) == ("held", 1)
    assert [read_stored(p).queue_id for p in srv.maildir_files(DAVE)] == [later]

    assert cli(srv, "queue", "release", queue_id) == f"{queue_id}: 1 recipient released\n"
    cli(srv, "queue", "flush")
    wait_gone(srv, queue_id)
    assert sorted(read_stored(p).queue_id for p in srv.maildir_files(DAVE)) == sorted(
        [later, queue_id])


def test_queue_retry(srv: PigeonServer) -> None:
    queue_id = deferred_for_dave(srv)
    assert cli(srv, "queue", "retry", queue_id) == (
        f"{queue_id}: 1 recipient scheduled for delivery now\n")
    wait_attempt(srv, queue_id, DAVE, 2)
    rcpt = recipients(srv, queue_id)[DAVE]
    assert (rcpt["state"], rcpt["attempts"]) == ("deferred", 2)  # still over quota
    assert srv.maildir_files(DAVE) == []
    lift_quota(srv)
    cli(srv, "queue", "retry", queue_id)
    wait_gone(srv, queue_id)
    [stored] = srv.maildir_files(DAVE)
    assert read_stored(stored).queue_id == queue_id


def test_queue_flush(srv: PigeonServer) -> None:
    first = deferred_for_dave(srv, "first")
    second = deferred_for_dave(srv, "second", add_mailbox=False)
    lift_quota(srv)
    assert cli(srv, "queue", "flush") == "2 recipients scheduled for delivery now\n"
    wait_gone(srv, first)
    wait_gone(srv, second)
    assert sorted(read_stored(p).queue_id for p in srv.maildir_files(DAVE)) == sorted(
        [first, second])


def test_queue_delete(srv: PigeonServer) -> None:
    queue_id = deferred_for_dave(srv)
    assert cli(srv, "queue", "delete", queue_id) == f"{queue_id}: deleted\n"
    assert queue_messages(srv) == []
    assert not (srv.data_dir / "spool" / "queue" / queue_id).exists()
    lift_quota(srv)
    cli(srv, "queue", "flush")
    later = send(srv, "alice@example.com", [DAVE], message("later"))
    wait_gone(srv, later)
    assert [read_stored(p).queue_id for p in srv.maildir_files(DAVE)] == [later]
    assert srv.maildir_files("alice@example.com") == []  # no DSN for a deleted message
    result = srv.pigeon("queue", "delete", queue_id)
    assert result.returncode == 1
    assert result.stderr == f"pigeon queue: no message with queue id {queue_id}\n"


def test_queue_bounce(srv: PigeonServer) -> None:
    queue_id = deferred_for_dave(srv)
    assert cli(srv, "queue", "bounce", queue_id) == (
        f"{queue_id}: 1 recipient failed; the server sends the DSN on its next pass\n")
    wait_gone(srv, queue_id)
    wait_queue_empty(srv)
    assert srv.maildir_files(DAVE) == []
    [stored] = srv.maildir_files("alice@example.com")
    dsn, blocks = dsn_report(stored)
    [rcpt] = blocks[1:]
    assert rcpt["Final-Recipient"] == f"rfc822; {DAVE}"
    assert (rcpt["Action"], rcpt["Status"]) == ("failed", "5.0.0")
    assert "delivery cancelled by administrator" in rcpt["Diagnostic-Code"]
    assert "Subject: for dave" in original_headers(dsn)


# -- restart ------------------------------------------------------------------------------


def test_deferred_message_survives_restart(srv: PigeonServer) -> None:
    queue_id = deferred_for_dave(srv)
    before = queue_messages(srv)
    assert srv.stop() == 0
    srv.start()
    assert queue_messages(srv) == before
    assert re.search(r"queue: resumed 1 messages \(1 recipients\)", srv.log())
    lift_quota(srv)
    cli(srv, "queue", "retry", queue_id)
    wait_gone(srv, queue_id)
    [stored] = srv.maildir_files(DAVE)
    assert read_stored(stored).queue_id == queue_id
