"""The MDA: Maildir delivery, trace lines, loops, quota, errors, unique names."""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import stat
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pigeon.config import Settings
from pigeon.delivery.local import (
    LocalDelivery,
    delivered_to_addresses,
    maildir_path,
    trace_prefix,
)
from pigeon.queue.model import AttemptResult, QueuedMessage, QueuedRecipient
from pigeon.routing.aliases import parse_aliases
from pigeon.routing.router import Router
from pigeon.storage import durability
from pigeon.storage.durability import syncfs_available
from pigeon.storage.maildir.store import COPY_BLOCK, MaildirStore, encode_name
from pigeon.storage.sqlite.accounts import AccountStore

CONTENT = (
    b"Received: from client.example ([192.0.2.9])\r\n\tby mx.example.com (Pigeon) with ESMTP"
    b"\r\n\tid 0ABC; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alice <alice@remote.example>\r\nSubject: hello\r\n\r\n"
    b"Delivered-To: bob@example.com\r\nbody line\r\n"
)
NAME_RE = re.compile(r"^(\d+)\.M(\d{1,6})P(\d+)Q(\d+)\.mx\.example\.com,S=(\d+)$")

DELIVERED = AttemptResult("delivered", 250, "2.0.0", "Delivered to mailbox")


def make_settings(tmp_path: Path, sync: str = "auto") -> Settings:
    base = Settings()
    return base.model_copy(update={
        "server": base.server.model_copy(
            update={"hostname": "mx.example.com", "data_dir": tmp_path, "sync": sync}
        ),
        "domains": base.domains.model_copy(update={"local": ["example.com", "example.org"]}),
    })


@pytest.fixture
def accounts(tmp_path: Path) -> AccountStore:
    store = AccountStore(tmp_path / "accounts.db")
    store.add_mailbox("bob@example.com")
    store.add_mailbox("carol@example.org")
    store.add_mailbox("small@example.com", quota=200)
    yield store
    store.close()


@pytest.fixture(params=[
    "fsync",
    pytest.param("syncfs", marks=pytest.mark.skipif(not syncfs_available(),
                                                    reason="syncfs(2) needs Linux 5.17+")),
])
def mda(tmp_path: Path, accounts: AccountStore, request: pytest.FixtureRequest
        ) -> LocalDelivery:
    """The MDA, once per [server] sync method (syncfs: deliveries in batches)."""
    settings = make_settings(tmp_path, request.param)
    router = Router(settings, accounts, aliases=parse_aliases("team: bob, carol@example.org\n"
                                                              "loop1: loop2\nloop2: loop1\n"))
    return LocalDelivery(settings, accounts, router)


def message(tmp_path: Path, content: bytes = CONTENT, *, reverse_path: str = "alice@remote.example",
            addresses: tuple[str, ...] = ("bob@example.com",)) -> QueuedMessage:
    spool = tmp_path / "spool" / "queue" / "0ABC"
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_bytes(content)
    return QueuedMessage(
        queue_id="0ABC", reverse_path=reverse_path, spool_path=spool, size=len(content),
        arrival=1_700_000_000.0,
        recipients=[QueuedRecipient(id=i, address=a, original=a)
                    for i, a in enumerate(addresses, 1)],
    )


def files(tmp_path: Path, key: str, sub: str = "new") -> list[Path]:
    directory = maildir_path(tmp_path, key) / sub
    return sorted(directory.iterdir()) if directory.is_dir() else []


async def test_delivers_exact_bytes_into_new(tmp_path: Path, mda: LocalDelivery) -> None:
    msg = message(tmp_path)
    assert await mda.deliver(msg, msg.recipients) == [DELIVERED]
    [stored] = files(tmp_path, "bob@example.com")
    expected = (b"Return-Path: <alice@remote.example>\r\nDelivered-To: bob@example.com\r\n"
                + CONTENT)
    assert stored.read_bytes() == expected
    m = NAME_RE.match(stored.name)
    assert m is not None
    assert int(m.group(3)) == os.getpid()
    assert int(m.group(5)) == len(expected)
    assert files(tmp_path, "bob@example.com", "tmp") == []
    assert files(tmp_path, "bob@example.com", "cur") == []
    box = tmp_path / "mail" / "example.com" / "bob"
    for sub in ("", "tmp", "new", "cur"):
        assert stat.S_IMODE((box / sub).stat().st_mode) == 0o700
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600


async def test_null_reverse_path_and_each_recipient_gets_its_copy(
    tmp_path: Path, mda: LocalDelivery
) -> None:
    msg = message(tmp_path, reverse_path="", addresses=("carol@example.org", "bob@example.com"))
    assert await mda.deliver(msg, msg.recipients) == [DELIVERED, DELIVERED]
    [carol] = files(tmp_path, "carol@example.org")
    [bob] = files(tmp_path, "bob@example.com")
    assert carol.read_bytes() == b"Return-Path: <>\r\nDelivered-To: carol@example.org\r\n" + CONTENT
    assert bob.read_bytes() == b"Return-Path: <>\r\nDelivered-To: bob@example.com\r\n" + CONTENT


async def test_results_keep_recipient_order_with_mixed_outcomes(
    tmp_path: Path, mda: LocalDelivery
) -> None:
    msg = message(tmp_path, addresses=("nobody@example.com", "bob@example.com",
                                       "small@example.com", "loop1@example.com"))
    assert await mda.deliver(msg, msg.recipients) == [
        AttemptResult("failed", 550, "5.1.1", "<nobody@example.com>: User unknown"),
        DELIVERED,
        AttemptResult("deferred", 452, "4.2.2", "Mailbox full"),
        AttemptResult("failed", 554, "5.4.6", "<loop1@example.com>: Alias expansion loop"),
    ]
    assert not maildir_path(tmp_path, "nobody@example.com").exists()
    assert files(tmp_path, "small@example.com") == []


async def test_empty_recipient_list(tmp_path: Path, mda: LocalDelivery) -> None:
    assert await mda.deliver(message(tmp_path), []) == []


async def test_removed_mailbox_fails_5_1_1(
    tmp_path: Path, mda: LocalDelivery, accounts: AccountStore
) -> None:
    accounts.remove_mailbox("bob@example.com")
    msg = message(tmp_path)
    assert await mda.deliver(msg, msg.recipients) == [
        AttemptResult("failed", 550, "5.1.1", "<bob@example.com>: User unknown")
    ]


@pytest.mark.parametrize(
    "header",
    [
        b"Delivered-To: bob@example.com\r\n",
        b"delivered-to:   <BOB@Example.com> \r\n",
        b"Delivered-To:\r\n bob@example.com\r\n",
    ],
)
async def test_delivered_to_in_header_is_a_loop(
    tmp_path: Path, mda: LocalDelivery, header: bytes
) -> None:
    msg = message(tmp_path, header + CONTENT)
    assert await mda.deliver(msg, msg.recipients) == [
        AttemptResult("failed", 554, "5.4.6", "Mail loop detected")
    ]
    assert files(tmp_path, "bob@example.com") == []


async def test_delivered_to_for_another_address_is_no_loop(
    tmp_path: Path, mda: LocalDelivery
) -> None:
    msg = message(tmp_path, b"Delivered-To: carol@example.org\r\n" + CONTENT)
    assert await mda.deliver(msg, msg.recipients) == [DELIVERED]


async def test_quota_defers_when_the_message_does_not_fit(
    tmp_path: Path, mda: LocalDelivery
) -> None:
    small = b"Subject: x\r\n\r\nhi\r\n"  # 88 bytes stored, with the trace lines
    msg = message(tmp_path, small, addresses=("small@example.com",))
    assert await mda.deliver(msg, msg.recipients) == [DELIVERED]
    assert await mda.deliver(msg, msg.recipients) == [DELIVERED]  # 180 <= 200
    assert await mda.deliver(msg, msg.recipients) == [
        AttemptResult("deferred", 452, "4.2.2", "Mailbox full")
    ]
    assert len(files(tmp_path, "small@example.com")) == 2


async def test_disk_error_defers_4_3_0(tmp_path: Path, mda: LocalDelivery) -> None:
    blocker = tmp_path / "mail" / "example.com" / "bob"
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"not a directory")
    msg = message(tmp_path)
    assert await mda.deliver(msg, msg.recipients) == [
        AttemptResult("deferred", 451, "4.3.0", "Local delivery failed: disk error")
    ]


async def test_missing_spool_file_defers_everyone(tmp_path: Path, mda: LocalDelivery) -> None:
    msg = message(tmp_path, addresses=("bob@example.com", "carol@example.org"))
    msg.spool_path.unlink()
    assert await mda.deliver(msg, msg.recipients) == [
        AttemptResult("deferred", 451, "4.3.0", "Cannot read the queued message")
    ] * 2


async def test_implicit_postmaster_mailbox_is_created(tmp_path: Path, mda: LocalDelivery) -> None:
    msg = message(tmp_path, addresses=("postmaster@example.com",))
    assert await mda.deliver(msg, msg.recipients) == [DELIVERED]
    assert len(files(tmp_path, "postmaster@example.com")) == 1


async def test_concurrent_deliveries_get_unique_names(tmp_path: Path, mda: LocalDelivery) -> None:
    msg = message(tmp_path)
    results = await asyncio.gather(*(mda.deliver(msg, msg.recipients) for _ in range(40)))
    assert results == [[DELIVERED]] * 40
    names = [p.name for p in files(tmp_path, "bob@example.com")]
    assert len(names) == len(set(names)) == 40
    counters = {NAME_RE.match(n).group(4) for n in names}  # type: ignore[union-attr]
    assert len(counters) == 40
    assert files(tmp_path, "bob@example.com", "tmp") == []


async def test_large_message_is_copied_exactly(tmp_path: Path, mda: LocalDelivery) -> None:
    body = b"".join(b"line %07d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n" % i
                    for i in range(3 * COPY_BLOCK // 50))
    content = b"Subject: big\r\n\r\n" + body
    msg = message(tmp_path, content)
    assert await mda.deliver(msg, msg.recipients) == [DELIVERED]
    [stored] = files(tmp_path, "bob@example.com")
    assert stored.read_bytes() == trace_prefix("alice@remote.example", "bob@example.com") + content


def test_usage_counts_new_and_cur(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path / "mail", hostname="mx.example.com")
    assert store.usage("bob@example.com") == 0
    spool = tmp_path / "spool"
    spool.write_bytes(b"x" * 100)
    name = store.deliver("bob@example.com", spool, b"P: 1\r\n")
    assert store.usage("bob@example.com") == 106
    box = store.path("bob@example.com")
    os.rename(box / "new" / name, box / "cur" / (name + ":2,S"))
    store.deliver("bob@example.com", spool, b"")
    assert store.usage("bob@example.com") == 206


def test_hostname_is_escaped_in_names(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, hostname="odd/host:name")
    assert store.unique_name(5).endswith(".odd\\057host\\072name,S=5")


def test_trace_prefix() -> None:
    assert trace_prefix("", "bob@example.com") == (
        b"Return-Path: <>\r\nDelivered-To: bob@example.com\r\n"
    )
    assert trace_prefix("jörg@example.com", "bob@example.com") == (
        "Return-Path: <jörg@example.com>\r\nDelivered-To: bob@example.com\r\n".encode()
    )
    assert trace_prefix("a\r\nX: y@example.com", "b@example.com") == (
        b"Return-Path: <a??X: y@example.com>\r\nDelivered-To: b@example.com\r\n"
    )


def test_delivered_to_scan_stops_at_the_body(tmp_path: Path) -> None:
    path = tmp_path / "m"
    path.write_bytes(b"Delivered-To: a@example.com\r\nX: 1\r\n\r\nDelivered-To: b@example.com\r\n")
    assert delivered_to_addresses(path) == {"a@example.com"}
    path.write_bytes(b"X: 1\n" * 10 + b"Delivered-To: c@example.com\n")
    assert delivered_to_addresses(path) == {"c@example.com"}
    path.write_bytes(b"X: " + b"y" * 5000 + b"\r\nDelivered-To: late@example.com\r\n")
    assert delivered_to_addresses(path, limit=1000) == set()


@given(st.binary(max_size=500))
def test_delivered_to_scan_never_fails(data: bytes) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        result = delivered_to_addresses(Path(f.name))
    assert all(isinstance(a, str) for a in result)


@pytest.mark.parametrize(
    ("key", "relative"),
    [
        ("bob@example.com", "mail/example.com/bob"),
        ("a/b@example.com", "mail/example.com/a%2Fb"),
        (".hidden@example.com", "mail/example.com/%2Ehidden"),
        ("..@example.com", "mail/example.com/%2E."),
        ("100%@example.com", "mail/example.com/100%25"),
        ("nul\x00@example.com", "mail/example.com/nul%00"),
        ("odd user@example.com", "mail/example.com/odd%20user"),
        ("a.b+c=d_e-f@example.com", "mail/example.com/a.b+c=d_e-f"),
        ("o'hara!#@example.com", "mail/example.com/o%27hara%21%23"),
        ("jörg@xn--bcher-kva.example", "mail/xn--bcher-kva.example/jörg"),
        ("x@[ipv6:2001:db8::1]", "mail/%5Bipv6%3A2001%3Adb8%3A%3A1%5D/x"),
        ("a@b@example.com", "mail/example.com/a%40b"),
    ],
)
def test_maildir_path_is_safe(tmp_path: Path, key: str, relative: str) -> None:
    assert maildir_path(tmp_path, key) == tmp_path / relative


@pytest.mark.parametrize("key", ["bob", "@example.com", "bob@"])
def test_maildir_path_needs_a_key(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError):
        maildir_path(tmp_path, key)


@given(st.text(min_size=1, max_size=64))
def test_encode_name_is_safe_and_reversible(name: str) -> None:
    encoded = encode_name(name)
    assert "/" not in encoded and "\x00" not in encoded
    assert not encoded.startswith(".")
    assert encoded.isprintable()
    assert unquote(encoded, errors="surrogatepass") == name


@pytest.mark.skipif(not syncfs_available(), reason="syncfs(2) needs Linux 5.17+")
async def test_concurrent_deliveries_share_two_syncfs(
        tmp_path: Path, accounts: AccountStore, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(tmp_path, "syncfs")
    mda = LocalDelivery(settings, accounts, Router(settings, accounts, aliases={}))
    syncs: list[list[str]] = []
    real = durability.sync_filesystem
    box = maildir_path(tmp_path, "bob@example.com")

    def recording(path: Path, fd: int) -> None:
        syncs.append(sorted(os.listdir(box / "new")) if (box / "new").is_dir() else [])
        real(path, fd)

    monkeypatch.setattr(durability, "sync_filesystem", recording)
    messages = []
    for i in range(10):
        spool = tmp_path / "spool" / f"m{i}"
        spool.parent.mkdir(parents=True, exist_ok=True)
        spool.write_bytes(b"Subject: %d\r\n\r\nbody\r\n" % i)
        messages.append(QueuedMessage(
            queue_id=f"m{i}", reverse_path="alice@remote.example", spool_path=spool,
            size=spool.stat().st_size, arrival=1_700_000_000.0,
            recipients=[QueuedRecipient(id=i, address="bob@example.com",
                                        original="bob@example.com")]))
    results = await asyncio.gather(*(mda.deliver(m, m.recipients) for m in messages))
    assert results == [[DELIVERED]] * 10
    # One batch: one syncfs before any file is in new/, one after all ten are.
    assert len(syncs) == 2 and syncs[0] == [] and len(syncs[1]) == 10
    stored = sorted(p.read_bytes() for p in (box / "new").iterdir())
    assert stored == sorted(trace_prefix("alice@remote.example", "bob@example.com")
                            + b"Subject: %d\r\n\r\nbody\r\n" % i for i in range(10))
    assert os.listdir(box / "tmp") == []


async def test_an_error_planning_one_message_defers_that_message_only(
        mda: LocalDelivery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    router = mda._router
    real = router.mailbox_for

    def mailbox_for(address: str) -> str | None:
        if address == "carol@example.org":
            raise sqlite3.OperationalError("database is locked")
        return real(address)

    monkeypatch.setattr(router, "mailbox_for", mailbox_for)
    messages = []
    for queue_id, address in (("0AAA", "bob@example.com"), ("0BBB", "carol@example.org")):
        spool = tmp_path / "spool" / queue_id
        spool.parent.mkdir(parents=True, exist_ok=True)
        spool.write_bytes(CONTENT)
        messages.append(QueuedMessage(
            queue_id=queue_id, reverse_path="alice@remote.example", spool_path=spool,
            size=len(CONTENT), arrival=1_700_000_000.0,
            recipients=[QueuedRecipient(id=1, address=address, original=address)]))
    good, bad = messages
    results = await asyncio.gather(mda.deliver(good, good.recipients),
                                   mda.deliver(bad, bad.recipients), return_exceptions=True)
    if mda._batched:
        assert results == [[DELIVERED], [AttemptResult(
            "deferred", 451, "4.3.0", "Local delivery failed: disk error")]]
    else:  # one thread per message: the exception reaches the scheduler for that one
        assert results[0] == [DELIVERED] and isinstance(results[1], sqlite3.OperationalError)
    assert len(files(tmp_path, "bob@example.com")) == 1
    assert files(tmp_path, "carol@example.org") == []


@pytest.mark.skipif(not syncfs_available(), reason="syncfs(2) needs Linux 5.17+")
def test_batch_keeps_the_copies_it_stored_when_one_item_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = MaildirStore(tmp_path / "mail", hostname="mx.example.com", sync="syncfs")
    spool = tmp_path / "spool"
    spool.write_bytes(CONTENT)
    publish = MaildirStore._publish
    calls: list[str] = []

    def flaky_publish(box: Path, name: str) -> None:
        calls.append(name)
        if len(calls) == 2:
            raise RuntimeError("unexpected")
        publish(box, name)

    monkeypatch.setattr(MaildirStore, "_publish", staticmethod(flaky_publish))
    out = store.deliver_batch([("bob@example.com", spool, b""),
                               ("carol@example.org", spool, b""),
                               ("bob@example.com", spool, b"X: 1\r\n")])
    assert isinstance(out[0], str) and isinstance(out[2], str)
    assert isinstance(out[1], OSError) and "RuntimeError: unexpected" in str(out[1])
    assert len(os.listdir(store.path("bob@example.com") / "new")) == 2
    carol = store.path("carol@example.org")
    assert (os.listdir(carol / "new"), os.listdir(carol / "tmp")) == ([], [])
