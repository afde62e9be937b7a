"""``bulk``: personalised messages per second submitted into a local Pigeon.

Workload: 10,000 recipients in three local domains (a catch-all mailbox for each), one
row each in a CSV file (``email``, ``name``, ``code``); every message is made from the
same jinja2 templates (a subject and a text body with the row's variables), so each is
different. Measured in turn in every round, each against a freshly started Pigeon with an
empty data directory (the SMTP listener on 127.0.0.1, the per-address connection rate
limit off so that the one-connection-per-message loop is not refused):

- **pigeon bulk**: ``pigeon bulk --plain`` with its defaults (4 connections, many messages
  per connection, pipelining), as a subprocess; the time is its whole run, start-up
  included.
- **smtplib loop**: a plain Python loop in this process: render the same templates, build
  the message with ``email.message.EmailMessage``, and send it with ``smtplib.SMTP``, one
  connection per message, one after the other.

Metric: *submitted msgs/s* = messages answered ``250`` / wall time. Delivery into the
Maildirs runs in the server at the same time, as in production.
"""

from __future__ import annotations

import csv
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import jinja2
from bench.common import BenchContext, BenchError, PigeonServer, Report, machine_info

NAME = "bulk"
SUMMARY = "personalised bulk msgs/s into Pigeon: pigeon bulk vs a smtplib loop"

RECIPIENTS = 10_000
DOMAINS = ("alpha.example", "beta.example", "gamma.example")
AUTHOR = "News <news@alpha.example>"
SUBJECT = "Your code, {{ name }}"
TEXT = ("Dear {{ name }},\n\nyour personal code is {{ code }}.\n"
        "It was made for {{ email }} only.\n\n-- \nThe newsletter team\n")
# Seconds allowed for one measured run.
RUN_TIMEOUT = 1800.0

SUBMITTED = "submitted msgs/s (250 after DATA, personalised)"
BULK = "pigeon bulk"
LOOP = "smtplib loop"


def _recipients(path: Path, count: int) -> list[dict[str, str]]:
    rows = [{"email": f"user{i}@{DOMAINS[i % len(DOMAINS)]}", "name": f"Person {i}",
             "code": f"{(i * 7919) % 100000:05d}"} for i in range(count)]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["email", "name", "code"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _server(ctx: BenchContext, label: str) -> PigeonServer:
    return PigeonServer(
        ctx.run_dir(label),
        mailboxes=[f"@{d}" for d in DOMAINS],
        local_domains=list(DOMAINS),
        sections={"limits": {"connections_per_minute_per_ip": 0}},
    ).start()


def _run_bulk(ctx: BenchContext, csv_path: Path, text_path: Path, messages: int) -> float:
    server = _server(ctx, "bulk")
    try:
        state = server.root / "bulk.state"
        argv = [sys.executable, "-m", "pigeon", "bulk", "--plain",
                "--server", f"127.0.0.1:{server.port}", "--recipients", str(csv_path),
                "--from", AUTHOR, "--subject", SUBJECT, "--text", str(text_path),
                "--state", str(state), "--no-progress"]
        started = time.monotonic()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT)
        elapsed = time.monotonic() - started
        if done.returncode != 0:
            raise BenchError(f"pigeon bulk exited {done.returncode}: {done.stderr[-2000:]}")
        sent = state.read_text(encoding="utf-8").count("\nsent\t")
        if sent != messages:
            raise BenchError(f"pigeon bulk sent {sent} of {messages}")
        return messages / elapsed
    finally:
        server.stop()


def _run_loop(ctx: BenchContext, rows: list[dict[str, str]]) -> float:
    server = _server(ctx, "smtplib")
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    subject, text = env.from_string(SUBJECT), env.from_string(TEXT)
    try:
        started = time.monotonic()
        deadline = started + RUN_TIMEOUT
        for row in rows:
            if time.monotonic() > deadline:
                raise BenchError("the smtplib loop did not finish in time")
            msg = EmailMessage()
            msg["From"] = AUTHOR
            msg["To"] = f"{row['name']} <{row['email']}>"
            msg["Subject"] = subject.render(row)
            msg.set_content(text.render(row))
            with smtplib.SMTP("127.0.0.1", server.port, timeout=60) as smtp:
                refused = smtp.send_message(msg)
            if refused:
                raise BenchError(f"smtplib: refused {refused}")
        return len(rows) / (time.monotonic() - started)
    finally:
        server.stop()


def run(ctx: BenchContext, machine: dict[str, object] | None = None) -> Report:
    """Measure both clients ``ctx.runs`` times, alternating; return the report."""
    messages = ctx.count(RECIPIENTS)
    csv_path = ctx.workdir / "recipients.csv"
    text_path = ctx.workdir / "text.j2"
    text_path.write_text(TEXT, encoding="utf-8")
    rows = _recipients(csv_path, messages)
    report = Report(
        name=NAME,
        title=f"{messages} personalised messages into a local Pigeon (3 domains)",
        params={"recipients": messages, "domains": list(DOMAINS),
                "pigeon_bulk": "4 connections, per-connection 100, pipelining",
                "smtplib": "one connection per message, sequential"},
        machine=machine or machine_info(ctx.workdir),
    )
    for run_number in range(ctx.runs):
        for label, measure in ((BULK, lambda: _run_bulk(ctx, csv_path, text_path, messages)),
                               (LOOP, lambda: _run_loop(ctx, rows))):
            series = report.series(SUBMITTED, label)
            ctx.log(f"run {run_number + 1}/{ctx.runs}: {label}, {messages} messages")
            try:
                rate = measure()
            except (BenchError, OSError, smtplib.SMTPException,
                    subprocess.TimeoutExpired) as exc:
                series.notes.append(f"run {run_number + 1} failed: {exc}")
                continue
            series.values.append(rate)
            ctx.log(f"  {rate:,.0f} msgs/s")
    report.ratios.append((f"{BULK} ÷ {LOOP}", BULK, LOOP, SUBMITTED, None))
    return report
