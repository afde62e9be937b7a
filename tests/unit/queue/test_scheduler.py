"""The scheduler: backoff with an injected clock, expiry, DSN rules, hold/retry/bounce."""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import os
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.queue.model import AttemptResult, QueuedMessage, QueuedRecipient
from pigeon.queue.scheduler import RetryPolicy, expired_result, outcome
from pigeon.queue.service import QueueService

from .conftest import (
    DEFERRED,
    DELIVERED,
    FAILED,
    HOST,
    T0,
    DsnCall,
    Harness,
    ScriptedAgent,
    TableRouter,
    envelope,
    make_settings,
)

pytestmark = pytest.mark.usefixtures("dsn_calls")


async def run_at(h: Harness, when: float) -> int:
    h.clock.now = when
    return await h.service.run_due_once()


def recipient_states(h: Harness, queue_id: str) -> list[tuple[str, str, int]]:
    m = h.store.get(queue_id)
    return [] if m is None else [(r.address, r.state, r.attempts) for r in m.recipients]


# -- the retry policy ------------------------------------------------------------------------


def test_default_backoff_sequence() -> None:
    policy = RetryPolicy()
    assert [policy.delay(n) for n in range(1, 9)] == [
        300, 600, 1200, 2400, 4000, 4000, 4000, 4000]
    assert policy.delay(10_000) == 4000


@given(st.floats(1, 10_000), st.floats(1, 100_000), st.integers(1, 5000))
def test_backoff_is_bounded_and_never_shrinks(retry_min: float, extra: float,
                                              attempt: int) -> None:
    policy = RetryPolicy(retry_min=retry_min, retry_max=retry_min + extra)
    assert retry_min <= policy.delay(attempt) <= retry_min + extra
    assert policy.delay(attempt + 1) >= policy.delay(attempt)


def test_expired_result_keeps_the_last_reply() -> None:
    assert expired_result(DEFERRED) == AttemptResult(
        "failed", 451, "4.4.7", "delivery time expired; last error: 4.2.0 try again later",
        "mx.example.net[192.0.2.7]")


def _never(recipient: QueuedRecipient, action: str) -> bool:
    return False


def test_outcome_table() -> None:
    policy = RetryPolicy(delay_warning=1000)
    m = QueuedMessage("0000000000AB", "a@example.org", os.devnull, 1, T0)  # type: ignore[arg-type]
    r = QueuedRecipient(1, "b@example.org", "b@example.org")
    always = lambda recipient, action: True  # noqa: E731
    assert outcome(m, r, DELIVERED, now=T0, policy=policy, notify=_never).state == "delivered"
    assert outcome(m, r, DELIVERED, now=T0, policy=policy, notify=always).dsn_action == (
        "delivered")
    assert outcome(m, r, FAILED, now=T0, policy=policy, notify=always).dsn_action == "failed"
    early = outcome(m, r, DEFERRED, now=T0 + 999, policy=policy, notify=always)
    assert (early.state, early.delay_notified, early.dsn_action) == ("deferred", False, None)
    late = outcome(m, r, DEFERRED, now=T0 + 1000, policy=policy, notify=always)
    assert (late.state, late.delay_notified, late.dsn_action) == ("deferred", True, "delayed")
    old = outcome(m, r, DEFERRED, now=T0 + 5 * 86400, policy=policy, notify=always)
    assert (old.state, old.result.enhanced, old.dsn_action) == ("expired", "4.4.7", "failed")
    kept = outcome(m, r, DEFERRED, now=T0 + 5 * 86400, policy=policy, notify=always,
                   may_expire=False)
    assert (kept.state, kept.dsn_action) == ("deferred", None)


# -- passes ---------------------------------------------------------------------------------


async def test_delivered_message_leaves_the_queue(harness: Harness,
                                                  dsn_calls: list[DsnCall]) -> None:
    queue_id = await harness.send("bob@example.org", "carol@example.net")
    assert await run_at(harness, T0) == 2
    assert harness.local.calls == [(queue_id, ["bob@example.org"])]
    assert harness.remote is not None
    assert harness.remote.calls == [(queue_id, ["carol@example.net"])]
    assert harness.store.queue_ids() == []
    assert os.listdir(harness.data_dir / "spool" / "queue") == []
    assert dsn_calls == []
    assert await run_at(harness, T0 + 10**6) == 0


async def test_retry_schedule_then_expiry_with_exactly_one_dsn(
        harness: Harness, dsn_calls: list[DsnCall]) -> None:
    harness.local.default = DEFERRED
    queue_id = await harness.send()
    attempts_at: list[float] = []
    while harness.store.get(queue_id) is not None:
        m = harness.store.get(queue_id)
        due = m.recipients[0].next_attempt_at
        # Not a moment before its time...
        assert await run_at(harness, due - 1) == 0 or due == T0
        # ...and exactly one attempt at it.
        assert await run_at(harness, due) == 1
        attempts_at.append(due - T0)
        assert len(attempts_at) < 200
    assert attempts_at[:8] == [0, 300, 900, 2100, 4500, 8500, 12500, 16500]
    gaps = [b - a for a, b in itertools.pairwise(attempts_at)]
    assert gaps[:5] == [300, 600, 1200, 2400, 4000]
    assert set(gaps[4:]) == {4000}
    # The first attempt at or after arrival + max_lifetime (5 days) expires it.
    assert attempts_at[-1] == 432500 and attempts_at[-2] < 432000
    assert len(attempts_at) == 112
    assert len(dsn_calls) == 1
    call = dsn_calls[0]
    assert (call.queue_id, call.reverse_path, call.entries) == (
        queue_id, "alice@example.org", [("bob@example.org", "failed")])
    assert call.results == [AttemptResult(
        "failed", 451, "4.4.7", "delivery time expired; last error: 4.2.0 try again later",
        "mx.example.net[192.0.2.7]")]
    # The DSN is queued from <> to the reverse-path, and delivered like any message.
    (dsn_id,) = harness.store.queue_ids()
    dsn = harness.store.get(dsn_id)
    assert (dsn.reverse_path, dsn.is_dsn, [r.address for r in dsn.recipients]) == (
        "", True, ["alice@example.org"])
    assert dsn.recipients[0].notify == frozenset()
    harness.local.default = FAILED
    assert await run_at(harness, harness.clock.now) == 1
    # A DSN that fails is never answered with another DSN.
    assert len(dsn_calls) == 1
    assert harness.store.queue_ids() == []


async def test_attempt_is_recorded_before_it_is_made(harness: Harness) -> None:
    seen: list[tuple[str, int, float]] = []

    def look(message: QueuedMessage, recipients: list[QueuedRecipient]) -> None:
        row = harness.store.get(message.queue_id).recipients[0]
        seen.append((row.state, row.attempts, row.next_attempt_at))

    harness.local.on_deliver = look
    await harness.send()
    await run_at(harness, T0 + 5)
    assert seen == [("queued", 1, T0 + 5 + 300)]


async def test_a_crash_during_an_attempt_causes_no_hot_loop(harness: Harness) -> None:
    started = asyncio.Event()

    async def hang(message: QueuedMessage, recipients: list[QueuedRecipient]) -> None:
        started.set()
        await asyncio.Event().wait()

    harness.local.on_deliver = hang
    queue_id = await harness.send()
    harness.clock.now = T0
    attempt = asyncio.create_task(harness.service.run_due_once())
    await started.wait()
    attempt.cancel()  # the process dies in the middle of the delivery
    with pytest.raises(asyncio.CancelledError):
        await attempt
    harness.local.on_deliver = None
    assert recipient_states(harness, queue_id) == [("bob@example.org", "queued", 1)]
    assert await run_at(harness, T0 + 299) == 0
    assert await run_at(harness, T0 + 300) == 1
    assert harness.store.queue_ids() == []


async def test_permanent_failure_one_dsn_for_all_failures_of_the_pass(
        harness: Harness, dsn_calls: list[DsnCall]) -> None:
    harness.local.script = {
        "a@example.org": [FAILED], "b@example.org": [DELIVERED],
        "c@example.org": [DEFERRED, FAILED], "d@example.org": [FAILED],
    }
    queue_id = await harness.send("a@example.org", "b@example.org", "c@example.org",
                                  "d@example.org")
    assert await run_at(harness, T0) == 4
    assert len(dsn_calls) == 1
    assert dsn_calls[0].entries == [("a@example.org", "failed"), ("d@example.org", "failed")]
    assert dsn_calls[0].results == [FAILED, FAILED]
    assert recipient_states(harness, queue_id) == [
        ("a@example.org", "failed", 1), ("b@example.org", "delivered", 1),
        ("c@example.org", "deferred", 1), ("d@example.org", "failed", 1)]
    # c's retry, and the delivery of the first DSN (queued at T0, to alice).
    assert await run_at(harness, T0 + 300) == 2
    assert len(dsn_calls) == 2
    assert dsn_calls[1].entries == [("c@example.org", "failed")]
    assert harness.store.get(queue_id) is None


async def test_no_dsn_for_null_reverse_path(harness: Harness,
                                            dsn_calls: list[DsnCall]) -> None:
    harness.local.default = FAILED
    await harness.send(sender="")
    assert await run_at(harness, T0) == 1
    assert dsn_calls == []
    assert harness.store.queue_ids() == []


async def test_no_dsn_about_a_dsn(harness: Harness, dsn_calls: list[DsnCall]) -> None:
    harness.local.default = FAILED
    await harness.service.enqueue_bytes(envelope(), b"x\r\n", is_dsn=True)
    assert await run_at(harness, T0) == 1
    assert dsn_calls == []
    assert harness.store.queue_ids() == []


async def test_notify_never_and_success(harness: Harness, dsn_calls: list[DsnCall]) -> None:
    harness.local.default = FAILED
    await harness.send(notify=frozenset())
    assert await run_at(harness, T0) == 1
    assert dsn_calls == []
    harness.local.default = DELIVERED
    queue_id = await harness.send(notify=frozenset({"SUCCESS"}))
    assert await run_at(harness, T0) == 1
    assert [(c.queue_id, c.entries) for c in dsn_calls] == [
        (queue_id, [("bob@example.org", "delivered")])]


@pytest.mark.queue_settings(delay_warning=1000)
async def test_delay_dsn_once_per_recipient(harness: Harness,
                                            dsn_calls: list[DsnCall]) -> None:
    harness.local.script = {"a@example.org": [DEFERRED] * 6, "b@example.org": [DEFERRED] * 6}
    queue_id = await harness.send("a@example.org", "b@example.org")
    for t in (0, 300, 900):
        assert await run_at(harness, T0 + t) == 2
    assert dsn_calls == []
    assert await run_at(harness, T0 + 2100) == 2
    assert [(c.queue_id, c.entries, c.will_retry_until) for c in dsn_calls] == [
        (queue_id, [("a@example.org", "delayed"), ("b@example.org", "delayed")],
         T0 + 5 * 86400)]
    assert all(r.delay_notified for r in harness.store.get(queue_id).recipients)
    assert await run_at(harness, T0 + 4500) == 3  # a, b, and the delay DSN to alice
    assert await run_at(harness, T0 + 8500) == 2
    assert [c.queue_id for c in dsn_calls] == [queue_id]
    assert recipient_states(harness, queue_id) == [
        ("a@example.org", "deferred", 6), ("b@example.org", "deferred", 6)]


@pytest.mark.no_remote
async def test_remote_without_agent_stays_deferred(harness: Harness,
                                                   dsn_calls: list[DsnCall]) -> None:
    queue_id = await harness.send("carol@example.net")
    assert await run_at(harness, T0) == 1
    m = harness.store.get(queue_id)
    assert (m.recipients[0].state, m.recipients[0].last_result) == ("deferred", AttemptResult(
        "deferred", 451, "4.4.0", "remote delivery not available yet"))
    assert await run_at(harness, T0 + 10 * 86400) == 1
    assert recipient_states(harness, queue_id) == [("carol@example.net", "deferred", 2)]
    assert dsn_calls == []


async def test_agent_exception_defers(harness: Harness) -> None:
    def boom(message: QueuedMessage, recipients: list[QueuedRecipient]) -> None:
        raise RuntimeError("disk on fire")

    harness.local.on_deliver = boom
    queue_id = await harness.send()
    assert await run_at(harness, T0) == 1
    m = harness.store.get(queue_id)
    assert (m.recipients[0].state, m.recipients[0].last_result) == (
        "deferred", AttemptResult("deferred", 451, "4.3.0", "local error in processing"))


async def test_hold_release_retry_delete(harness: Harness) -> None:
    harness.local.script = {"bob@example.org": [DEFERRED]}
    held = await harness.send()
    assert harness.store.hold(held) == 1
    assert await run_at(harness, T0 + 1000) == 0
    assert harness.store.release(held, T0 + 1000) == 1
    assert await run_at(harness, T0 + 1000) == 1  # deferred once, due again in 300 s
    assert recipient_states(harness, held) == [("bob@example.org", "deferred", 1)]
    assert await run_at(harness, T0 + 1001) == 0
    assert harness.store.retry(held, T0 + 1001) == 1
    assert await run_at(harness, T0 + 1001) == 1
    assert harness.store.get(held) is None

    deleted = await harness.send()
    assert harness.store.delete(deleted) is True
    harness.service.spool.discard(deleted)
    assert await run_at(harness, T0 + 2000) == 0
    assert os.listdir(harness.data_dir / "spool" / "queue") == []


async def test_bounce_sends_the_dsn_on_the_next_pass(harness: Harness,
                                                     dsn_calls: list[DsnCall]) -> None:
    harness.local.default = DEFERRED
    queue_id = await harness.send("a@example.org", "b@example.org")
    harness.local.script = {"a@example.org": [DELIVERED]}
    assert await run_at(harness, T0) == 2
    cancelled = AttemptResult("failed", 550, "5.0.0", "delivery cancelled by administrator")
    assert harness.store.cancel(queue_id, cancelled) == 1
    harness.local.default = DELIVERED
    assert await run_at(harness, T0 + 1) == 1  # only the DSN's own delivery
    assert [(c.queue_id, c.entries, c.results) for c in dsn_calls] == [
        (queue_id, [("b@example.org", "failed")], [cancelled])]
    assert harness.store.get(queue_id) is None
    assert [addresses for _, addresses in harness.local.calls] == [
        ["a@example.org", "b@example.org"], ["alice@example.org"]]
    assert harness.store.queue_ids() == []


@pytest.mark.queue_settings(delivery_concurrency=2)
async def test_concurrency_limit(harness: Harness) -> None:
    active, most = 0, 0
    two = asyncio.Event()

    async def busy(message: QueuedMessage, recipients: list[QueuedRecipient]) -> None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        if active == 2:
            two.set()
        await asyncio.wait_for(two.wait(), 10)  # a safety net, not a timing condition
        for _ in range(5):
            await asyncio.sleep(0)
        active -= 1

    harness.local.on_deliver = busy
    for _ in range(6):
        await harness.send()
    assert await run_at(harness, T0) == 6
    assert most == 2


async def test_background_loop_delivers_after_enqueue(tmp_path: Any) -> None:
    done = asyncio.Event()
    agent = ScriptedAgent(on_deliver=lambda m, r: done.set())
    service = QueueService(make_settings(tmp_path), router=TableRouter(),  # type: ignore[arg-type]
                           agents={"local": agent})
    await service.start()
    try:
        queue_id = await service.enqueue_bytes(envelope(), b"Subject: x\r\n\r\nx\r\n")
        await asyncio.wait_for(done.wait(), 10)
        assert agent.calls == [(queue_id, ["bob@example.org"])]
    finally:
        await service.stop()


async def test_real_dsn_module_produces_a_report(harness: Harness,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pigeon.queue.dsn")
    monkeypatch.delitem(sys.modules, "pigeon.queue.dsn")  # drop the recorder: the real one
    harness.local.script = {"bob@example.org": [FAILED]}
    queue_id = await harness.send(envid="ENV-1")
    assert await run_at(harness, T0) == 1
    (dsn_id,) = harness.store.queue_ids()
    dsn = harness.store.get(dsn_id)
    assert dsn.is_dsn and dsn.reverse_path == ""
    content = dsn.spool_path.read_bytes()
    parsed = email.message_from_bytes(content, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    received = " ".join(str(parsed["Received"]).split())
    assert received.startswith(f"by {HOST} (Pigeon) with local id {dsn_id} for <alice@")
    assert f"MAILER-DAEMON@{HOST}" in parsed["From"]
    assert queue_id not in harness.store.queue_ids()
    text = content.decode()
    assert "Final-Recipient: rfc822; bob@example.org" in text
    assert "Action: failed" in text
    assert "Status: 5.1.1" in text


async def test_fresh_message_is_delivered_from_memory(tmp_path: Any) -> None:
    done = asyncio.Event()
    agent = ScriptedAgent(on_deliver=lambda m, r: done.set())
    service = QueueService(make_settings(tmp_path), router=TableRouter(),  # type: ignore[arg-type]
                           agents={"local": agent})
    await service.start()
    try:
        reads: list[str] = []
        get = service.store.get

        def recording_get(queue_id: str) -> Any:
            # A background pass whose index read raced the delivery may look the message
            # up once it is gone (and finds nothing): only reads that find it count.
            found = get(queue_id)
            if found is not None:
                reads.append(queue_id)
            return found

        service.store.get = recording_get  # type: ignore[method-assign]
        queue_id = await service.enqueue_bytes(envelope(), b"Subject: x\r\n\r\nx\r\n")
        await asyncio.wait_for(done.wait(), 10)
        await asyncio.wait_for(service.scheduler.drain(10), 20)
        assert agent.calls == [(queue_id, ["bob@example.org"])]
        assert reads == []  # neither loaded before the attempt nor read back after it
        assert service.store.queue_ids() == []
        assert not (tmp_path / "spool" / "queue" / queue_id).exists()
    finally:
        await service.stop()


async def test_offer_is_refused_past_the_in_flight_cap(harness: Harness) -> None:
    scheduler = harness.service.scheduler
    queue_id = await harness.send()
    message = harness.store.get(queue_id)
    assert scheduler.offer(message) is False  # the background loop is not running
    assert harness.local.calls == []
    assert await run_at(harness, T0) == 1


async def test_the_loop_searches_for_pending_events_once_per_poll_interval(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pigeon.queue import scheduler as scheduler_module

    now = [1000.0]
    monkeypatch.setattr(scheduler_module, "_monotonic", lambda: now[0])
    service = QueueService(make_settings(tmp_path), router=TableRouter(),  # type: ignore[arg-type]
                           agents={"local": ScriptedAgent()})
    await service.start(scheduler=False)
    store = service.store
    searches, passes = [0], asyncio.Queue[None]()
    real_events, real_next = store.pending_events, store.next_due_at

    def pending_events(*args: Any) -> Any:
        searches[0] += 1
        return real_events(*args)

    def next_due_at() -> Any:
        passes.put_nowait(None)
        return real_next()

    monkeypatch.setattr(store, "pending_events", pending_events)
    monkeypatch.setattr(store, "next_due_at", next_due_at)
    loop = asyncio.create_task(service.scheduler.run())
    try:
        await asyncio.wait_for(passes.get(), 10)
        for _ in range(5):  # woken again and again within one poll interval
            service.wake()
            await asyncio.wait_for(passes.get(), 10)
        assert searches[0] == 1
        now[0] += scheduler_module.POLL_INTERVAL
        service.wake()
        await asyncio.wait_for(passes.get(), 10)
        assert searches[0] == 2
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await service.stop()
