"""Spool file reuse: a finished message's file is kept in free/ and written over by the next
small message; recovery checks a reused file's content against the CRC-32 in the index."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import pytest

from pigeon.queue import service as service_module
from pigeon.queue import spool as spool_module
from pigeon.queue.service import QueueBusyError, QueueService
from pigeon.queue.spool import MEMORY_LIMIT, Spool, rename_noreplace

from .conftest import (
    CONTENT,
    Clock,
    Harness,
    ScriptedAgent,
    TableRouter,
    envelope,
    make_settings,
    started_queue,
)

pytestmark = pytest.mark.skipif(spool_module._renameat2 is None,
                                reason="renameat2(2) not available")


def commit(spool: Spool, content: bytes) -> str:
    writer = spool.open()
    writer.write(content)
    assert spool.commit([writer]) == [None]
    return writer.queue_id


def test_a_discarded_file_is_reused_with_exactly_the_new_content(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.ensure_dirs()
    first = commit(spool, b"A" * 5000)
    inode = os.stat(spool.queue_dir / first).st_ino
    assert spool.discard(first) is True
    assert os.listdir(spool.queue_dir) == []
    assert os.listdir(spool.free_dir) == [first]
    assert (spool.free_files, spool.discarded_files) == (0, 1)
    spool.sync()  # the name is durably gone from queue/: now the inode may be reused
    assert (spool.free_files, spool.discarded_files) == (1, 0)

    writer = spool.open()
    writer.write(b"shorter content")
    assert spool.commit([writer]) == [None]
    path = spool.queue_dir / writer.queue_id
    assert os.stat(path).st_ino == inode
    assert path.read_bytes() == b"shorter content"
    assert writer.checksum == zlib.crc32(b"shorter content")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.listdir(spool.free_dir) == []

    assert spool.discard(writer.queue_id) is True
    spool.sync()
    longer = commit(spool, b"B" * 9000)
    assert (spool.queue_dir / longer).read_bytes() == b"B" * 9000
    assert os.stat(spool.queue_dir / longer).st_ino == inode


def test_without_reuse_a_discarded_file_is_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.ensure_dirs()
    queue_id = commit(spool, CONTENT)
    assert spool.discard(queue_id) is True
    assert os.listdir(spool.queue_dir) == [] and os.listdir(spool.free_dir) == []
    writer = spool.open()
    writer.write(CONTENT)
    assert spool.commit([writer]) == [None]
    assert writer.checksum is None
    assert spool.discard("0000000000ZZ") is False


def test_large_files_and_files_beyond_the_limit_are_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "FREE_LIMIT", 2)
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.ensure_dirs()
    large = commit(spool, b"x" * (MEMORY_LIMIT + 1))
    assert spool.discard(large) is True
    small = [commit(spool, CONTENT) for _ in range(3)]
    assert [spool.discard(q) for q in small] == [True, True, True]
    assert os.listdir(spool.queue_dir) == []
    spool.close()  # waits for the background removals
    assert sorted(os.listdir(spool.free_dir)) == sorted(small[:2])
    assert (spool.free_files, spool.discarded_files) == (0, 2)


def test_reuse_never_replaces_an_existing_queue_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.ensure_dirs()
    spool.discard(commit(spool, CONTENT))
    spool.sync()
    writer = spool.open()
    writer.write(b"new message")
    (spool.queue_dir / writer.queue_id).write_bytes(b"someone else's")
    [error] = spool.commit([writer])
    assert isinstance(error, FileExistsError)
    assert (spool.queue_dir / writer.queue_id).read_bytes() == b"someone else's"
    assert spool.free_files == 1  # the file it would have reused stays available


def test_rename_noreplace(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    with pytest.raises(FileExistsError):
        rename_noreplace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == b"a" and (tmp_path / "b").read_bytes() == b"b"
    rename_noreplace(tmp_path / "a", tmp_path / "c")
    assert sorted(os.listdir(tmp_path)) == ["b", "c"]


def test_loading_free_keeps_only_plain_single_name_small_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", reuse=True)
    spool.ensure_dirs()
    (spool.free_dir / "good").write_bytes(b"old")
    (spool.free_dir / "big").write_bytes(b"x" * (MEMORY_LIMIT + 1))
    queued = commit(spool, CONTENT)
    os.link(spool.queue_dir / queued, spool.free_dir / "also-queued")  # a half-done rename
    (spool.free_dir / "dir").mkdir()
    (spool.free_dir / "link").symlink_to(spool.queue_dir / queued)
    again = Spool(tmp_path / "spool", reuse=True)
    again.ensure_dirs()
    # Found at start: reusable only after the first sync.
    assert (again.free_files, again.discarded_files) == (0, 1)
    again.sync()
    assert (again.free_files, again.discarded_files) == (1, 0)
    assert sorted(os.listdir(spool.free_dir)) == ["dir", "good"]
    assert (spool.queue_dir / queued).read_bytes() == CONTENT


async def test_delivered_messages_leave_their_files_for_the_next(harness: Harness) -> None:
    first = await harness.send()
    assert await harness.service.run_due_once() == 1
    free = harness.data_dir / "spool" / "free"
    inode = os.stat(free / first).st_ino
    # The next batch cannot reuse it yet: its removal from queue/ was not synced. That
    # batch's sync makes it reusable for the batch after.
    second = await harness.send(content=b"Subject: two\r\n\r\nsecond\r\n")
    assert os.listdir(free) == [first]
    third = await harness.send(content=b"Subject: three\r\n\r\nthird\r\n")
    assert os.listdir(free) == []
    queue = harness.data_dir / "spool" / "queue"
    assert os.stat(queue / third).st_ino == inode
    rows = {row.queue_id: row for row in harness.rows()}
    assert rows[second].checksum is None  # a new file
    content = (queue / third).read_bytes()
    assert content.endswith(b"Subject: three\r\n\r\nthird\r\n")
    assert rows[third].checksum == zlib.crc32(content)
    assert rows[third].size == len(content)


async def test_a_file_that_cannot_be_reused_gives_way_to_a_new_one(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = harness.service.spool
    for _ in range(2):
        await harness.send()
    assert await harness.service.run_due_once() == 2
    spool.sync()
    assert spool.free_files == 2

    def refused(source: Path, target: Path) -> None:
        raise PermissionError(1, "Operation not permitted", str(source))

    monkeypatch.setattr(spool_module, "rename_noreplace", refused)
    queue_ids = [await harness.send() for _ in range(3)]
    # Every message is queued, each in a new file; the files that failed are gone.
    assert sorted(q.queue_id for q in harness.rows()) == sorted(queue_ids)
    assert all(q.checksum is None for q in harness.rows())
    assert os.listdir(harness.data_dir / "spool" / "free") == []
    assert spool.free_files == 0


async def test_a_second_start_leaves_the_running_queues_free_dir_alone(
        harness: Harness, clock: Clock) -> None:
    free = harness.data_dir / "spool" / "free"
    (free / "big").write_bytes(b"x" * (MEMORY_LIMIT + 1))  # what a start would remove
    other = QueueService(make_settings(harness.data_dir), router=TableRouter(),
                         agents={"local": ScriptedAgent()}, clock=clock)  # type: ignore[arg-type]
    with pytest.raises(QueueBusyError):
        await other.start(scheduler=False)
    assert os.listdir(free) == ["big"]


async def test_recovery_sets_aside_a_reused_file_whose_content_changed(
        tmp_path: Path, clock: Clock) -> None:
    agent = ScriptedAgent()
    service = await started_queue(tmp_path, agent, clock)
    for _ in range(2):
        await service.enqueue_bytes(envelope(), CONTENT)
    assert await service.run_due_once() == 2
    good = await service.enqueue_bytes(envelope(), CONTENT)
    stale = await service.enqueue_bytes(envelope(), CONTENT)
    await service.stop()
    queue = tmp_path / "spool" / "queue"
    data = bytearray((queue / stale).read_bytes())
    data[-3] ^= 0x20  # same size, other content: what a lost write would leave
    (queue / stale).write_bytes(bytes(data))

    service = await started_queue(tmp_path, agent, clock)
    try:
        report = service.recovery
        assert report is not None
        assert (report.messages, report.missing_spool) == (1, 1)
        assert service.store.queue_ids() == [good]
        corrupt = tmp_path / "spool" / "corrupt"
        assert sorted(os.listdir(corrupt)) == sorted([stale, f"{stale}.json"])
        assert (corrupt / stale).read_bytes() == bytes(data)
        record = json.loads((corrupt / f"{stale}.json").read_text())
        assert record["reason"] == "spool file content does not match the index (CRC-32)"
    finally:
        await service.stop()


async def test_recovery_sets_aside_a_reused_file_it_cannot_read(
        tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = ScriptedAgent()
    service = await started_queue(tmp_path, agent, clock)
    await service.enqueue_bytes(envelope(), CONTENT)
    assert await service.run_due_once() == 1
    await service.enqueue_bytes(envelope(), CONTENT)  # its sync frees the first file
    reused = await service.enqueue_bytes(envelope(), CONTENT)
    assert service.store.get(reused).checksum is not None
    await service.stop()

    def unreadable(path: Path) -> int:
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(service_module, "_crc32", unreadable)
    service = await started_queue(tmp_path, agent, clock)  # one bad file does not stop it
    try:
        report = service.recovery
        assert report is not None
        assert (report.messages, report.missing_spool) == (1, 1)
        record = json.loads((tmp_path / "spool" / "corrupt" / f"{reused}.json").read_text())
        assert record["reason"] == "spool file unreadable: Input/output error"
    finally:
        await service.stop()
