"""The POP3 view of a Maildir: lock, listing, sizes, unique-ids, seen flag, expunge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pigeon.storage.maildir import maildrop as maildrop_module
from pigeon.storage.maildir.maildrop import (
    LOCK_NAME,
    Maildrop,
    MaildropError,
    MaildropLocked,
    clean_tmp,
    unique_id,
)
from pigeon.storage.maildir.store import MaildirStore

KEY = "alice@example.com"


@pytest.fixture
def store(tmp_path: Path) -> MaildirStore:
    return MaildirStore(tmp_path / "mail", hostname="mx.example.com")


def deliver(store: MaildirStore, tmp_path: Path, content: bytes) -> str:
    spool = tmp_path / "spool.eml"
    spool.write_bytes(content)
    return store.deliver(KEY, spool, b"Return-Path: <a@b>\r\n")


def test_empty_mailbox_is_created_and_locked(store: MaildirStore) -> None:
    path = store.path(KEY)
    with Maildrop.open(path) as drop:
        assert drop.messages == []
        assert drop.locked
        assert sorted(p.name for p in path.iterdir()) == [LOCK_NAME, "cur", "new", "tmp"]
    assert not drop.locked


def test_second_open_is_refused_until_the_first_closes(store: MaildirStore) -> None:
    path = store.path(KEY)
    first = Maildrop.open(path)
    with pytest.raises(MaildropLocked):
        Maildrop.open(path)
    with pytest.raises(MaildropLocked):
        Maildrop.open(path)
    first.close()
    first.close()  # idempotent
    Maildrop.open(path).close()


def test_lock_is_released_when_a_process_dies(store: MaildirStore) -> None:
    path = store.path(KEY)
    Maildrop.open(path).close()
    code = (
        "import os, sys; from pathlib import Path;"
        "from pigeon.storage.maildir.maildrop import Maildrop;"
        "Maildrop.open(Path(sys.argv[1])); os._exit(0)"  # dies holding the lock
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)
    Maildrop.open(path).close()


def test_unusable_directory_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MaildropError):
        Maildrop.open(blocker / "box")


def test_listing_sizes_uids_and_order(store: MaildirStore, tmp_path: Path) -> None:
    names = [deliver(store, tmp_path, f"Subject: {i}\r\n\r\nbody\r\n".encode())
             for i in range(3)]
    with Maildrop.open(store.path(KEY)) as drop:
        assert [m.uid for m in drop.messages] == names
        assert [m.name for m in drop.messages] == names
        assert [m.subdir for m in drop.messages] == ["new"] * 3
        for i, m in enumerate(drop.messages):
            wire = b"".join(drop.read_blocks(i, block=7))
            assert len(wire) == m.size == (store.path(KEY) / "new" / m.name).stat().st_size
            assert wire.startswith(b"Return-Path: <a@b>\r\nSubject: ")


def test_sizes_count_crlf_for_files_with_bare_lf(store: MaildirStore) -> None:
    box = store.ensure(KEY)
    (box / "cur" / "1000000000.M1P1.other:2,").write_bytes(b"Subject: x\n\nline\nlast")
    (box / "new" / ".hidden").write_bytes(b"not a message")
    (box / "new" / "1000000001.M1P1.dovecot,S=5,W=9").write_bytes(b"a\nb\nc")
    with Maildrop.open(box) as drop:
        first, second = drop.messages
        assert first.size == len(b"Subject: x\r\n\r\nline\r\nlast\r\n") == 26
        assert b"".join(drop.read_blocks(0)) == b"Subject: x\r\n\r\nline\r\nlast\r\n"
        assert first.uid == "1000000000.M1P1.other"
        assert second.size == 9  # the Dovecot W= field is the CRLF size
        assert b"".join(drop.read_blocks(1)) == b"a\r\nb\r\nc\r\n"


def test_uid_is_the_base_name_or_a_stable_digest() -> None:
    assert unique_id("1700000000.M1P2Q3.host,S=10") == "1700000000.M1P2Q3.host,S=10"
    long = "1700000000.M123456P123456Q99." + "h" * 60 + ",S=1234"
    assert len(unique_id(long)) == 65
    assert unique_id(long) == unique_id(long) != unique_id(long + "0")
    assert unique_id("with space").startswith("H")
    assert all(0x21 <= ord(c) <= 0x7E for c in unique_id("dé"))


def test_messages_arriving_during_a_session_are_not_shown(
    store: MaildirStore, tmp_path: Path
) -> None:
    deliver(store, tmp_path, b"one\r\n")
    with Maildrop.open(store.path(KEY)) as drop:
        deliver(store, tmp_path, b"two\r\n")
        assert len(drop.messages) == 1
    with Maildrop.open(store.path(KEY)) as drop:
        assert len(drop.messages) == 2


def test_mark_seen_moves_to_cur_with_s_flag(store: MaildirStore, tmp_path: Path) -> None:
    name = deliver(store, tmp_path, b"one\r\n")
    box = store.path(KEY)
    with Maildrop.open(box) as drop:
        drop.mark_seen(0)
        drop.mark_seen(0)
        assert drop.messages[0].name == f"{name}:2,S"
        assert drop.messages[0].subdir == "cur"
        assert drop.messages[0].uid == name
    assert os.listdir(box / "new") == []
    assert os.listdir(box / "cur") == [f"{name}:2,S"]
    with Maildrop.open(box) as drop:
        assert drop.messages[0].uid == name  # same unique-id in the next session


def test_mark_seen_keeps_other_flags_sorted(store: MaildirStore) -> None:
    box = store.ensure(KEY)
    (box / "cur" / "1000000000.M1P1.h:2,RF").write_bytes(b"x\r\n")
    with Maildrop.open(box) as drop:
        drop.mark_seen(0)
    assert os.listdir(box / "cur") == ["1000000000.M1P1.h:2,FRS"]


def test_a_message_moved_by_another_reader_is_found_again(
    store: MaildirStore, tmp_path: Path
) -> None:
    name = deliver(store, tmp_path, b"one\r\n")
    box = store.path(KEY)
    with Maildrop.open(box) as drop:
        os.rename(box / "new" / name, box / "cur" / f"{name}:2,F")
        assert b"".join(drop.read_blocks(0)) == b"Return-Path: <a@b>\r\none\r\n"
        assert drop.messages[0].name == f"{name}:2,F"
        os.unlink(box / "cur" / f"{name}:2,F")
        with pytest.raises(FileNotFoundError):
            drop.open_message(0)


def test_expunge_removes_only_the_given_messages(store: MaildirStore, tmp_path: Path) -> None:
    for i in range(4):
        deliver(store, tmp_path, f"m{i}\r\n".encode())
    box = store.path(KEY)
    with Maildrop.open(box) as drop:
        keep = [drop.messages[0].uid, drop.messages[2].uid]
        drop.mark_seen(1)
        os.unlink(box / "new" / drop.messages[3].name)  # already gone: counts as removed
        assert drop.expunge([1, 3]) == 0
    with Maildrop.open(box) as drop:
        assert [m.uid for m in drop.messages] == keep


def test_tmp_leftovers_older_than_36_hours_are_removed(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / "old").write_bytes(b"crashed delivery")
    (tmp / "sub").mkdir()
    now = os.stat(tmp / "old").st_ctime
    # Nothing is 36 hours old yet (a delivery may still be writing).
    assert clean_tmp(tmp, now=now + 36 * 3600 - 1) == 0
    assert sorted(os.listdir(tmp)) == ["old", "sub"]
    assert clean_tmp(tmp, now=now + 36 * 3600 + 1) == 1
    assert os.listdir(tmp) == ["sub"]  # directories are never removed
    assert clean_tmp(tmp_path / "missing", now=now) == 0


def test_opening_the_maildrop_cleans_tmp(store: MaildirStore, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = store.path(KEY)
    deliver(store, tmp_path, b"Subject: kept\r\n\r\nbody\r\n")
    (path / "tmp" / "leftover").write_bytes(b"being delivered")
    with Maildrop.open(path) as drop:
        assert len(drop.messages) == 1
    assert os.listdir(path / "tmp") == ["leftover"]
    later = os.stat(path / "tmp" / "leftover").st_ctime + 37 * 3600
    monkeypatch.setattr(maildrop_module.time, "time", lambda: later)
    with Maildrop.open(path) as drop:
        assert len(drop.messages) == 1
    assert os.listdir(path / "tmp") == []
