"""``pigeon queue`` tools against a real data directory (CliRunner)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pigeon.cli.queue import queue_group
from pigeon.config import load_settings
from pigeon.queue.model import AttemptResult
from pigeon.queue.service import QueueService

from .conftest import (
    CONTENT,
    DEFERRED,
    DELIVERED,
    T0,
    Clock,
    DsnCall,
    ScriptedAgent,
    TableRouter,
    envelope,
)

CONFIG = """\
[server]
hostname = "mx.example.org"
data_dir = "data"

[domains]
local = ["example.org"]

[queue]
delay_warning = 0
"""


class Setup:
    def __init__(self, config: Path, service: QueueService, clock: Clock,
                 agent: ScriptedAgent) -> None:
        self.config = config
        self.service = service
        self.clock = clock
        self.agent = agent
        self.runner = CliRunner()

    def run(self, *args: str) -> tuple[int, str, str]:
        result = self.runner.invoke(queue_group, [*args, "-c", str(self.config)])
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture
async def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                dsn_calls: list[DsnCall]) -> AsyncIterator[Setup]:
    monkeypatch.delenv("PIGEON_CONFIG", raising=False)
    config = tmp_path / "pigeon.toml"
    config.write_text(CONFIG)
    clock = Clock()
    agent = ScriptedAgent()
    service = QueueService(load_settings(config), router=TableRouter(),  # type: ignore[arg-type]
                           agents={"local": agent}, clock=clock)
    await service.start(scheduler=False)
    try:
        yield Setup(config, service, clock, agent)
    finally:
        await service.stop()


def _local(t: float) -> str:
    return time.strftime("%a %b %d %H:%M:%S", time.localtime(t))


async def test_list_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIGEON_CONFIG", raising=False)
    config = tmp_path / "pigeon.toml"
    config.write_text(CONFIG)
    result = CliRunner().invoke(queue_group, ["list", "-c", str(config)])
    assert (result.exit_code, result.stdout) == (0, "Mail queue is empty\n")
    assert not (tmp_path / "data" / "queue.db").exists()


async def test_list_and_json(setup: Setup) -> None:
    setup.agent.default = DEFERRED
    queue_id = await setup.service.enqueue_bytes(envelope("alice@example.org", "bob@example.org",
                                                          "carol@example.org"), CONTENT)
    setup.agent.script = {"carol@example.org": [DELIVERED]}
    await setup.service.run_due_once()
    size = setup.service.store.get(queue_id).size
    code, out, err = setup.run("list")
    assert (code, err) == (0, "")
    assert out == (
        "-Queue ID-    --Size-- ----Arrival Time---- -Sender/Recipient-------\n"
        f"{queue_id:<13} {size:>8} {_local(T0):<20} alice@example.org\n"
        f"{'':44}(451 4.2.0 try again later (via mx.example.net[192.0.2.7]))\n"
        f"{'':44}bob@example.org [deferred]\n"
        f"{'':44}carol@example.org [delivered]\n"
        "\n"
        f"-- {size} bytes in 1 message.\n"
    )
    code, out, _ = setup.run("list", "--json")
    data = json.loads(out)
    assert data["corrupt"] == []
    (m,) = data["messages"]
    assert (m["queue_id"], m["size"], m["arrival"], m["reverse_path"], m["is_dsn"]) == (
        queue_id, size, T0, "alice@example.org", False)
    assert [(r["address"], r["state"], r["attempts"], r["next_attempt_at"])
            for r in m["recipients"]] == [
        ("bob@example.org", "deferred", 1, T0 + 300),
        ("carol@example.org", "delivered", 1, T0 + 300)]
    assert m["recipients"][0]["last_reply"] == {
        "status": "deferred", "code": 451, "enhanced": "4.2.0", "text": "try again later",
        "remote_host": "mx.example.net[192.0.2.7]"}


async def test_show_and_content(setup: Setup) -> None:
    queue_id = await setup.service.enqueue_bytes(envelope(), CONTENT)
    message = setup.service.store.get(queue_id)
    code, out, _ = setup.run("show", queue_id)
    assert code == 0
    assert out == (
        f"queue id:      {queue_id}\n"
        "arrival:       2025-06-15T15:06:40+00:00\n"
        f"size:          {message.size} bytes\n"
        "reverse-path:  <alice@example.org>\n"
        "body:          8BITMIME\n"
        "client:        client.example.com [192.0.2.1]\n"
        "recipient:     bob@example.org route=local state=queued attempts=0\n"
        "  next attempt: 2025-06-15T15:06:40+00:00\n"
    )
    result = setup.runner.invoke(queue_group, ["show", queue_id, "--content",
                                               "-c", str(setup.config)])
    assert result.exit_code == 0
    assert result.stdout_bytes.endswith(b"\n\n" + message.spool_path.read_bytes())


@pytest.mark.parametrize("command", ["show", "retry", "hold", "release", "delete", "bounce"])
async def test_unknown_id_exits_1(setup: Setup, command: str) -> None:
    for bad in ("0000000000AB", "../../etc/passwd"):
        code, out, err = setup.run(command, bad)
        assert (code, out, err) == (1, "", f"pigeon queue: no message with queue id {bad}\n")


async def test_hold_release_retry_flush(setup: Setup) -> None:
    setup.agent.default = DEFERRED
    setup.clock.now = time.time()  # the tools use the real time
    queue_id = await setup.service.enqueue_bytes(envelope(), CONTENT)
    assert setup.run("hold", queue_id) == (0, f"{queue_id}: 1 recipient held\n", "")
    assert await setup.service.run_due_once() == 0
    _code, out, _ = setup.run("list")
    assert f"{queue_id}!" in out and "[held]" in out
    assert setup.run("release", queue_id) == (0, f"{queue_id}: 1 recipient released\n", "")
    setup.clock.now = time.time() + 1
    assert await setup.service.run_due_once() == 1
    assert setup.run("retry", queue_id) == (
        0, f"{queue_id}: 1 recipient scheduled for delivery now\n", "")
    assert await setup.service.run_due_once() == 1
    assert setup.run("flush") == (0, "1 recipient scheduled for delivery now\n", "")
    assert await setup.service.run_due_once() == 1


async def test_delete_removes_row_and_spool(setup: Setup) -> None:
    queue_id = await setup.service.enqueue_bytes(envelope(), CONTENT)
    spool_file = setup.service.store.get(queue_id).spool_path
    assert setup.run("delete", queue_id) == (0, f"{queue_id}: deleted\n", "")
    assert not spool_file.exists()
    assert setup.service.store.queue_ids() == []
    assert os.listdir(spool_file.parent.parent / "corrupt") == []
    assert await setup.service.run_due_once() == 0


async def test_bounce_then_the_server_sends_one_dsn(setup: Setup,
                                                    dsn_calls: list[DsnCall]) -> None:
    setup.agent.default = DEFERRED
    queue_id = await setup.service.enqueue_bytes(envelope(), CONTENT)
    await setup.service.run_due_once()
    assert setup.run("bounce", queue_id) == (
        0, f"{queue_id}: 1 recipient failed; the server sends the DSN on its next pass\n", "")
    setup.agent.default = DELIVERED
    await setup.service.run_due_once()
    assert [(c.queue_id, c.entries, c.results) for c in dsn_calls] == [
        (queue_id, [("bob@example.org", "failed")],
         [AttemptResult("failed", 550, "5.0.0", "delivery cancelled by administrator")])]
    assert setup.service.store.get(queue_id) is None
