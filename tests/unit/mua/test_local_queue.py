"""Handing a message to the local queue, with and without a server holding the queue lock."""

from __future__ import annotations

from pathlib import Path

import pytest

from pigeon.app import build_app
from pigeon.config import Settings, load_settings
from pigeon.mua.local_queue import submit_to_local_queue
from pigeon.storage.sqlite.queue_store import SqliteQueueStore

CONTENT = b"From: a@example.com\r\nTo: bob@example.com\r\nSubject: x\r\n\r\nhello\r\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "pigeon.toml"
    path.write_text(
        '[server]\nhostname = "mx.example.com"\ndata_dir = "data"\n'
        '[domains]\nlocal = ["example.com"]\n'
        '[[mailbox]]\naddress = "bob@example.com"\n'
        '[[mailbox]]\naddress = "carol@example.com"\n',
        encoding="utf-8",
    )
    return load_settings(path)


def queued(settings: Settings) -> dict[str, list[str]]:
    data = settings.server.data_dir
    store = SqliteQueueStore(data / "queue.db", data / "spool" / "queue")
    try:
        out = {}
        for queue_id in store.queue_ids():
            message = store.get(queue_id)
            assert message is not None
            out[queue_id] = sorted(r.address for r in message.recipients)
        return out
    finally:
        store.close()


async def test_no_server_enqueues_through_the_queue_service(settings: Settings) -> None:
    result = await submit_to_local_queue(settings, "a@example.com",
                                         ["bob@example.com", "nobody@example.com",
                                          "carol@example.com"], CONTENT)
    assert not result.server_running and result.queue_id is not None
    assert [r.code for r in result.replies] == [250, 550, 250]
    assert str(result.replies[1]).startswith("550 5.1.1")
    assert queued(settings) == {result.queue_id: ["bob@example.com", "carol@example.com"]}
    spool = settings.server.data_dir / "spool" / "queue" / result.queue_id
    data = spool.read_bytes()
    assert data.startswith(b"Received: by mx.example.com (Pigeon) with local")
    assert data.endswith(CONTENT)


async def test_every_recipient_refused_queues_nothing(settings: Settings) -> None:
    result = await submit_to_local_queue(settings, "", ["nobody@example.com"], CONTENT)
    assert result.queue_id is None and [r.code for r in result.replies] == [550]
    assert queued(settings) == {}


async def test_running_server_gets_the_message_dropped_into_its_queue(
    settings: Settings,
) -> None:
    app = build_app(settings)
    await app.queue.start(scheduler=False)  # holds the queue lock, as `pigeon serve` does
    try:
        result = await submit_to_local_queue(settings, "a@example.com",
                                             ["bob@example.com", "remote@example.net"],
                                             CONTENT, eight_bit=True)
        assert result.server_running and result.queue_id is not None
        assert [r.code for r in result.replies] == [250, 250]
        assert queued(settings) == {result.queue_id: ["bob@example.com",
                                                      "remote@example.net"]}
        message = app.queue.store.get(result.queue_id)
        assert message is not None and message.body == "8BITMIME"
        assert await app.queue.run_due_once() == 2
        maildir = settings.server.data_dir / "mail" / "example.com" / "bob" / "new"
        files = list(maildir.iterdir())
        assert len(files) == 1 and files[0].read_bytes().endswith(CONTENT)
    finally:
        await app.queue.stop()
        app.accounts.close()


async def test_bad_address_raises_reply_error(settings: Settings) -> None:
    from pigeon.mail.reply import ReplyError

    with pytest.raises(ReplyError):
        await submit_to_local_queue(settings, "a@example.com", ["not an address"], CONTENT)
