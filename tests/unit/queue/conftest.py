"""Fakes for queue tests: a settable clock, a table router, scripted delivery agents, and a
recording stand-in for the DSN builder."""

from __future__ import annotations

import asyncio
import sys
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from pigeon.config import Settings
from pigeon.mail.address import parse_forward_path, parse_reverse_path
from pigeon.mail.envelope import Envelope, MailParams, RcptParams, Recipient
from pigeon.queue.model import AttemptResult, QueuedMessage, QueuedRecipient
from pigeon.queue.service import QueueService

T0 = 1_750_000_000.0
HOST = "mx.example.org"
LOCAL_DOMAINS = ("example.org",)

DELIVERED = AttemptResult("delivered", 250, "2.0.0", "Ok")
DEFERRED = AttemptResult("deferred", 451, "4.2.0", "try again later", "mx.example.net[192.0.2.7]")
FAILED = AttemptResult("failed", 550, "5.1.1", "no such user", "mx.example.net[192.0.2.7]")


class Clock:
    """A clock the test sets by hand (Unix seconds)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Destination:
    address: str
    route: Literal["local", "remote"]
    original: str


class TableRouter:
    """Expands through an alias table; a domain in LOCAL_DOMAINS is local."""

    def __init__(self, aliases: dict[str, list[str]] | None = None) -> None:
        self.aliases = aliases or {}
        self.fail = False

    def expand(self, address: str) -> list[Destination]:
        if self.fail:
            raise OSError("alias file unreadable")
        targets = self.aliases.get(address, [address])
        return [
            Destination(t, "local" if t.rpartition("@")[2] in LOCAL_DOMAINS else "remote", address)
            for t in targets
        ]


@dataclass
class ScriptedAgent:
    """Returns scripted results per address (then ``default``); records every call."""

    script: dict[str, list[AttemptResult]] = field(default_factory=dict)
    default: AttemptResult = DELIVERED
    calls: list[tuple[str, list[str]]] = field(default_factory=list)
    contents: list[bytes] = field(default_factory=list)
    on_deliver: Callable[[QueuedMessage, list[QueuedRecipient]], Any] | None = None

    async def deliver(
        self, message: QueuedMessage, recipients: list[QueuedRecipient]
    ) -> list[AttemptResult]:
        self.calls.append((message.queue_id, [r.address for r in recipients]))
        self.contents.append(message.spool_path.read_bytes())
        if self.on_deliver is not None:
            hook = self.on_deliver(message, recipients)
            if asyncio.iscoroutine(hook):
                await hook
        out = []
        for r in recipients:
            queue = self.script.get(r.address)
            out.append(queue.pop(0) if queue else self.default)
        return out


@dataclass
class DsnCall:
    queue_id: str
    reverse_path: str
    entries: list[tuple[str, str]]
    results: list[AttemptResult | None]
    now: float
    will_retry_until: float | None = None


def _default_should_notify(recipient: QueuedRecipient, action: str, **_: Any) -> bool:
    notify = recipient.notify if recipient.notify is not None else {"FAILURE", "DELAY"}
    wanted = {"failed": "FAILURE", "delayed": "DELAY"}.get(action, "SUCCESS")
    return wanted in notify


@pytest.fixture
def dsn_calls(monkeypatch: pytest.MonkeyPatch) -> list[DsnCall]:
    """Replace pigeon.queue.dsn by a recorder; returns the list of build_dsn calls."""
    calls: list[DsnCall] = []
    fake = types.ModuleType("pigeon.queue.dsn")

    def build_dsn(message: QueuedMessage, entries: list[tuple[QueuedRecipient, str]], *,
                  reporting_mta: str, arrival_date: float, now: float,
                  will_retry_until: float | None = None) -> bytes:
        assert reporting_mta == HOST
        assert arrival_date == message.arrival
        assert message.spool_path.is_file()
        calls.append(DsnCall(message.queue_id, message.reverse_path,
                             [(r.address, action) for r, action in entries],
                             [r.last_result for r, _ in entries], now, will_retry_until))
        return (f"From: Mail Delivery System <MAILER-DAEMON@{HOST}>\r\n"
                f"To: <{message.reverse_path}>\r\nSubject: report on {message.queue_id}\r\n"
                "\r\nreport\r\n").encode()

    fake.build_dsn = build_dsn  # type: ignore[attr-defined]
    fake.should_notify = _default_should_notify  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pigeon.queue.dsn", fake)
    return calls


def make_settings(data_dir: Path, *, sync: str = "auto", **queue: Any) -> Settings:
    """Settings for a test data directory; ``sync``: [server] sync; ``queue`` overrides
    [queue] keys."""
    return Settings.model_validate({
        "server": {"hostname": HOST, "data_dir": str(data_dir), "sync": sync},
        "domains": {"local": list(LOCAL_DOMAINS)},
        "queue": {"delay_warning": 0, **queue},
    })


def envelope(
    sender: str = "alice@example.org",
    *recipients: str,
    notify: frozenset[str] | None = None,
    orcpt: tuple[str, str] | None = None,
    ret: Literal["FULL", "HDRS"] | None = None,
    envid: str | None = None,
) -> Envelope:
    """An envelope: ``sender`` ("" for <>) and forward-paths (default bob@example.org)."""
    return Envelope(
        reverse_path=parse_reverse_path(f"<{sender}>"),
        mail_params=MailParams(ret=ret, envid=envid, body="8BITMIME"),
        recipients=[
            Recipient(parse_forward_path(f"<{r}>"), RcptParams(notify=notify, orcpt=orcpt))
            for r in (recipients or ("bob@example.org",))
        ],
        client_address="192.0.2.1",
        client_name="client.example.com",
        protocol="ESMTP",
    )


CONTENT = b"Subject: test\r\nFrom: alice@example.org\r\n\r\nHello.\r\n"


async def started_queue(data_dir: Path, agent: ScriptedAgent, clock: Clock) -> QueueService:
    """A QueueService over ``data_dir`` with ``agent`` as its local agent, started without
    its background loop (recovery has run: see ``service.recovery``)."""
    service = QueueService(make_settings(data_dir), router=TableRouter(),  # type: ignore[arg-type]
                           agents={"local": agent}, clock=clock)
    await service.start(scheduler=False)
    return service


@dataclass
class Harness:
    """A started QueueService (without its background loop) and its fakes."""

    service: QueueService
    clock: Clock
    router: TableRouter
    local: ScriptedAgent
    remote: ScriptedAgent | None
    data_dir: Path

    @property
    def store(self) -> Any:
        return self.service.store

    def rows(self) -> list[QueuedMessage]:
        return [m for q in self.store.queue_ids() if (m := self.store.get(q)) is not None]

    async def send(self, *recipients: str, sender: str = "alice@example.org",
                   content: bytes = CONTENT, **kw: Any) -> str:
        return await self.service.enqueue_bytes(envelope(sender, *recipients, **kw), content)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def harness(tmp_path: Path, clock: Clock, request: pytest.FixtureRequest
                  ) -> AsyncIterator[Harness]:
    """A queue over tmp_path; mark a test with ``@pytest.mark.queue_settings(...)`` to change
    [queue] keys, ``@pytest.mark.server_sync(method)`` for [server] sync,
    ``@pytest.mark.no_remote`` to run without a remote agent."""
    marker = request.node.get_closest_marker("queue_settings")
    overrides = dict(marker.kwargs) if marker else {}
    sync_marker = request.node.get_closest_marker("server_sync")
    sync = sync_marker.args[0] if sync_marker else "auto"
    settings = make_settings(tmp_path, sync=sync, **overrides)
    router = TableRouter()
    local = ScriptedAgent()
    remote = None if request.node.get_closest_marker("no_remote") else ScriptedAgent()
    agents: dict[str, Any] = {"local": local}
    if remote is not None:
        agents["remote"] = remote
    service = QueueService(settings, router=router, agents=agents, clock=clock)  # type: ignore[arg-type]
    await service.start(scheduler=False)
    try:
        yield Harness(service, clock, router, local, remote, tmp_path)
    finally:
        await service.stop()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "queue_settings(**kw): [queue] settings for `harness`")
    config.addinivalue_line("markers", "no_remote: `harness` without a remote delivery agent")
    config.addinivalue_line("markers", "server_sync(method): [server] sync for `harness`")
