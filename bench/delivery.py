"""``delivery``: how fast each server empties its queue into a remote SMTP server.

Workload: 2000 messages of 4 KiB payload, one recipient each at a remote domain
(``user@example.net``), put into the server's queue with Postfix's ``smtp-source``, then
delivered over SMTP to Postfix's ``smtp-sink`` on 127.0.0.1 (no DNS: both servers send
everything to ``[127.0.0.1]:<sink port>``, Pigeon through ``[routes] "*"``, Postfix through
``relayhost``).

So that the measurement is the queue-to-sink part only, every run goes:

1. start the server; the sink is not running yet, so every first attempt fails with
   "connection refused" and all messages wait in the deferred queue;
2. inject the messages (smtp-source, 20 sessions) and wait until all are deferred;
3. start ``smtp-sink -c -M <messages>`` (it prints a counter at every message and exits
   after the last) and flush the queue (``pigeon queue flush`` / ``postfix flush``);
4. time the sink's counter: from the first message to the last.

Servers, measured in turn in every round, each started fresh:

- **Pigeon**: its remote delivery agent, default limits (20 connections to one
  destination, 20 messages in flight), opportunistic TLS (the sink offers none);
- **Postfix**: a private instance with its defaults (``bench/peers/postfix.py``): 20
  connections per destination, connection cache on demand.

Metrics: *delivered msgs/s* = (messages - 1) / (time of the last message at the sink -
time of the first); *flush to last msgs/s* = messages / (time of the last message - time
of the flush command), which adds the time each server takes to notice the flush
(Pigeon polls its queue index every 2 s).
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.common import (
    SMTP_SINK,
    BenchContext,
    BenchError,
    PigeonServer,
    Report,
    free_port,
    machine_info,
    quiet_disk,
    run_smtp_source,
    wait_until,
)
from bench.peers import postfix

NAME = "delivery"
SUMMARY = "queue-to-remote msgs/s over SMTP into smtp-sink: Pigeon vs Postfix"

MESSAGES = 2000
SESSIONS = 20
PAYLOAD = 4096
SENDER = "sender@example.com"
RECIPIENT = "user@example.net"
SOURCE_TIMEOUT = 600.0
DEFER_TIMEOUT = 300.0
DELIVERY_TIMEOUT = 600.0

DELIVERED = "delivered msgs/s (first to last message at the sink)"
FLUSHED = "flush to last msgs/s (includes noticing the flush)"

_COUNTER = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


@dataclass
class _Sink:
    """``smtp-sink -c -M n``: timestamps of its message counter, read from its stdout."""

    port: int
    messages: int
    first: float | None = None
    last: float | None = None
    count: int = 0
    proc: subprocess.Popen[bytes] | None = None
    _reader: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> _Sink:
        if not Path(SMTP_SINK).exists():
            raise BenchError(f"{SMTP_SINK} not found (Debian package postfix)")
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-c", "-M", str(self.messages),
             f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.recv(100)
                    s.sendall(b"QUIT\r\n")
                return self
            except OSError:
                time.sleep(0.02)
        raise BenchError("smtp-sink did not start")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        out = self.proc.stdout
        buf = b""
        while True:
            chunk = out.read1(4096)  # type: ignore[attr-defined]
            if not chunk:
                return
            now = time.monotonic()
            buf += chunk
            *records, buf = re.split(rb"[\r\n]", buf)
            for record in records:
                m = _COUNTER.search(record)
                if m is None:
                    continue
                count = int(m.group(3))
                if count > self.count:
                    self.count = count
                    if self.first is None:
                        self.first = now
                    self.last = now

    def wait(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        if self._reader is not None:
            self._reader.join(5)
        return self.count >= self.messages

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class _Server(Protocol):
    name: str
    label: str

    def start(self, directory: Path, sink_port: int) -> int: ...

    def deferred(self) -> int: ...

    def flush(self) -> None: ...

    def stop(self) -> None: ...


class _Pigeon:
    name = "pigeon"
    label = "Pigeon"

    def __init__(self) -> None:
        self.server: PigeonServer | None = None

    def start(self, directory: Path, sink_port: int) -> int:
        self.server = PigeonServer(
            directory,
            sections={
                "limits": {"max_connections_per_ip": SESSIONS * 5},
                "relay": {"trusted_networks": ["127.0.0.0/8"]},
                "routes": {'"*"': f"smtp:[127.0.0.1]:{sink_port}"},
                "delivery": {"connect_timeout": 5},
            },
        ).start()
        return self.server.port

    def deferred(self) -> int:
        assert self.server is not None
        from pigeon.storage.sqlite.queue_store import SqliteQueueStore

        db = self.server.data_dir / "queue.db"
        if not db.exists():
            return 0
        store = SqliteQueueStore(db, self.server.data_dir / "spool" / "queue")
        try:
            total = 0
            for queue_id in store.queue_ids():
                message = store.get(queue_id)
                if message is not None:
                    total += sum(1 for r in message.recipients if r.state == "deferred")
            return total
        finally:
            store.close()

    def flush(self) -> None:
        assert self.server is not None
        done = subprocess.run(
            [sys.executable, "-m", "pigeon", "queue", "flush", "-c",
             str(self.server.config_path)],
            capture_output=True, text=True, timeout=60,
        )
        if done.returncode != 0:
            raise BenchError(f"pigeon queue flush failed: {done.stderr.strip()}")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class _Postfix:
    name = "postfix"

    def __init__(self, version: str | None) -> None:
        self.label = f"Postfix {version or ''}".strip()
        self.instance: postfix.PrivatePostfix | None = None

    def start(self, directory: Path, sink_port: int) -> int:
        self.instance = postfix.PrivatePostfix(
            directory, port=free_port(), mailboxes=["postmaster@example.com"],
            main_cf={"relayhost": f"[127.0.0.1]:{sink_port}"},
        )
        try:
            self.instance.start()
        except RuntimeError as exc:
            self.instance.stop()
            raise BenchError(str(exc)) from exc
        return self.instance.port

    def deferred(self) -> int:
        assert self.instance is not None
        return sum(1 for p in (self.instance.queue_dir / "deferred").rglob("*") if p.is_file())

    def flush(self) -> None:
        assert self.instance is not None
        done = subprocess.run(
            [postfix.POSTFIX, "-c", str(self.instance.config_dir), "flush"],
            capture_output=True, text=True, timeout=60,
        )
        if done.returncode != 0:
            raise BenchError(f"postfix flush failed: {done.stderr.strip()}")

    def stop(self) -> None:
        if self.instance is not None:
            self.instance.stop()
            self.instance = None


def _servers(ctx: BenchContext, machine: dict[str, object], report: Report) -> list[_Server]:
    servers: list[_Server] = [_Pigeon()]
    reason = postfix.unavailable_reason()
    if reason is None:
        version = machine.get("postfix")
        servers.append(_Postfix(str(version) if version else None))
    elif "postfix" not in ctx.skip:
        report.notes.append(f"Postfix skipped: {reason}")
    return [s for s in servers if s.name not in ctx.skip]


def _measure(ctx: BenchContext, server: _Server, report: Report, run: int,
             messages: int) -> bool:
    """One run of one server; False when it could not be started at all."""
    delivered = report.series(DELIVERED, server.label)
    flushed = report.series(FLUSHED, server.label)
    directory = ctx.run_dir(server.name)
    quiet_disk(directory)
    sink_port = free_port()
    try:
        port = server.start(directory, sink_port)
    except BenchError as exc:
        delivered.notes.append(f"run {run}: could not start: {exc}")
        ctx.log(f"[red]{server.label}: could not start[/red]: {exc}")
        server.stop()
        return False
    sink = _Sink(sink_port, messages)
    try:
        run_smtp_source("127.0.0.1", port, messages=messages, sessions=SESSIONS,
                        size=PAYLOAD, sender=SENDER, recipient=RECIPIENT,
                        timeout=SOURCE_TIMEOUT)
        if wait_until(lambda: server.deferred() >= messages, DEFER_TIMEOUT, 0.2) is None:
            raise BenchError(f"only {server.deferred()} of {messages} messages deferred")
        sink.start()
        flushed_at = time.monotonic()
        server.flush()
        if not sink.wait(DELIVERY_TIMEOUT):
            raise BenchError(f"the sink got {sink.count} of {messages} messages")
        assert sink.first is not None and sink.last is not None
        rate = (messages - 1) / max(sink.last - sink.first, 1e-6)
        overall = messages / max(sink.last - flushed_at, 1e-6)
        delivered.values.append(rate)
        flushed.values.append(overall)
        ctx.log(f"run {run} {server.label}: {rate:,.0f} msgs/s delivered "
                f"({overall:,.0f} from the flush)")
    except BenchError as exc:
        delivered.notes.append(f"run {run}: {exc}")
        ctx.log(f"[red]{server.label} run {run} failed[/red]: {exc}")
    finally:
        sink.stop()
        server.stop()
    return True


def run(ctx: BenchContext, machine: dict[str, object] | None = None) -> Report:
    """Run the benchmark: ``ctx.runs`` rounds over every server.

    Args:
        ctx: the invocation's options.
        machine: :func:`bench.common.machine_info`, measured here when not given.

    Returns:
        The report (delivered msgs/s per server and the Pigeon / Postfix ratio).
    """
    machine = machine if machine is not None else machine_info(ctx.workdir)
    messages = ctx.count(MESSAGES)
    report = Report(
        name=NAME,
        title=f"{messages} queued messages of {PAYLOAD} bytes payload, 1 recipient each, "
              f"delivered over SMTP to smtp-sink on 127.0.0.1",
        params={
            "messages": messages,
            "payload_bytes": PAYLOAD,
            "recipients_per_message": 1,
            "runs": ctx.runs,
            "injection": f"smtp-source -d -l {PAYLOAD} -m {messages} -s {SESSIONS} "
                         f"-f {SENDER} -t {RECIPIENT}",
            "sink": f"smtp-sink -u nobody -c -M {messages} 127.0.0.1:PORT 256",
        },
        machine=dict(machine),
    )
    servers = _servers(ctx, machine, report)
    for server in servers:
        report.series(DELIVERED, server.label)
        report.series(FLUSHED, server.label)
    active = list(servers)
    for run_number in range(1, ctx.runs + 1):
        for server in list(active):
            if not _measure(ctx, server, report, run_number, messages):
                active.remove(server)
    labels = {s.name: s.label for s in servers}
    if "pigeon" in labels and "postfix" in labels:
        report.ratios.append((f"Pigeon / {labels['postfix']}, delivered", labels["pigeon"],
                              labels["postfix"], DELIVERED, None))
    report.notes.append(
        "Both servers start fresh with an empty queue each run and deliver to the same "
        "smtp-sink binary; Postfix runs with its defaults (relayhost only), Pigeon with "
        "its defaults (one route entry).")
    return report
