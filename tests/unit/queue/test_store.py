"""The SQLite queue index: round trips, conditional state changes, corruption detection."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pigeon.queue.ids import new_queue_id
from pigeon.queue.model import AttemptResult, QueuedMessage, QueuedRecipient
from pigeon.storage.ports import CorruptEntryError, RecipientUpdate
from pigeon.storage.sqlite.queue_store import SqliteQueueStore

from .conftest import DEFERRED, DELIVERED, FAILED, T0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteQueueStore]:
    s = SqliteQueueStore(tmp_path / "queue.db", tmp_path / "spool" / "queue")
    yield s
    s.close()


def message(*addresses: str, arrival: float = T0, **kw: object) -> QueuedMessage:
    queue_id = new_queue_id()
    return QueuedMessage(
        queue_id=queue_id,
        reverse_path="alice@example.org",
        spool_path=Path("/unused"),
        size=123,
        arrival=arrival,
        recipients=[
            QueuedRecipient(id=0, address=a, original=a, next_attempt_at=arrival)
            for a in (addresses or ("bob@example.org",))
        ],
        **kw,  # type: ignore[arg-type]
    )


def test_schema_is_wal_with_full_sync(store: SqliteQueueStore, tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "queue.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    db.close()


def test_insert_is_one_transaction_and_assigns_ids(store: SqliteQueueStore) -> None:
    before = store.transactions
    batch = [message("a@example.org", "b@example.net"), message(), message()]
    store.insert(batch)
    assert store.transactions == before + 1
    ids = [r.id for m in batch for r in m.recipients]
    assert len(set(ids)) == 4 and all(i > 0 for i in ids)
    assert store.queue_ids() == sorted(m.queue_id for m in batch)


def test_get_unknown_is_none(store: SqliteQueueStore) -> None:
    assert store.get("0000000000AB") is None


_ADDRESS = st.from_regex(r"[a-zA-Z0-9.+é]{1,20}@[a-z0-9.-]{1,20}", fullmatch=True)
_RESULT = st.builds(
    AttemptResult,
    status=st.sampled_from(["delivered", "deferred", "failed"]),
    code=st.integers(200, 599),
    enhanced=st.sampled_from(["2.0.0", "4.4.1", "5.1.1"]),
    text=st.text(max_size=40),
    remote_host=st.none() | st.text(max_size=20),
)
_RECIPIENT = st.builds(
    QueuedRecipient,
    id=st.just(0),
    address=_ADDRESS,
    original=_ADDRESS,
    orcpt=st.none() | st.tuples(st.sampled_from(["rfc822", "utf-8"]), _ADDRESS),
    notify=st.none() | st.frozensets(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"])),
    route=st.sampled_from(["local", "remote"]),
    state=st.sampled_from(["queued", "deferred", "held", "delivered", "failed", "expired"]),
    attempts=st.integers(0, 1000),
    next_attempt_at=st.floats(0, 4e9),
    last_result=st.none() | _RESULT,
    delay_notified=st.booleans(),
)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteQueueStore]:
    tmp = tmp_path_factory.mktemp("roundtrip")
    s = SqliteQueueStore(tmp / "queue.db", tmp / "q")
    yield s
    s.close()


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(
    reverse_path=st.just("") | _ADDRESS,
    size=st.integers(0, 2**40),
    arrival=st.floats(0, 4e9),
    body=st.sampled_from([None, "7BIT", "8BITMIME", "BINARYMIME"]),
    smtputf8=st.booleans(),
    ret=st.sampled_from([None, "FULL", "HDRS"]),
    envid=st.none() | st.text(max_size=30),
    client=st.tuples(st.text(max_size=20), st.text(max_size=20)),
    user=st.none() | st.text(max_size=20),
    is_dsn=st.booleans(),
    recipients=st.lists(_RECIPIENT, max_size=5),
)
def test_round_trip(shared_store: SqliteQueueStore, reverse_path: str, size: int,
                    arrival: float, body: str | None, smtputf8: bool, ret: str | None,
                    envid: str | None, client: tuple[str, str], user: str | None, is_dsn: bool,
                    recipients: list[QueuedRecipient]) -> None:
    queue_id = new_queue_id()
    original = QueuedMessage(
        queue_id=queue_id, reverse_path=reverse_path,
        spool_path=shared_store.spool_dir / queue_id, size=size, arrival=arrival, body=body,
        smtputf8=smtputf8, ret=ret, envid=envid, client_address=client[0],
        client_name=client[1], authenticated_user=user, is_dsn=is_dsn,
        recipients=recipients,
    )
    shared_store.insert([original])
    assert shared_store.get(original.queue_id) == original


def test_due_and_next_due_at(store: SqliteQueueStore) -> None:
    late, early = message(arrival=T0 + 100), message(arrival=T0 + 10)
    held = message(arrival=T0)
    held.recipients[0].state = "held"
    store.insert([late, early, held])
    assert store.due(T0 + 5, 10) == []
    assert store.due(T0 + 100, 10) == [early.queue_id, late.queue_id]
    assert store.due(T0 + 100, 1) == [early.queue_id]
    assert store.next_due_at() == T0 + 10


def test_begin_attempt_pushes_next_attempt_out(store: SqliteQueueStore) -> None:
    m = message("a@example.org", "b@example.org")
    store.insert([m])
    a, b = (r.id for r in m.recipients)
    assert store.hold(m.queue_id) == 2
    assert store.release(m.queue_id, T0) == 2
    assert store.begin_attempt([(a, T0 + 300)], T0) == [a]
    # Not due any more: a second claim at the same time gets nothing (no hot loop).
    assert store.begin_attempt([(a, T0 + 300), (b, T0 + 300)], T0) == [b]
    got = store.get(m.queue_id)
    assert got is not None
    assert [(r.attempts, r.next_attempt_at) for r in got.recipients] == [(1, T0 + 300)] * 2
    assert store.due(T0 + 299, 10) == []
    assert store.due(T0 + 300, 10) == [m.queue_id]


def test_record_respects_hold_and_final_states(store: SqliteQueueStore) -> None:
    m = message("a@example.org", "b@example.org", "c@example.org")
    store.insert([m])
    a, b, c = (r.id for r in m.recipients)
    store.hold(m.queue_id)
    assert store.record([
        RecipientUpdate(a, "deferred", DEFERRED, delay_notified=True, dsn_action="delayed"),
        RecipientUpdate(b, "delivered", DELIVERED),
    ]) == 2
    got = store.get(m.queue_id)
    assert got is not None
    assert [r.state for r in got.recipients] == ["held", "delivered", "held"]
    assert got.recipients[0].last_result == DEFERRED
    assert got.recipients[0].delay_notified is True
    # A final row is never changed by a late result.
    assert store.record([RecipientUpdate(b, "failed", FAILED)]) == 0
    assert store.cancel(m.queue_id, FAILED) == 2
    assert store.record([RecipientUpdate(c, "deferred", DEFERRED)]) == 0
    got = store.get(m.queue_id)
    assert got is not None
    assert [r.state for r in got.recipients] == ["failed", "delivered", "failed"]
    assert store.pending_events() == {m.queue_id: {a: "failed", c: "failed"}}
    assert store.pending_events(m.queue_id) == {m.queue_id: {a: "failed", c: "failed"}}
    assert store.finished() == []
    store.clear_events([a, c])
    assert store.pending_events() == {}
    assert store.finished() == [m.queue_id]
    assert store.delete(m.queue_id) is True
    assert store.delete(m.queue_id) is False
    assert store.queue_ids() == []


def test_retry_one_or_all(store: SqliteQueueStore) -> None:
    m1, m2 = message(), message()
    for m in (m1, m2):
        m.recipients[0].state = "deferred"
        m.recipients[0].next_attempt_at = T0 + 1000
    store.insert([m1, m2])
    assert store.retry(m1.queue_id, T0) == 1
    assert store.due(T0, 10) == [m1.queue_id]
    assert store.retry(None, T0) == 2
    assert store.due(T0, 10) == sorted([m1.queue_id, m2.queue_id])


def test_release_makes_queued_or_deferred(store: SqliteQueueStore) -> None:
    m = message("a@example.org", "b@example.org")
    m.recipients[1].attempts = 2
    store.insert([m])
    assert store.hold(m.queue_id) == 2
    assert store.hold(m.queue_id) == 0
    assert store.due(T0 + 10**6, 10) == []
    assert store.release(m.queue_id, T0 + 5) == 2
    got = store.get(m.queue_id)
    assert got is not None
    assert [(r.state, r.next_attempt_at) for r in got.recipients] == [
        ("queued", T0 + 5), ("deferred", T0 + 5)]


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("state", "'bogus'", "unknown state 'bogus'"),
        ("route", "'carrier-pigeon'", "unknown route 'carrier-pigeon'"),
        ("notify", "'SOMETIMES'", "bad NOTIFY 'SOMETIMES'"),
        ("attempts", "-1", "expected a non-negative integer, found -1"),
        ("next_attempt_at", "'soon'", "expected a number, found 'soon'"),
        ("orcpt_type", "'rfc822'", "half an ORCPT"),
        ("last_status", "'maybe'", "unknown result status 'maybe'"),
    ],
)
def test_corrupt_rows_are_reported(store: SqliteQueueStore, tmp_path: Path, column: str,
                                   value: str, reason: str) -> None:
    m = message()
    store.insert([m])
    db = sqlite3.connect(tmp_path / "queue.db")
    db.execute(f"UPDATE recipient SET {column} = {value}")
    db.commit()
    db.close()
    with pytest.raises(CorruptEntryError) as info:
        store.get(m.queue_id)
    assert info.value.queue_id == m.queue_id
    assert info.value.reason.endswith(reason)
    raw = store.raw(m.queue_id)
    assert raw["message"]["queue_id"] == m.queue_id
    assert len(raw["recipients"]) == 1


def test_a_second_connection_sees_commits(store: SqliteQueueStore, tmp_path: Path) -> None:
    other = SqliteQueueStore(tmp_path / "queue.db", tmp_path / "spool" / "queue")
    m = message()
    store.insert([m])
    assert other.queue_ids() == [m.queue_id]
    assert other.hold(m.queue_id) == 1
    got = store.get(m.queue_id)
    assert got is not None and got.recipients[0].state == "held"
    other.close()


def test_batch_is_one_transaction_and_a_failing_write_is_undone_alone(
    store: SqliteQueueStore,
) -> None:
    a, b = message("a@example.org"), message("b@example.org")
    store.insert([a, b])
    before = store.transactions
    ra, rb = a.recipients[0].id, b.recipients[0].id
    with store.batch(durable=False):
        assert store.begin_attempt([(ra, T0 + 300)], T0) == [ra]
        with pytest.raises(sqlite3.IntegrityError):
            # A duplicate queue id: this insert fails inside its own savepoint...
            store.insert([a])
        # ...and the other writes of the batch still commit.
        assert store.begin_attempt([(rb, T0 + 300)], T0) == [rb]
        store.delete(b.queue_id)
    assert store.transactions == before + 1
    got = store.get(a.queue_id)
    assert got is not None
    assert [(r.attempts, r.next_attempt_at) for r in got.recipients] == [(1, T0 + 300)]
    assert store.queue_ids() == [a.queue_id]


def test_batch_sync_level(store: SqliteQueueStore) -> None:
    seen = []
    with store.batch(durable=False):
        seen.append(store._db.execute("PRAGMA synchronous").fetchone()[0])
    with store.batch(durable=True):
        seen.append(store._db.execute("PRAGMA synchronous").fetchone()[0])
    seen.append(store._db.execute("PRAGMA synchronous").fetchone()[0])
    assert seen == [1, 2, 2]  # NORMAL inside a non-durable batch, FULL otherwise


def test_batch_rolls_back_everything_when_its_body_raises(store: SqliteQueueStore) -> None:
    before = store.transactions
    with pytest.raises(RuntimeError), store.batch():
        store.insert([message()])
        raise RuntimeError("stop")
    assert store.transactions == before
    assert store.queue_ids() == []
    with pytest.raises(RuntimeError, match="does not nest"), store.batch(), store.batch():
        pass


_OLD_DUE = (
    "SELECT queue_id, MIN(next_attempt_at) AS due_at FROM recipient"
    " WHERE state IN ('queued', 'deferred') AND next_attempt_at <= ?"
    " GROUP BY queue_id ORDER BY due_at, queue_id LIMIT ?"
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(
        st.lists(st.tuples(st.sampled_from(["queued", "deferred", "held", "delivered",
                                            "failed"]),
                           st.integers(0, 6)), min_size=1, max_size=4),
        max_size=12),
    now=st.integers(0, 7),
    limit=st.integers(0, 14),
)
def test_due_takes_messages_by_earliest_due_recipient_then_queue_id(
        tmp_path_factory: pytest.TempPathFactory, messages: list[list[tuple[str, int]]],
        now: int, limit: int) -> None:
    # The streaming merge over the due-order index gives what one GROUP BY over every due
    # recipient gives.
    path = tmp_path_factory.mktemp("due")
    store = SqliteQueueStore(path / "queue.db", path / "spool")
    try:
        rows = []
        for recipients in messages:
            m = message(*(f"r{i}@example.org" for i in range(len(recipients))))
            for r, (state, at) in zip(m.recipients, recipients, strict=True):
                r.state = state  # type: ignore[assignment]
                r.next_attempt_at = T0 + at
            rows.append(m)
        store.insert(rows)
        expected = [r[0] for r in store._reader.execute(_OLD_DUE, (T0 + now, limit))]
        assert store.due(T0 + now, limit) == expected
    finally:
        store.close()


def test_an_index_of_an_earlier_version_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "queue.db"
    SqliteQueueStore(path, tmp_path / "spool").close()
    db = sqlite3.connect(path)
    db.execute("DROP INDEX recipient_due_order")
    db.execute("CREATE INDEX recipient_due ON recipient(state, next_attempt_at)")
    db.commit()
    db.close()
    SqliteQueueStore(path, tmp_path / "spool").close()
    db = sqlite3.connect(path)
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    db.close()
    assert "recipient_due" not in names and "recipient_due_order" in names
