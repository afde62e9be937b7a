"""DSNs (RFC 3464 multipart/report) and the NOTIFY rules (RFC 3461 §4.1)."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage, Message
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.queue.dsn import FULL_CONTENT_LIMIT, build_dsn, should_notify
from pigeon.queue.model import AttemptResult, QueuedMessage, QueuedRecipient

HEADERS = (
    b"Received: from client.example ([192.0.2.9])\r\n\tby mx.example.com (Pigeon) with ESMTP"
    b"\r\n\tid 0ABC; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    b"From: Alice <alice@remote.example>\r\nTo: bob@example.com\r\n"
    b"Subject: quarterly numbers\r\nMessage-ID: <q3@remote.example>\r\n"
)
CONTENT = HEADERS + b"\r\nHello Bob,\r\n--\r\nAlice\r\n"
ARRIVAL = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 +0000
NOW = ARRIVAL + 3600

UNKNOWN = AttemptResult("failed", 550, "5.1.1", "<bob@example.com>: User unknown")
REMOTE = AttemptResult("failed", 554, "5.7.1", "Spam rejected", "mx.remote.example[192.0.2.7]")
DEFERRED = AttemptResult("deferred", 451, "4.4.1", "Connection timed out",
                         "mx.remote.example[192.0.2.7]")


def recipient(address: str = "bob@example.com", *, result: AttemptResult | None = UNKNOWN,
              original: str | None = None, **kwargs: object) -> QueuedRecipient:
    return QueuedRecipient(id=1, address=address, original=original or address,
                           attempts=1 if result else 0, last_result=result,
                           **kwargs)  # type: ignore[arg-type]


def queued(tmp_path: Path, content: bytes = CONTENT, **kwargs: object) -> QueuedMessage:
    spool = tmp_path / "0ABC"
    spool.write_bytes(content)
    fields: dict[str, object] = {
        "queue_id": "0ABC", "reverse_path": "alice@remote.example", "spool_path": spool,
        "size": len(content), "arrival": ARRIVAL,
    }
    fields.update(kwargs)
    return QueuedMessage(**fields)  # type: ignore[arg-type]


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def status_blocks(report: EmailMessage) -> list[Message]:
    part = report.get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    return blocks


def test_failed_dsn_structure_and_fields(tmp_path: Path) -> None:
    data = build_dsn(queued(tmp_path), [(recipient(), "failed")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    report = parse(data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.com>"
    assert b"\r\nTo: <alice@remote.example>\r\n" in data
    assert report["To"].addresses[0].addr_spec == "alice@remote.example"
    assert report["Subject"] == "Undelivered Mail Returned to Sender"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["MIME-Version"] == "1.0"
    assert report["Date"] == "Tue, 14 Nov 2023 23:13:20 +0000"
    assert report["Message-ID"].endswith("@mx.example.com>")
    assert "0ABC" in report["Message-ID"]
    assert not report.defects

    text, _status, original = report.get_payload()
    assert text.get_content_type() == "text/plain"
    body = text.get_content()
    assert "This is the mail system at host mx.example.com." in body
    assert ("<bob@example.com>: failed: 550 5.1.1 <bob@example.com>: User unknown"
            in body.splitlines())

    per_message, per_recipient = status_blocks(report)
    assert dict(per_message.items()) == {
        "Reporting-MTA": "dns; mx.example.com",
        "X-Pigeon-Queue-ID": "0ABC",
        "Arrival-Date": "Tue, 14 Nov 2023 22:13:20 +0000",
    }
    assert dict(per_recipient.items()) == {
        "Final-Recipient": "rfc822; bob@example.com",
        "Action": "failed",
        "Status": "5.1.1",
        "Diagnostic-Code": "smtp; 550 5.1.1 <bob@example.com>: User unknown",
        "Last-Attempt-Date": "Tue, 14 Nov 2023 23:13:20 +0000",
    }

    assert original.get_content_type() == "text/rfc822-headers"
    assert original["Content-Description"] == "Undelivered Message Headers"
    assert original.get_payload(decode=True) == HEADERS


def test_ret_hdrs_is_the_default_and_headers_only(tmp_path: Path) -> None:
    for ret in (None, "HDRS"):
        data = build_dsn(queued(tmp_path, ret=ret), [(recipient(), "failed")],
                         reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
        assert b"Hello Bob" not in data


def test_ret_full_returns_the_message(tmp_path: Path) -> None:
    data = build_dsn(queued(tmp_path, ret="FULL"), [(recipient(), "failed")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    report = parse(data)
    original = report.get_payload()[2]
    assert original.get_content_type() == "message/rfc822"
    [inner] = original.get_payload()
    assert inner["Subject"] == "quarterly numbers"
    assert inner.get_payload() == "Hello Bob,\r\n--\r\nAlice\r\n"
    assert CONTENT in data


def test_ret_full_over_the_limit_returns_headers_and_says_so(tmp_path: Path) -> None:
    big = HEADERS + b"\r\n" + b"x" * 998 + b"\r\n"
    big += b"y" * (FULL_CONTENT_LIMIT - len(big) + 1)
    msg = queued(tmp_path, big, ret="FULL")
    assert msg.size == FULL_CONTENT_LIMIT + 1
    data = build_dsn(msg, [(recipient(), "failed")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    assert len(data) < 10_000
    report = parse(data)
    assert report.get_payload()[2].get_content_type() == "text/rfc822-headers"
    text = report.get_payload()[0].get_content()
    assert ("The message is larger than 1024 KiB, so only its header section is returned."
            in text.splitlines())


def test_ret_full_binarymime_returns_headers(tmp_path: Path) -> None:
    data = build_dsn(queued(tmp_path, ret="FULL", body="BINARYMIME"), [(recipient(), "failed")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    assert parse(data).get_payload()[2].get_content_type() == "text/rfc822-headers"


def test_remote_mta_envid_and_orcpt(tmp_path: Path) -> None:
    rcpt = recipient("carol@remote.example", result=REMOTE,
                     orcpt=("rfc822", "Carol@Remote.example"))
    data = build_dsn(queued(tmp_path, envid="QQ314159"), [(rcpt, "failed")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    per_message, per_recipient = status_blocks(parse(data))
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert dict(per_recipient.items()) == {
        "Original-Recipient": "rfc822; Carol@Remote.example",
        "Final-Recipient": "rfc822; carol@remote.example",
        "Action": "failed",
        "Status": "5.7.1",
        "Remote-MTA": "dns; mx.remote.example",
        "Diagnostic-Code": "smtp; 554 5.7.1 Spam rejected",
        "Last-Attempt-Date": "Tue, 14 Nov 2023 23:13:20 +0000",
    }


def test_original_recipient_when_expanded_from_an_alias(tmp_path: Path) -> None:
    rcpt = recipient("bob@example.com", original="team@example.com")
    same = recipient("carol@example.com", original="Carol@example.com")
    same.id = 2
    data = build_dsn(queued(tmp_path), [(rcpt, "failed"), (same, "failed")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    _, first, second = status_blocks(parse(data))
    assert first["Original-Recipient"] == "rfc822; team@example.com"
    assert "Original-Recipient" not in second


def test_delayed_dsn(tmp_path: Path) -> None:
    rcpt = recipient("carol@remote.example", result=DEFERRED)
    data = build_dsn(queued(tmp_path), [(rcpt, "delayed")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW,
                     will_retry_until=ARRIVAL + 5 * 86400)
    report = parse(data)
    assert report["Subject"] == "Delayed Mail (still being retried)"
    _, block = status_blocks(report)
    assert block["Action"] == "delayed"
    assert block["Status"] == "4.4.1"
    assert block["Will-Retry-Until"] == "Sun, 19 Nov 2023 22:13:20 +0000"
    text = report.get_payload()[0].get_content()
    assert "This is only a warning: you do not need to send the message again." in text
    assert report.get_payload()[2]["Content-Description"] == "Message Headers"


def test_success_dsn(tmp_path: Path) -> None:
    ok = AttemptResult("delivered", 250, "2.0.0", "Delivered to mailbox")
    data = build_dsn(queued(tmp_path), [(recipient(result=ok), "delivered")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    report = parse(data)
    assert report["Subject"] == "Successful Mail Delivery Report"
    _, block = status_blocks(report)
    assert (block["Action"], block["Status"]) == ("delivered", "2.0.0")


@pytest.mark.parametrize(
    ("action", "status"),
    [("failed", "5.0.0"), ("delayed", "4.0.0"), ("relayed", "2.0.0"), ("expanded", "2.0.0")],
)
def test_default_status_without_a_result(tmp_path: Path, action: str, status: str) -> None:
    data = build_dsn(queued(tmp_path), [(recipient(result=None), action)],  # type: ignore[list-item]
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    _, block = status_blocks(parse(data))
    assert dict(block.items()) == {
        "Final-Recipient": "rfc822; bob@example.com", "Action": action, "Status": status,
    }


def test_mixed_failed_and_expired_in_one_report(tmp_path: Path) -> None:
    expired = recipient("carol@remote.example",
                        result=AttemptResult("failed", 451, "4.4.7", "delivery time expired"))
    expired.id = 2
    data = build_dsn(queued(tmp_path), [(recipient(), "failed"), (expired, "failed")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    _, first, second = status_blocks(parse(data))
    assert [first["Status"], second["Status"]] == ["5.1.1", "4.4.7"]


@pytest.mark.parametrize(
    ("kwargs", "entries_empty", "message"),
    [
        ({"reverse_path": ""}, False, "null reverse-path"),
        ({"is_dsn": True}, False, "about a DSN"),
        ({}, True, "at least one recipient"),
    ],
)
def test_refused(tmp_path: Path, kwargs: dict[str, object], entries_empty: bool,
                 message: str) -> None:
    entries = [] if entries_empty else [(recipient(), "failed")]
    with pytest.raises(ValueError, match=message):
        build_dsn(queued(tmp_path, **kwargs), entries,  # type: ignore[arg-type]
                  reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)


def test_unreadable_spool_still_reports(tmp_path: Path) -> None:
    msg = queued(tmp_path)
    msg.spool_path.unlink()
    report = parse(build_dsn(msg, [(recipient(), "failed")], reporting_mta="mx.example.com",
                             arrival_date=ARRIVAL, now=NOW))
    assert len(report.get_payload()) == 2
    assert ("The original message could not be read, so it is not returned."
            in report.get_payload()[0].get_content())


def test_utf8_addresses_use_global_types(tmp_path: Path) -> None:
    rcpt = recipient("jörg@example.com", result=AttemptResult("failed", 550, "5.1.1", "unknown"))
    data = build_dsn(queued(tmp_path, smtputf8=True), [(rcpt, "failed")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    assert b"Content-Type: message/global-delivery-status\r\n" in data
    assert "Final-Recipient: utf-8; jörg@example.com\r\n".encode() in data
    assert b"Content-Type: message/global-headers\r\n" in data
    report = parse(data)
    assert report.get_content_type() == "multipart/report"


def test_header_only_message_and_lf_spool(tmp_path: Path) -> None:
    data = build_dsn(queued(tmp_path, b"Subject: a\nX: b\n"), [(recipient(), "failed")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    original = parse(data).get_payload()[2]
    assert original.get_payload(decode=True) == b"Subject: a\r\nX: b\r\n"


def test_diagnostic_text_is_sanitised(tmp_path: Path) -> None:
    nasty = AttemptResult("failed", 550, "5.0.0", "bad\x00text\x1b[31m ünïcode")
    data = build_dsn(queued(tmp_path), [(recipient(result=nasty), "failed")],
                     reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    _, block = status_blocks(parse(data))
    assert block["Diagnostic-Code"] == "smtp; 550 5.0.0 bad text [31m ?n?code"
    assert data.isascii()


@given(st.binary(max_size=2000), st.sampled_from([None, "FULL", "HDRS"]))
def test_any_content_gives_a_parseable_report(content: bytes, ret: str | None) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data = build_dsn(queued(Path(tmp), content, ret=ret), [(recipient(), "failed")],
                         reporting_mta="mx.example.com", arrival_date=ARRIVAL, now=NOW)
    report = parse(data)
    assert report.get_content_type() == "multipart/report"
    assert status_blocks(report)[1]["Action"] == "failed"


# -- NOTIFY ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("notify", "action", "expected"),
    [
        (None, "failed", True),
        (None, "delayed", True),
        (None, "delivered", False),
        (None, "relayed", False),
        (frozenset(), "failed", False),
        (frozenset(), "delayed", False),
        (frozenset(), "delivered", False),
        (frozenset({"SUCCESS"}), "delivered", True),
        (frozenset({"SUCCESS"}), "relayed", True),
        (frozenset({"SUCCESS"}), "expanded", True),
        (frozenset({"SUCCESS"}), "failed", False),
        (frozenset({"FAILURE"}), "failed", True),
        (frozenset({"FAILURE"}), "delayed", False),
        (frozenset({"DELAY"}), "delayed", True),
        (frozenset({"SUCCESS", "FAILURE", "DELAY"}), "delayed", True),
    ],
)
def test_should_notify(notify: frozenset[str] | None, action: str, expected: bool) -> None:
    rcpt = recipient(notify=notify)
    assert should_notify(rcpt, action) is expected  # type: ignore[arg-type]


def test_should_notify_never_for_dsn_or_null_reverse_path(tmp_path: Path) -> None:
    rcpt = recipient()
    assert should_notify(rcpt, "failed", message=queued(tmp_path)) is True
    assert should_notify(rcpt, "failed", message=queued(tmp_path, is_dsn=True)) is False
    assert should_notify(rcpt, "failed", message=queued(tmp_path, reverse_path="")) is False
