"""``accept``: how many messages per second each server durably accepts, side by side.

Workload: 5000 messages of 4 KiB payload (``smtp-source -l 4096``; the headers
smtp-source adds make each message about 4.3 KiB), one recipient each, sent by Postfix's
``smtp-source`` over 20 concurrent connections that each carry many messages (``-d``),
to 127.0.0.1. smtp-source stops at the first reply that is not the expected one, so a
completed run means every message was answered ``250``.

Servers, measured in turn in every round (so that a slow minute of the machine hurts all
of them alike), each started fresh with an empty data directory:

- **Pigeon**: ``pigeon serve`` with a mailbox for the recipient. ``250`` means the spool
  file, its directory and the queue index are on stable storage (group commit). Delivery
  into the Maildir runs at the same time, as in production.
- **aiosmtpd, fsync inline**: aiosmtpd whose handler writes each message to its own file
  and fsyncs the file and the directory before answering ``250`` (no group commit);
  ``bench/peers/aiosmtpd_fsync.py``.
- **aiosmtpd, fsync in thread**: the same with the write and fsyncs in
  ``asyncio.to_thread``, so sessions wait for their fsyncs in parallel.
- **Postfix**: a private instance (``bench/peers/postfix.py``) with its defaults, delivering
  into a Maildir with virtual(8); skipped with a note when it cannot run here.

Metrics: *accepted msgs/s* = messages / wall time of the smtp-source run. *Delivered
msgs/s* (Pigeon and Postfix) = messages / time from the start of smtp-source until the
last message is in the recipient's Maildir (polled, bounded).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Protocol

from bench.common import (
    SMTP_SOURCE,
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
from bench.peers.aiosmtpd_fsync import AiosmtpdFsync

NAME = "accept"
SUMMARY = "durably accepted msgs/s: Pigeon vs aiosmtpd (fsync per message) vs Postfix"

MESSAGES = 5000
SESSIONS = 20
PAYLOAD = 4096
SENDER = "sender@example.org"
RECIPIENT = "bob@example.com"
# Seconds allowed for one smtp-source run, and for delivery to finish after it.
SOURCE_TIMEOUT = 600.0
DELIVERY_TIMEOUT = 300.0

ACCEPTED = "accepted msgs/s (250 after DATA, durable)"
DELIVERED = "delivered msgs/s (first connection until all are in the Maildir)"


class _Server(Protocol):
    """One server under test, started fresh for each run."""

    name: str
    label: str
    delivers: bool

    def start(self, directory: Path) -> int: ...

    def stored(self) -> int: ...

    def cpu(self) -> tuple[float, float] | None: ...

    def stop(self) -> None: ...


class _Pigeon:
    name = "pigeon"
    label = "Pigeon"
    delivers = True

    def __init__(self) -> None:
        self.server: PigeonServer | None = None

    def start(self, directory: Path) -> int:
        self.server = PigeonServer(
            directory,
            mailboxes=[RECIPIENT],
            # All sessions come from 127.0.0.1; the default per-address limit is 20.
            sections={"limits": {"max_connections_per_ip": SESSIONS * 5}},
        )
        return self.server.start().port

    def stored(self) -> int:
        assert self.server is not None
        return self.server.maildir_count(RECIPIENT)

    def cpu(self) -> tuple[float, float] | None:
        assert self.server is not None and self.server.process is not None
        return self.server.process.cpu_seconds()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class _Aiosmtpd:
    delivers = False

    def __init__(self, fsync: Literal["inline", "thread"], version: str | None) -> None:
        self.fsync: Literal["inline", "thread"] = fsync
        self.name = "aiosmtpd" if fsync == "inline" else "aiosmtpd-thread"
        where = "fsync inline" if fsync == "inline" else "fsync in thread"
        self.label = f"aiosmtpd {version or ''}, {where}".replace("  ", " ")
        self.peer: AiosmtpdFsync | None = None

    def start(self, directory: Path) -> int:
        self.peer = AiosmtpdFsync(directory, fsync=self.fsync)
        return self.peer.start().port

    def stored(self) -> int:
        assert self.peer is not None
        return self.peer.stored()

    def cpu(self) -> tuple[float, float] | None:
        assert self.peer is not None
        return self.peer.process.cpu_seconds()

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.stop()
            self.peer = None


class _Postfix:
    name = "postfix"
    delivers = True

    def __init__(self, version: str | None) -> None:
        self.label = f"Postfix {version or ''}".strip()
        self.instance: postfix.PrivatePostfix | None = None

    def start(self, directory: Path) -> int:
        self.instance = postfix.PrivatePostfix(
            directory, port=free_port(), mailboxes=[RECIPIENT]
        )
        try:
            self.instance.start()
        except RuntimeError as exc:
            self.instance.stop()
            raise BenchError(str(exc)) from exc
        return self.instance.port

    def stored(self) -> int:
        assert self.instance is not None
        return self.instance.maildir_count(RECIPIENT)

    def cpu(self) -> tuple[float, float] | None:
        return None  # spread over many Postfix processes

    def stop(self) -> None:
        if self.instance is not None:
            self.instance.stop()
            self.instance = None


def _servers(ctx: BenchContext, machine: dict[str, object], report: Report) -> list[_Server]:
    aiosmtpd_version = machine.get("aiosmtpd")
    servers: list[_Server] = [
        _Pigeon(),
        _Aiosmtpd("inline", str(aiosmtpd_version) if aiosmtpd_version else None),
        _Aiosmtpd("thread", str(aiosmtpd_version) if aiosmtpd_version else None),
    ]
    reason = postfix.unavailable_reason()
    if reason is None:
        version = machine.get("postfix")
        servers.append(_Postfix(str(version) if version else None))
    elif "postfix" not in ctx.skip:
        report.notes.append(f"Postfix skipped: {reason}")
    return [s for s in servers if s.name not in ctx.skip]


def _measure(ctx: BenchContext, server: _Server, report: Report, run: int, messages: int
             ) -> bool:
    """One run of one server; False when the server could not be started at all."""
    accepted = report.series(ACCEPTED, server.label)
    directory = ctx.run_dir(server.name)
    latency = quiet_disk(directory)
    report.details.setdefault("fsync_ms_before_run", {}).setdefault(server.label, []).append(
        round(latency * 1000, 3))
    try:
        port = server.start(directory)
    except BenchError as exc:
        accepted.notes.append(f"run {run}: could not start: {exc}")
        ctx.log(f"[red]{server.label}: could not start[/red]: {exc}")
        server.stop()
        return False
    try:
        cpu_before = server.cpu()
        source = run_smtp_source(
            "127.0.0.1", port, messages=messages, sessions=SESSIONS, size=PAYLOAD,
            sender=SENDER, recipient=RECIPIENT, timeout=SOURCE_TIMEOUT,
        )
        accepted.values.append(source.rate)
        cpu = server.cpu()
        line = (f"run {run} {server.label} (fsync {latency * 1000:.2f} ms): "
                f"{source.rate:,.0f} msgs/s accepted")
        if cpu is not None and cpu_before is not None:
            used = cpu[0] + cpu[1] - cpu_before[0] - cpu_before[1]
            per_message = used / messages * 1000
            line += f" (server CPU {per_message:.2f} ms/msg)"
            report.details.setdefault("server_cpu_ms_per_message_accepted", {}).setdefault(
                server.label, []).append(round(per_message, 3))
        if server.delivers:
            done = wait_until(lambda: server.stored() >= messages, DELIVERY_TIMEOUT)
            delivered = report.series(DELIVERED, server.label)
            if done is None:
                delivered.notes.append(
                    f"run {run}: only {server.stored()} of {messages} delivered "
                    f"{DELIVERY_TIMEOUT:g} s after the last was accepted")
            else:
                rate = messages / (done - source.started)
                delivered.values.append(rate)
                line += f", {rate:,.0f} msgs/s delivered"
        load = os.getloadavg()[0]
        report.details.setdefault("load_average_after_run", {}).setdefault(
            server.label, []).append(round(load, 2))
        line += f"; load {load:.1f}"
        stored = server.stored()
        if stored != messages and (not server.delivers or stored > messages):
            accepted.notes.append(f"run {run}: {stored} messages stored for {messages} sent")
        ctx.log(line)
    except BenchError as exc:
        accepted.notes.append(f"run {run}: {exc}")
        ctx.log(f"[red]{server.label} run {run} failed[/red]: {exc}")
    finally:
        server.stop()
    return True


def run(ctx: BenchContext, machine: dict[str, object] | None = None) -> Report:
    """Run the benchmark: ``ctx.runs`` rounds over every server.

    Args:
        ctx: the invocation's options.
        machine: :func:`bench.common.machine_info`, measured here when not given.

    Returns:
        The report (tables of accepted and delivered msgs/s, ratios).

    Raises:
        BenchError: smtp-source is not installed.
    """
    if not Path(SMTP_SOURCE).exists():
        raise BenchError(f"{SMTP_SOURCE} not found: install the Debian package postfix "
                         "(`make deps`)")
    machine = machine if machine is not None else machine_info(ctx.workdir)
    messages = ctx.count(MESSAGES)
    report = Report(
        name=NAME,
        title=f"{messages} messages of {PAYLOAD} bytes payload, 1 recipient each, "
              f"{SESSIONS} concurrent connections (smtp-source -d), 127.0.0.1",
        params={
            "messages": messages,
            "payload_bytes": PAYLOAD,
            "sessions": SESSIONS,
            "recipients_per_message": 1,
            "runs": ctx.runs,
            "load_generator": f"smtp-source -d -l {PAYLOAD} -m {messages} -s {SESSIONS} "
                              f"-f {SENDER} -t {RECIPIENT} 127.0.0.1:PORT",
        },
        machine=dict(machine),
    )
    servers = _servers(ctx, machine, report)
    for server in servers:  # fixed row order, even if a server fails in the first round
        report.series(ACCEPTED, server.label)
        if server.delivers:
            report.series(DELIVERED, server.label)
    active = list(servers)
    for run_number in range(1, ctx.runs + 1):
        for server in list(active):
            if not _measure(ctx, server, report, run_number, messages):
                active.remove(server)
    labels = {s.name: s.label for s in servers}
    if "pigeon" in labels:
        for name, target in (("aiosmtpd", 2.0), ("aiosmtpd-thread", None), ("postfix", None)):
            if name in labels:
                report.ratios.append((f"Pigeon / {labels[name]}, accepted", labels["pigeon"],
                                      labels[name], ACCEPTED, target))
        if "postfix" in labels:
            report.ratios.append((f"Pigeon / {labels['postfix']}, delivered", labels["pigeon"],
                                  labels["postfix"], DELIVERED, None))
    report.notes.append(
        "Each run starts the server fresh with an empty data directory; the directories "
        "are removed only after the last run. Postfix runs with its default settings "
        "(in_flow_delay = 1s, logging to a file); Pigeon logs at INFO to a file.")
    return report
