"""Bulk sending: the recipient list, templates, the state log, the scheduler, the runner."""

from __future__ import annotations

import asyncio
import csv
import email
import email.policy
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.mail.reply import Reply
from pigeon.mua import bulk_state
from pigeon.mua.addresses import parse_one_address
from pigeon.mua.bulk import BulkOptions, BulkRun, DomainScheduler, RateLimiter, write_report
from pigeon.mua.bulk_render import (
    BulkError,
    BulkRenderer,
    BulkTemplates,
    RenderError,
    parse_recipients,
)
from pigeon.mua.bulk_state import StateError, StateLog, parse_state
from pigeon.mua.send import ServerTarget
from pigeon.net.smtp_client import TransactionResult

from .fakes import MAIL_OK, RCPT_OK, Server, lost

AUTHOR = parse_one_address("News <news@example.com>")
TARGET = ServerTarget("127.0.0.1", 2525, "plain", helo="client.example")


def csv_text(rows: list[tuple[str, ...]], header: tuple[str, ...] = ("email", "name")) -> str:
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


def people(n: int, domains: tuple[str, ...] = ("a.example", "b.example", "c.example")) -> str:
    return csv_text([(f"user{i}@{domains[i % len(domains)]}", f"Name {i}") for i in range(n)])


def renderer(**kw: object) -> BulkRenderer:
    base: dict[str, object] = {"subject": "Hi {{ name }}", "text": "Hello {{ name }} <{{ email }}>",
                               "author": AUTHOR}
    base.update(kw)
    return BulkRenderer(BulkTemplates(**base))  # type: ignore[arg-type]


# ------------------------------------------------------------------ recipient list


def test_parse_recipients_skips_invalid_and_duplicates() -> None:
    text = csv_text([("bob@example.com", "Bob"), ("not an address", "X"), ("", "Empty"),
                     ("BOB@example.com", "Again"), ("carol@bücher.example", "Carol"),
                     ("Dave <dave@example.com>", "Dave")])
    result = parse_recipients(text)
    assert [r.email for r in result.recipients] == ["bob@example.com",
                                                    "carol@xn--bcher-kva.example"]
    assert [(s.row, s.status) for s in result.skipped] == [
        (2, "invalid"), (3, "invalid"), (4, "duplicate"), (6, "invalid")]
    assert result.recipients[0].address.display_name == "Bob"
    assert result.recipients[0].variables == {"email": "bob@example.com", "name": "Bob"}
    assert result.rows == 6


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("name,address\nx,y\n", "'email' column"),
    ("email,email\na@b.c,d@e.f\n", "repeats the column"),
])
def test_parse_recipients_refuses(text: str, message: str) -> None:
    with pytest.raises(BulkError, match=message):
        parse_recipients(text)


@given(st.text(max_size=300))
def test_parse_recipients_only_raises_bulk_error(text: str) -> None:
    try:
        result = parse_recipients("email,x\n" + text)
    except BulkError:
        return
    keys = [r.key for r in result.recipients]
    assert len(keys) == len(set(keys))


# ------------------------------------------------------------------ templates


def test_render_subject_text_html_and_list_unsubscribe() -> None:
    r = renderer(html="<p>{{ name }}</p>", list_unsubscribe=(
        "mailto:unsub@example.com?subject={{ email }}", "https://example.com/u/{{ email }}"),
        one_click=True, headers=(("X-Row", "{{ row['name'] }}"),))
    people_list = parse_recipients(csv_text([("bob@a.example", "<Bob & Co>")]))
    m = r.render(people_list.recipients[0])
    assert m.recipients == ["bob@a.example"] and m.reverse_path == "news@example.com"
    msg = email.message_from_bytes(m.content, policy=email.policy.default)
    assert msg["Subject"] == "Hi <Bob & Co>"
    assert msg["To"] == '"<Bob & Co>" <bob@a.example>'
    assert msg["List-Unsubscribe"] == ("<mailto:unsub@example.com?subject=bob@a.example>, "
                                       "<https://example.com/u/bob@a.example>")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["X-Row"] == "<Bob & Co>"
    html = msg.get_body(("html",))
    assert html is not None and "&lt;Bob &amp; Co&gt;" in html.get_content()


def test_render_whole_message_template() -> None:
    r = BulkRenderer(BulkTemplates(message=(
        "From: Shop <shop@example.com>\nSubject: Ihre Bestellung, {{ name }}\n"
        "Bcc: spy@example.com\n\nGrüße, {{ name }}!\n"), list_unsubscribe=("https://example.com/u",)))
    person = parse_recipients(csv_text([("bob@a.example", "Jörg")])).recipients[0]
    m = r.render(person)
    assert m.reverse_path == "shop@example.com" and m.recipients == ["bob@a.example"]
    assert m.content.isascii() and b"spy@" not in m.content
    msg = email.message_from_bytes(m.content, policy=email.policy.default)
    assert msg["Subject"] == "Ihre Bestellung, Jörg"
    assert msg["To"] == "Jörg <bob@a.example>"
    assert msg["Message-ID"] and msg["Date"]
    assert msg.get_content().replace("\r\n", "\n") == "Grüße, Jörg!\n"


def test_render_errors() -> None:
    person = parse_recipients(csv_text([("bob@a.example", "Bob")])).recipients[0]
    with pytest.raises(RenderError, match="undefined"):
        renderer(text="{{ missing }}").render(person)
    with pytest.raises(RenderError, match="no From"):
        BulkRenderer(BulkTemplates(message="Subject: x\n\nbody\n")).render(person)
    with pytest.raises(RenderError, match="not a mailto"):
        renderer(list_unsubscribe=("javascript:alert(1)",)).render(person)
    with pytest.raises(RenderError, match="https"):
        renderer(list_unsubscribe=("mailto:u@example.com",), one_click=True).render(person)


@pytest.mark.parametrize(("kw", "message"), [
    ({"message": "x", "subject": "y"}, "not both"),
    ({"subject": "y"}, "--text and/or --html"),
    ({"text": "x"}, "--from is required"),
    ({"text": "{% if %}", "author": AUTHOR}, "text template"),
    ({"text": "x", "author": AUTHOR, "one_click": True}, "--one-click needs"),
])
def test_bad_templates(kw: dict[str, object], message: str) -> None:
    with pytest.raises(BulkError, match=message):
        BulkRenderer(BulkTemplates(**kw))  # type: ignore[arg-type]


def test_fingerprint_follows_the_templates() -> None:
    assert renderer().fingerprint() == renderer().fingerprint()
    assert renderer().fingerprint() != renderer(subject="Other").fingerprint()


# ------------------------------------------------------------------ state log


def test_state_log_records_survive_and_torn_line_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "state"
    log = StateLog(path, "abc")
    log.record("sent", "a@x.example", "Q1")
    log.record("failed", "b@x.example", "550 5.1.1 no\tsuch\nuser")
    log.close()
    with open(path, "ab") as f:
        f.write(b"sent\tc@x.example\tQ")  # a torn record: the process died mid-write
    campaign, records = parse_state(path.read_bytes())
    assert campaign == "abc" and sorted(records) == ["a@x.example", "b@x.example"]
    assert records["b@x.example"].detail == "550 5.1.1 no such user"
    again = StateLog(path, "abc")
    assert sorted(again.done) == ["a@x.example", "b@x.example"]
    again.record("sent", "c@x.example", "Q3")
    again.close()
    assert sorted(parse_state(path.read_bytes())[1]) == ["a@x.example", "b@x.example",
                                                         "c@x.example"]
    with pytest.raises(StateError, match="another campaign"):
        StateLog(path, "other")


def test_state_log_fsyncs_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    syncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(bulk_state.os, "fsync", lambda fd: (syncs.append(fd), real(fd)))
    log = StateLog(tmp_path / "s", "c", clock=lambda: now[0])
    syncs.clear()
    for i in range(bulk_state.FSYNC_EVERY * 2):
        log.record("sent", f"u{i}@x.example", "Q")
    assert len(syncs) == 2
    log.record("sent", "late@x.example", "Q")
    assert len(syncs) == 2
    now[0] += bulk_state.FSYNC_INTERVAL
    log.record("sent", "later@x.example", "Q")
    assert len(syncs) == 3
    log.close()
    assert len(syncs) == 4
    with pytest.raises(ValueError):
        StateLog(tmp_path / "s", "c").record("sent", "a\tb", "x")


@given(st.binary(max_size=300))
def test_parse_state_never_fails(data: bytes) -> None:
    _, records = parse_state(data)
    assert all(r.status in ("sent", "failed", "unknown") for r in records.values())


# ------------------------------------------------------------------ scheduling


def test_domain_scheduler_round_robin_with_limit() -> None:
    recipients = parse_recipients(people(7, ("a.example", "a.example", "b.example"))).recipients
    sched = DomainScheduler(recipients, per_domain=2)
    got = [sched.take() for _ in range(5)]
    domains = [j.recipient.domain if j else None for j in got]
    assert domains == ["a.example", "b.example", "a.example", "b.example", None]
    assert sched.in_flight == 4 and sched.pending == 3
    first = got[0]
    assert first is not None
    sched.put_back(first)
    assert sched.pending == 4 and sched.in_flight == 3
    job = sched.take()
    assert job is not None and job.recipient.domain == "a.example"
    for j in [job, *[g for g in got[1:] if g]]:
        sched.done(j)
    while (j := sched.take()) is not None:
        sched.done(j)
    assert sched.finished


def test_rate_limiter_spaces_slots() -> None:
    now = [100.0]
    limiter = RateLimiter(4.0, clock=lambda: now[0])
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.25, 0.5]
    now[0] += 2.0
    assert limiter.reserve() == 0.0
    assert RateLimiter(None).reserve() == 0.0


# ------------------------------------------------------------------ the run


def make_run(tmp_path: Path, text: str, server: Server, **options: object) -> BulkRun:
    recipients = parse_recipients(text)
    r = renderer()
    state = StateLog(tmp_path / "state", r.fingerprint())
    opts = BulkOptions(**{"connections": 3, "per_domain": 2, **options})  # type: ignore[arg-type]
    return BulkRun(r, recipients, state, TARGET, opts, connector=server.connect)


async def test_run_sends_each_once_personalised(tmp_path: Path) -> None:
    server = Server()
    run = make_run(tmp_path, people(30), server, per_connection=4)
    summary = await run.run()
    run.state.close()
    assert summary.count("sent") == 30 and summary.already_done == 0
    assert sorted(t[1][0] for t in server.transactions) == sorted(
        r.email for r in run.recipients.recipients)
    for _, (rcpt,), content in server.transactions:
        assert f"<{rcpt}>".encode() in content
    assert server.max_in_flight <= 3
    assert server.sessions >= 30 // 4
    # A second run has nothing to do.
    server2 = Server()
    run2 = make_run(tmp_path, people(30), server2)
    summary2 = await run2.run()
    run2.state.close()
    assert summary2.already_done == 30 and server2.transactions == []


async def test_run_failures_retries_and_unknown(tmp_path: Path) -> None:
    calls: dict[str, int] = {}

    def script(rp: str, rcpts: list[str], content: bytes) -> TransactionResult | BaseException:
        who = rcpts[0]
        calls[who] = calls.get(who, 0) + 1
        if who.startswith("user0@"):
            return TransactionResult(MAIL_OK, [Reply(550, "5.1.1", "unknown")], None)
        if who.startswith("user1@"):
            return TransactionResult(MAIL_OK, [RCPT_OK], Reply(451, "4.3.0", "later"))
        if who.startswith("user2@") and calls[who] == 1:
            return lost(content_sent=False)
        if who.startswith("user3@"):
            return lost(content_sent=True)
        return TransactionResult(MAIL_OK, [RCPT_OK], Reply(250, "2.0.0", "Ok: queued as QX"))

    server = Server(script=script)
    run = make_run(tmp_path, people(6), server, retries=2)
    summary = await run.run()
    run.state.close()
    status = {k.split("@")[0]: r.status for k, r in summary.results.items()}
    assert status == {"user0": "failed", "user1": "deferred", "user2": "sent",
                      "user3": "unknown", "user4": "sent", "user5": "sent"}
    assert calls["user1@b.example"] == 3 and calls["user3@a.example"] == 1
    assert calls["user2@c.example"] == 2
    _, records = parse_state((tmp_path / "state").read_bytes())
    assert sorted(records) == ["user0@a.example", "user2@c.example", "user3@a.example",
                               "user4@b.example", "user5@c.example"]
    report = tmp_path / "report.csv"
    assert write_report(report, run.recipients, records, summary) == 6
    rows = list(csv.reader(report.open()))
    assert rows[0] == ["recipient", "status", "detail"]
    assert [r[1] for r in rows[1:]] == ["failed", "deferred", "sent", "unknown", "sent", "sent"]


async def test_stop_finishes_in_flight_and_resume_sends_the_rest_once(tmp_path: Path) -> None:
    server = Server(gate=asyncio.Event())
    run = make_run(tmp_path, people(40), server, connections=4, per_domain=4)
    task = asyncio.create_task(run.run())
    while server.in_flight < 4:
        await asyncio.sleep(0)
    run.stop()
    server.gate.set()  # type: ignore[union-attr]
    summary = await task
    run.state.close()
    assert summary.interrupted and summary.count("sent") == 4 and summary.not_attempted == 36
    server.gate = None
    run2 = make_run(tmp_path, people(40), server, connections=4, per_domain=4)
    summary2 = await run2.run()
    run2.state.close()
    assert summary2.already_done == 4 and summary2.count("sent") == 36
    sent = [t[1][0] for t in server.transactions]
    assert len(sent) == 40 == len(set(sent))


async def test_unreachable_server_gives_up(tmp_path: Path) -> None:
    from pigeon.net.smtp_client import SmtpClientError

    server = Server(connect_error=SmtpClientError(Reply(421, "4.4.1", "connect: refused")))
    run = make_run(tmp_path, people(50), server, connections=2)
    summary = await run.run()
    run.state.close()
    assert summary.gave_up is not None and "4.4.1" in summary.gave_up
    assert summary.count("sent") == 0
    assert summary.count("deferred") + summary.not_attempted == 50
    assert parse_state((tmp_path / "state").read_bytes())[1] == {}


async def test_state_write_failure_stops_handing_out_messages(tmp_path: Path) -> None:
    server = Server()
    run = make_run(tmp_path, people(40), server, connections=2, per_domain=2)
    real = run.state.record
    writes = [0]

    def failing(status: str, key: str, detail: str) -> None:
        writes[0] += 1
        if writes[0] > 5:
            raise OSError(28, "No space left on device")
        real(status, key, detail)  # type: ignore[arg-type]

    run.state.record = failing  # type: ignore[method-assign]
    with pytest.raises(OSError, match="No space left"):
        await run.run()
    run.state.close()
    # The two workers finish at most their message in flight after the failure.
    assert 6 <= len(server.transactions) <= 7
    assert len(parse_state((tmp_path / "state").read_bytes())[1]) == 5
