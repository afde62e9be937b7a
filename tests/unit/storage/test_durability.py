"""Durability primitives: the syncfs group barrier between threads, Maildir on syncfs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from pigeon.storage import durability
from pigeon.storage.durability import SyncBarrier, syncfs_available
from pigeon.storage.maildir.store import MaildirStore

needs_syncfs = pytest.mark.skipif(not syncfs_available(), reason="syncfs(2) needs Linux 5.17+")


def test_barrier_shares_one_sync_among_threads_that_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first_running = threading.Event()
    release_first = threading.Event()
    calls: list[int] = []
    waiting = threading.Semaphore(0)

    def fake_sync(path: Path, fd: int) -> None:
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            first_running.set()
            assert release_first.wait(10)

    monkeypatch.setattr(durability, "sync_filesystem", fake_sync)
    barrier = SyncBarrier(tmp_path)
    leader = threading.Thread(target=barrier.sync)
    leader.start()
    assert first_running.wait(10)

    def follower() -> None:
        waiting.release()
        barrier.sync()

    # Five threads arrive while the first sync runs: they must not count on it...
    followers = [threading.Thread(target=follower) for _ in range(5)]
    for t in followers:
        t.start()
    for _ in followers:
        assert waiting.acquire(timeout=10)
    for _ in range(10_000):  # until every follower holds its ticket (at most ~10 s)
        if barrier._requested == 6:
            break
        threading.Event().wait(0.001)
    assert barrier._requested == 6
    release_first.set()
    for t in [leader, *followers]:
        t.join(10)
        assert not t.is_alive()
    # ...and one more sync covers all five of them.
    assert calls == [1, 2]
    assert barrier.syncs == 2


def test_barrier_reports_a_failed_sync_to_the_threads_it_covered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcomes = iter([OSError(5, "Input/output error"), None])

    def fake_sync(path: Path, fd: int) -> None:
        error = next(outcomes)
        if error is not None:
            raise error

    monkeypatch.setattr(durability, "sync_filesystem", fake_sync)
    barrier = SyncBarrier(tmp_path)
    with pytest.raises(OSError, match="Input/output error"):
        barrier.sync()
    barrier.sync()  # the next sync succeeds: the earlier error is not reported again
    assert barrier.syncs == 2


@needs_syncfs
def test_maildir_on_syncfs_syncs_before_and_after_the_move(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MaildirStore(tmp_path / "mail", hostname="mx.example.com", sync="syncfs")
    assert store.sync_method == "syncfs"
    spool = tmp_path / "spool"
    spool.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    box = store.ensure("bob@example.com")
    seen: list[tuple[list[str], list[str]]] = []
    real = durability.sync_filesystem

    def recording_sync(path: Path, fd: int) -> None:
        seen.append((os.listdir(box / "tmp"), os.listdir(box / "new")))
        real(path, fd)

    monkeypatch.setattr(durability, "sync_filesystem", recording_sync)
    fsyncs: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))
    name = store.deliver("bob@example.com", spool, b"Delivered-To: bob@example.com\r\n")
    assert seen == [([name], []), ([], [name])]
    assert fsyncs == []
    assert (box / "new" / name).read_bytes() == (
        b"Delivered-To: bob@example.com\r\nSubject: x\r\n\r\nbody\r\n")


@needs_syncfs
def test_maildir_on_syncfs_failure_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MaildirStore(tmp_path / "mail", hostname="mx.example.com", sync="syncfs")
    spool = tmp_path / "spool"
    spool.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    box = store.ensure("bob@example.com")

    def failing_sync(path: Path, fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durability, "sync_filesystem", failing_sync)
    with pytest.raises(OSError):
        store.deliver("bob@example.com", spool, b"")
    assert (os.listdir(box / "tmp"), os.listdir(box / "new")) == ([], [])


def test_barrier_fails_callers_that_arrived_during_a_failed_sync(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel reports a write-back error once per descriptor: the pages of a caller that
    # arrived while the failing syncfs ran may have failed in it, and the next syncfs says
    # nothing. So that caller must fail too.
    first_running = threading.Event()
    release_first = threading.Event()
    calls = 0

    def fake_sync(path: Path, fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_running.set()
            assert release_first.wait(10)
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(durability, "sync_filesystem", fake_sync)
    barrier = SyncBarrier(tmp_path)
    outcomes: dict[str, str] = {}

    def caller(name: str) -> None:
        try:
            barrier.sync()
            outcomes[name] = "ok"
        except OSError as exc:
            outcomes[name] = exc.strerror or ""

    a = threading.Thread(target=caller, args=("A",))
    a.start()
    assert first_running.wait(10)
    b = threading.Thread(target=caller, args=("B",))
    b.start()
    for _ in range(10_000):  # until B holds its ticket (at most ~10 s)
        if barrier._requested == 2:
            break
        threading.Event().wait(0.001)
    release_first.set()
    for t in (a, b):
        t.join(10)
        assert not t.is_alive()
    assert outcomes == {"A": "Input/output error", "B": "Input/output error"}
    barrier.sync()  # a caller arriving after the failure is not blamed for it
    barrier.close()


def test_sync_handle_keeps_one_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    seen: list[int] = []
    monkeypatch.setattr(durability, "sync_filesystem", lambda path, fd: seen.append(fd))
    handle = durability.SyncHandle(tmp_path / "not" / "yet")  # the nearest existing parent
    assert handle.path == tmp_path
    handle.sync()
    handle.sync()
    assert len(seen) == 2 and seen[0] == seen[1]
    handle.close()
    with pytest.raises(OSError):
        handle.sync()
    handle.close()
