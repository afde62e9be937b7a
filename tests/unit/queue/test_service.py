"""QueueService: group commit, durability order, expansion, recovery, locking."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from pigeon.mail.reply import Reply, ReplyError
from pigeon.queue import spool as spool_module
from pigeon.queue.ids import new_queue_id
from pigeon.queue.service import QueueBusyError, QueueService
from pigeon.queue.spool import syncfs_available
from pigeon.queue.trace import received_header
from pigeon.storage import durability

from .conftest import (
    CONTENT,
    HOST,
    T0,
    Clock,
    Harness,
    ScriptedAgent,
    TableRouter,
    envelope,
    make_settings,
    started_queue,
)

FAILED = "451 4.3.0 Requested action aborted: error in queue storage"

# The sync a test makes fail, per [server] sync: (module, function) to replace.
SYNC_FAILURES = [
    pytest.param(durability, "sync_filesystem", id="syncfs", marks=[
        pytest.mark.skipif(not syncfs_available(), reason="syncfs(2) needs Linux 5.17+"),
        pytest.mark.server_sync("syncfs")]),
    pytest.param(spool_module, "fsync_directory", id="fsync",
                 marks=pytest.mark.server_sync("fsync")),
]


async def test_group_commit_shares_one_transaction(harness: Harness) -> None:
    store, service = harness.store, harness.service
    transactions, batches = store.transactions, service.commit_batches
    writers = []
    for i in range(20):
        w = service.open_spool()
        w.write(b"Subject: %d\r\n\r\nbody\r\n" % i)
        writers.append(w)
    ids = await asyncio.gather(*(service.enqueue(envelope(), w) for w in writers))
    assert store.transactions == transactions + 1
    assert service.commit_batches == batches + 1
    assert sorted(ids) == sorted(w.queue_id for w in writers)
    assert store.queue_ids() == sorted(ids)
    assert sorted(os.listdir(harness.data_dir / "spool" / "queue")) == sorted(ids)
    assert os.listdir(harness.data_dir / "spool" / "tmp") == []
    for queue_id, i in zip(ids, range(20), strict=True):
        m = store.get(queue_id)
        assert m.size == len(b"Subject: %d\r\n\r\nbody\r\n" % i)
        assert m.spool_path.read_bytes() == b"Subject: %d\r\n\r\nbody\r\n" % i
        assert [(r.address, r.state, r.next_attempt_at) for r in m.recipients] == [
            ("bob@example.org", "queued", T0)]


async def test_enqueues_during_a_commit_form_the_next_batch(harness: Harness) -> None:
    store = harness.store
    insert = store.insert
    started = asyncio.Event()
    loop = asyncio.get_running_loop()
    gate = asyncio.Event()
    batch_sizes: list[int] = []

    def slow_insert(messages: Any) -> None:
        batch_sizes.append(len(messages))
        if len(batch_sizes) == 1:
            loop.call_soon_threadsafe(started.set)
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
        insert(messages)

    store.insert = slow_insert
    first = asyncio.create_task(harness.send())
    await started.wait()
    later = [asyncio.create_task(harness.send()) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, *later)
    assert batch_sizes == [1, 5]
    assert len(store.queue_ids()) == 6


async def test_the_next_batch_is_placed_while_one_commits(harness: Harness) -> None:
    store, spool = harness.store, harness.service.spool
    insert, place = store.insert, spool.place
    loop = asyncio.get_running_loop()
    committing, placed, gate = asyncio.Event(), asyncio.Event(), asyncio.Event()
    placed_sizes: list[int] = []

    def slow_insert(messages: Any) -> None:
        if not committing.is_set():
            loop.call_soon_threadsafe(committing.set)
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result()
        insert(messages)

    def recording_place(writers: Any) -> Any:
        errors = place(writers)
        placed_sizes.append(len(writers))
        if len(placed_sizes) == 2:
            loop.call_soon_threadsafe(placed.set)
        return errors

    store.insert = slow_insert
    spool.place = recording_place  # type: ignore[method-assign]
    first = asyncio.create_task(harness.send())
    await asyncio.wait_for(committing.wait(), 30)
    later = [asyncio.create_task(harness.send()) for _ in range(3)]
    try:
        await asyncio.wait_for(placed.wait(), 30)  # a deadline, not a timing
        # The first batch is still committing; the next one's files are already in
        # queue/, with no index row yet, and nobody has been answered.
        assert placed_sizes == [1, 3]
        assert len(os.listdir(harness.data_dir / "spool" / "queue")) == 4
        assert store.queue_ids() == []
        assert not any(task.done() for task in [first, *later])
    finally:
        gate.set()
    ids = await asyncio.gather(first, *later)
    assert store.queue_ids() == sorted(ids)


async def sync_fails_while_the_next_batch_is_written(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> None:
    """Batch A's sync runs while batch B's file is written, and fails on B's page.

    The fake sync models the kernel: it writes back every file of queue/ not yet written
    back and reports a failed write-back ONCE, so a later sync succeeds although B's data
    is lost. Both A and B must get 451 and leave nothing.
    """
    service = harness.service
    queue_dir = service.spool.queue_dir
    written_back: set[str] = set()
    bad: set[str] = set()
    syncs = 0
    loop = asyncio.get_running_loop()
    in_first_sync = asyncio.Event()
    b_placed = threading.Event()

    def sync(*args: Any) -> None:
        nonlocal syncs
        syncs += 1
        if syncs == 1:
            loop.call_soon_threadsafe(in_first_sync.set)
            assert b_placed.wait(30), "B was not written while A's sync ran"
        dirty = set(os.listdir(queue_dir)) - written_back
        written_back.update(dirty)
        if dirty & bad:
            raise OSError(5, "Input/output error")

    place = service.spool.place

    def recording_place(writers: Any) -> Any:
        errors = place(writers)
        if any(w.queue_id in bad for w in writers):
            b_placed.set()
        return errors

    monkeypatch.setattr(target, name, sync)
    service.spool.place = recording_place  # type: ignore[method-assign]
    a = asyncio.create_task(service.enqueue_bytes(envelope(), CONTENT))
    await asyncio.wait_for(in_first_sync.wait(), 30)
    writer_b = service.open_spool()
    writer_b.write(CONTENT)
    bad.add(writer_b.queue_id)
    b = asyncio.create_task(service.enqueue(envelope(), writer_b))
    results = await asyncio.gather(a, b, return_exceptions=True)
    assert [str(r.reply) if isinstance(r, ReplyError) else r for r in results] == [
        FAILED, FAILED]
    assert (os.listdir(queue_dir), harness.store.queue_ids()) == ([], [])


@pytest.mark.parametrize(("target", "name"), SYNC_FAILURES)
async def test_a_failed_sync_fails_the_files_written_while_it_ran(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> None:
    await sync_fails_while_the_next_batch_is_written(harness, monkeypatch, target, name)


@pytest.mark.parametrize("sync", ["syncfs", "fsync"])
async def test_after_a_failed_sync_the_queue_refuses_until_restarted(
        tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch, sync: str) -> None:
    if sync == "syncfs" and not syncfs_available():
        pytest.skip("syncfs(2) needs Linux 5.17+")
    failures = [OSError(5, "Input/output error")]

    def fail_once(real: Any) -> Any:
        def sync_call(*args: Any) -> None:
            if failures:
                raise failures.pop()
            real(*args)
        return sync_call

    monkeypatch.setattr(durability, "sync_filesystem", fail_once(durability.sync_filesystem))
    monkeypatch.setattr(spool_module, "fsync_directory", fail_once(spool_module.fsync_directory))

    def new_service() -> QueueService:
        return QueueService(make_settings(tmp_path, sync=sync), router=TableRouter(),  # type: ignore[arg-type]
                            agents={"local": ScriptedAgent()}, clock=clock)

    service = new_service()
    await service.start(scheduler=False)
    try:
        for _ in range(2):
            with pytest.raises(ReplyError) as info:
                await service.enqueue_bytes(envelope(), CONTENT)
            assert str(info.value.reply) == FAILED
        assert failures == []  # the first failed its sync, the second was refused without one
        with pytest.raises(OSError, match="an earlier spool sync failed"):
            await service.write(lambda: "durable", True)
        assert await service.write(lambda: "not durable", False) == "not durable"
        assert (os.listdir(tmp_path / "spool" / "queue"), service.store.queue_ids()) == ([], [])
    finally:
        await service.stop()
    service = new_service()  # a restart: recovery reads the disk again, and mail is taken
    await service.start(scheduler=False)
    try:
        queue_id = await service.enqueue_bytes(envelope(), CONTENT)
        assert service.store.queue_ids() == [queue_id]
    finally:
        await service.stop()


@pytest.mark.server_sync("fsync")
async def test_a_failing_place_takes_its_files_back_and_the_queue_goes_on(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    service = harness.service
    real_finish, real_abort = spool_module._finish, spool_module.SpoolWriter.abort
    writers = []
    for _ in range(3):
        writer = service.open_spool()
        writer.write(CONTENT)
        writers.append(writer)

    def finish(writer: Any, final: Path, fsync: bool) -> Any:
        if writer is writers[1]:
            raise MemoryError  # not a per-file error: place() itself fails
        return real_finish(writer, final, fsync)

    def abort(self: Any) -> None:
        real_abort(self)
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(spool_module, "_finish", finish)
    monkeypatch.setattr(spool_module.SpoolWriter, "abort", abort)
    results = await asyncio.gather(*(service.enqueue(envelope(), w) for w in writers),
                                   return_exceptions=True)
    assert [str(r.reply) if isinstance(r, ReplyError) else r for r in results] == [FAILED] * 3
    assert os.listdir(harness.data_dir / "spool" / "queue") == []
    monkeypatch.undo()
    # The placer is still there: index writes and enqueues go on.
    assert await service.write(lambda: 42, False) == 42
    queue_id = await harness.send()
    assert harness.store.queue_ids() == [queue_id]


def record_fsyncs(monkeypatch: pytest.MonkeyPatch, events: list[tuple[str, str]]) -> None:
    """Append ("fsync", path) to ``events`` for every os.fsync, then do it."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.server_sync("fsync")
async def test_durable_before_enqueue_returns(harness: Harness,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert harness.service.spool.sync_method == "fsync"
    events: list[tuple[str, str]] = []
    record_fsyncs(monkeypatch, events)
    insert = harness.store.insert

    def recording_insert(messages: Any) -> None:
        insert(messages)
        events.append(("committed", ",".join(m.queue_id for m in messages)))

    harness.store.insert = recording_insert
    queue_id = await harness.send()
    spool = harness.data_dir / "spool"
    # A small message never touched tmp/: written from memory into queue/, fsynced there.
    assert events == [
        ("fsync", str(spool / "queue" / queue_id)),
        ("fsync", str(spool / "queue")),
        ("committed", queue_id),
    ]
    # Another connection (another process) sees the committed row, and the file is there.
    db = sqlite3.connect(harness.data_dir / "queue.db")
    assert db.execute("SELECT queue_id, size FROM message").fetchall() == [
        (queue_id, (spool / "queue" / queue_id).stat().st_size)]
    db.close()


@pytest.mark.server_sync("fsync")
async def test_large_message_spills_to_tmp_then_moves(harness: Harness,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    spool = harness.data_dir / "spool"
    writer = harness.service.open_spool()
    writer.write(b"Subject: big\r\n\r\n")
    assert os.listdir(spool / "tmp") == [] and not writer.spilled
    body = b"x" * 78 + b"\r\n"
    for _ in range(spool_module.MEMORY_LIMIT // len(body) + 1):
        writer.write(body)
    assert writer.spilled and os.listdir(spool / "tmp") == [writer.queue_id]
    events: list[tuple[str, str]] = []
    record_fsyncs(monkeypatch, events)
    queue_id = await harness.service.enqueue(envelope(), writer)
    assert events == [("fsync", str(spool / "tmp" / queue_id)), ("fsync", str(spool / "queue"))]
    assert os.listdir(spool / "tmp") == []
    assert (spool / "queue" / queue_id).stat().st_size == writer.size == harness.store.get(
        queue_id).size


async def test_an_existing_spool_file_is_never_overwritten(harness: Harness) -> None:
    spool = harness.data_dir / "spool"
    writer = harness.service.open_spool()
    writer.write(CONTENT)
    (spool / "queue" / writer.queue_id).write_bytes(b"someone else's")
    with pytest.raises(ReplyError) as info:
        await harness.service.enqueue(envelope(), writer)
    assert info.value.reply.code == 451
    assert (spool / "queue" / writer.queue_id).read_bytes() == b"someone else's"
    assert harness.store.queue_ids() == []


@pytest.mark.skipif(not syncfs_available(), reason="syncfs(2) needs Linux 5.17+")
@pytest.mark.server_sync("syncfs")
async def test_syncfs_makes_the_batch_durable_before_the_index_commit(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, Any]] = []
    real_syncfs = durability.sync_filesystem

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def syncfs(path: Path, fd: int) -> None:
        events.append(("syncfs", sorted(os.listdir(path))))
        real_syncfs(path, fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(durability, "sync_filesystem", syncfs)
    store = harness.store
    insert = store.insert

    def recording_insert(messages: Any) -> None:
        insert(messages)
        level = store._db.execute("PRAGMA synchronous").fetchone()[0]
        events.append(("inserted", sorted(m.queue_id for m in messages), level))

    store.insert = recording_insert
    transactions = store.transactions
    ids = sorted(await asyncio.gather(*(harness.send() for _ in range(5))))
    # No fsync at all: the five files are placed, the index transaction commits without
    # flushing its log (synchronous=NORMAL, 1), then ONE syncfs makes both durable, and
    # only then do the enqueues return.
    assert events == [("inserted", ids, 1), ("syncfs", ids)]
    assert store.transactions == transactions + 1
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # back to FULL
    spool = harness.data_dir / "spool"
    assert os.listdir(spool / "tmp") == []
    assert all((spool / "queue" / q).read_bytes().endswith(CONTENT) for q in ids)


async def a_failing_sync_fails_the_whole_batch(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> None:
    """Every sync fails: the three enqueues of one batch get 451 and leave nothing."""
    def sync(*args: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(target, name, sync)
    results = await asyncio.gather(*(harness.send() for _ in range(3)), return_exceptions=True)
    assert [str(r.reply) if isinstance(r, ReplyError) else r for r in results] == [FAILED] * 3
    spool = harness.data_dir / "spool"
    assert (os.listdir(spool / "tmp"), os.listdir(spool / "queue")) == ([], [])
    assert harness.store.queue_ids() == []


@pytest.mark.parametrize(("target", "name"), SYNC_FAILURES)
async def test_a_failed_sync_fails_the_whole_batch(
        harness: Harness, monkeypatch: pytest.MonkeyPatch, target: Any, name: str) -> None:
    await a_failing_sync_fails_the_whole_batch(harness, monkeypatch, target, name)


def test_sync_method_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert durability._kernel_version("6.18.44-fc-v857") == (6, 18)
    assert durability._kernel_version("5.8.0") == (5, 8)
    assert durability._kernel_version("5.7.19-generic") == (5, 7)
    assert durability._kernel_version("5.7-rc3") == (5, 7)
    assert durability._kernel_version("weird") == (0, 0)
    assert durability.resolve_sync_method("fsync") == "fsync"
    with pytest.raises(ValueError, match="unknown"):
        durability.resolve_sync_method("sometimes")
    monkeypatch.setattr(durability, "_syncfs", None)
    monkeypatch.setattr(durability, "_syncfs_checked", True)
    assert durability.resolve_sync_method("auto") == "fsync"
    with pytest.raises(ValueError, match=r"Linux 5\.17"):
        durability.resolve_sync_method("syncfs")
    with pytest.raises(OSError):
        durability.sync_filesystem(Path("/"), 0)


async def test_enqueue_bytes_prepends_received(harness: Harness) -> None:
    env = envelope()
    queue_id = await harness.service.enqueue_bytes(env, CONTENT)
    expected = received_header(env, queue_id, HOST, timestamp=T0) + CONTENT
    message = harness.store.get(queue_id)
    assert message.spool_path.read_bytes() == expected
    assert message.size == len(expected)
    assert (message.reverse_path, message.body, message.client_address, message.client_name,
            message.arrival, message.is_dsn) == (
        "alice@example.org", "8BITMIME", "192.0.2.1", "client.example.com", T0, False)
    raw = await harness.service.enqueue_bytes(env, CONTENT, received=False)
    assert harness.store.get(raw).spool_path.read_bytes() == CONTENT


async def test_expansion_one_row_per_final_address(harness: Harness) -> None:
    harness.router.aliases = {
        "team@example.org": ["bob@example.org", "carol@example.net"],
        "bob+tag@example.org": ["bob@example.org"],
    }
    queue_id = await harness.send(
        "team@example.org", "bob+tag@example.org", "dave@example.net",
        notify=frozenset({"SUCCESS"}), orcpt=("rfc822", "team@example.org"),
    )
    rows = [(r.address, r.original, r.route, r.notify, r.orcpt)
            for r in harness.store.get(queue_id).recipients]
    assert rows == [
        ("bob@example.org", "team@example.org", "local", frozenset({"SUCCESS"}),
         ("rfc822", "team@example.org")),
        ("carol@example.net", "team@example.org", "remote", frozenset({"SUCCESS"}),
         ("rfc822", "team@example.org")),
        ("dave@example.net", "dave@example.net", "remote", frozenset({"SUCCESS"}),
         ("rfc822", "team@example.org")),
    ]


async def test_routing_failure_is_a_451_and_leaves_nothing(harness: Harness) -> None:
    harness.router.fail = True
    with pytest.raises(ReplyError) as info:
        await harness.send()
    assert info.value.reply == Reply(451, "4.3.0",
                                     "Requested action aborted: error in recipient routing")
    assert os.listdir(harness.data_dir / "spool" / "tmp") == []
    assert os.listdir(harness.data_dir / "spool" / "queue") == []
    assert harness.store.queue_ids() == []


async def test_index_failure_is_a_451_and_removes_the_files(harness: Harness) -> None:
    def broken_insert(messages: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    harness.store.insert = broken_insert
    results = await asyncio.gather(harness.send(), harness.send(), return_exceptions=True)
    assert [type(r) for r in results] == [ReplyError, ReplyError]
    assert [r.reply.code for r in results if isinstance(r, ReplyError)] == [451, 451]
    assert os.listdir(harness.data_dir / "spool" / "tmp") == []
    assert os.listdir(harness.data_dir / "spool" / "queue") == []


async def test_empty_envelope_is_refused(harness: Harness) -> None:
    env = envelope()
    env.recipients.clear()
    writer = harness.service.open_spool()
    with pytest.raises(ValueError):
        await harness.service.enqueue(env, writer)
    assert os.listdir(harness.data_dir / "spool" / "tmp") == []


async def test_one_queue_per_data_directory(harness: Harness) -> None:
    other = QueueService(harness.service.settings, router=TableRouter(),
                         agents={"local": ScriptedAgent()})  # type: ignore[arg-type]
    with pytest.raises(QueueBusyError):
        await other.start(scheduler=False)


async def test_enqueue_after_stop_is_refused(tmp_path: Path, clock: Clock) -> None:
    service = QueueService(make_settings(tmp_path), router=TableRouter(),  # type: ignore[arg-type]
                           agents={"local": ScriptedAgent()}, clock=clock)
    await service.start(scheduler=False)
    await service.stop()
    with pytest.raises(RuntimeError):
        await service.enqueue_bytes(envelope(), CONTENT)
    assert os.listdir(tmp_path / "spool" / "tmp") == []


async def test_recovery_resumes_and_moves_unusable_entries_aside(tmp_path: Path,
                                                                 clock: Clock) -> None:
    agent = ScriptedAgent()
    service = await started_queue(tmp_path, agent, clock)
    good = await service.enqueue_bytes(envelope("alice@example.org", "a@example.org",
                                                "b@example.org"), CONTENT)
    missing = await service.enqueue_bytes(envelope(), CONTENT)
    truncated = await service.enqueue_bytes(envelope(), CONTENT)
    corrupt = await service.enqueue_bytes(envelope(), CONTENT)
    await service.stop()

    spool = tmp_path / "spool"
    (spool / "queue" / missing).unlink()
    (spool / "queue" / truncated).write_bytes(b"Received: cut short")
    db = sqlite3.connect(tmp_path / "queue.db")
    db.execute("UPDATE recipient SET state = 'lost' WHERE queue_id = ?", (corrupt,))
    db.commit()
    db.close()
    orphan = new_queue_id()
    (spool / "queue" / orphan).write_bytes(b"no index row")
    leftover = new_queue_id()
    (spool / "tmp" / leftover).write_bytes(b"half a message")

    service = await started_queue(tmp_path, agent, clock)
    try:
        report = service.recovery
        assert report is not None
        assert (report.messages, report.recipients, report.tmp_moved, report.orphans_moved,
                report.corrupt_entries, report.missing_spool) == (1, 2, 1, 1, 1, 2)
        assert sorted(os.listdir(spool / "corrupt")) == sorted([
            leftover, orphan, f"{missing}.json", f"{truncated}.json", truncated,
            f"{corrupt}.json", corrupt,
        ])
        assert (spool / "corrupt" / leftover).read_bytes() == b"half a message"
        record = json.loads((spool / "corrupt" / f"{corrupt}.json").read_text())
        assert record["reason"] == "recipient 5: unknown state 'lost'"
        assert record["recipients"][0]["state"] == "lost"
        assert json.loads((spool / "corrupt" / f"{missing}.json").read_text())["reason"] == (
            "spool file missing")
        assert os.listdir(spool / "tmp") == []
        assert os.listdir(spool / "queue") == [good]
        assert service.store.queue_ids() == [good]
        assert await service.run_due_once() == 2
        assert agent.calls == [(good, ["a@example.org", "b@example.org"])]
        assert service.store.queue_ids() == []
        assert os.listdir(spool / "queue") == []
    finally:
        await service.stop()


async def test_recovery_of_a_clean_queue_moves_nothing(harness: Harness) -> None:
    report = harness.service.recovery
    assert report is not None
    assert (report.messages, report.tmp_moved, report.orphans_moved, report.corrupt_entries,
            report.missing_spool, report.moved) == (0, 0, 0, 0, 0, [])


async def test_store_writes_share_the_enqueue_transaction(harness: Harness) -> None:
    store, service = harness.store, harness.service
    first = await harness.send()
    recipient_id = store.get(first).recipients[0].id
    transactions, batches = store.transactions, service.commit_batches
    writer = service.open_spool()
    writer.write(CONTENT)
    second, claimed, deleted = await asyncio.gather(
        service.enqueue(envelope(), writer),
        service.write(lambda: store.begin_attempt([(recipient_id, T0 + 300)], T0), False),
        service.write(lambda: store.delete("no-such-id"), False),
    )
    assert (claimed, deleted) == ([recipient_id], False)
    assert store.transactions == transactions + 1
    assert service.commit_batches == batches + 1
    assert store.get(first).recipients[0].attempts == 1
    assert store.queue_ids() == sorted([first, second])


async def test_a_failing_store_write_fails_alone(harness: Harness) -> None:
    service = harness.service

    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    results = await asyncio.gather(
        service.write(broken, True), harness.send(), return_exceptions=True
    )
    assert isinstance(results[0], sqlite3.OperationalError)
    assert harness.store.queue_ids() == [results[1]]


@pytest.mark.parametrize("fail", ["exists", "rename"])
def test_a_refused_spilled_message_leaves_nothing_in_tmp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str) -> None:
    spool = spool_module.Spool(tmp_path / "spool", sync="fsync")
    spool.ensure_dirs()
    writer = spool.open()
    writer.write(b"x" * (spool_module.MEMORY_LIMIT + 1))
    assert writer.spilled and os.listdir(spool.tmp_dir) == [writer.queue_id]
    if fail == "exists":
        (spool.queue_dir / writer.queue_id).write_bytes(b"someone else's")
    else:
        def rename(src: object, dst: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "rename", rename)
    [error] = spool.commit([writer])
    monkeypatch.undo()
    assert isinstance(error, OSError)
    assert os.listdir(spool.tmp_dir) == []
    expected = [writer.queue_id] if fail == "exists" else []
    assert os.listdir(spool.queue_dir) == expected
