"""End to end: ``pigeon bulk`` to 1000 recipients in three local domains of one Pigeon,
interrupted with SIGINT at about half and run again: every recipient gets exactly one
message, made from their own row."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import wait_for
from .server import PigeonServer

DOMAINS = ("alpha.example", "beta.example", "gamma.example")
COUNT = 1000


def mail_files(srv: PigeonServer) -> list[Path]:
    return sorted(srv.data_dir.glob("mail/*/*/new/*"))


@pytest.mark.slow
def test_bulk_interrupted_and_resumed_sends_each_exactly_once(tmp_path: Path) -> None:
    srv = PigeonServer(tmp_path / "srv", local_domains=list(DOMAINS),
                       mailboxes=[f"@{d}" for d in DOMAINS])
    srv.start()
    try:
        rows = [(f"user{i}@{DOMAINS[i % 3]}", f"Person {i}", f"{i * 7:05d}")
                for i in range(COUNT)]
        recipients = tmp_path / "list.csv"
        with recipients.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["email", "name", "code"])
            writer.writerows(rows)
            writer.writerow(["not-an-address", "Nobody", "0"])
        (tmp_path / "message.j2").write_text(
            "From: Newsletter <news@alpha.example>\n"
            "Subject: Your code, {{ name }}\n"
            "\n"
            "Dear {{ name }},\nyour code is {{ code }}.\n", encoding="utf-8")
        report = tmp_path / "report.csv"
        argv = [sys.executable, "-m", "pigeon", "bulk", "--plain",
                "--server", f"127.0.0.1:{srv.port}", "--recipients", str(recipients),
                "--template", str(tmp_path / "message.j2"), "--report", str(report),
                "--list-unsubscribe", "https://alpha.example/unsub?u={{ email|urlencode }}",
                "--one-click", "--connections", "4"]
        state = tmp_path / "report.csv.state"
        env = dict(os.environ)
        env.pop("PIGEON_CONFIG", None)
        first = subprocess.Popen([*argv, "--rate", "150"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=env)
        try:
            wait_for(lambda: state.exists() and
                     state.read_bytes().count(b"\nsent\t") >= COUNT // 2, timeout=60)
            first.send_signal(signal.SIGINT)
            _, err = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == 130, err.decode()
        done_first = state.read_bytes().count(b"\nsent\t")
        assert COUNT // 2 <= done_first < COUNT
        second = subprocess.run(argv, capture_output=True, timeout=300, env=env)
        assert second.returncode == 0, second.stderr.decode()
        assert f"sent {COUNT - done_first}, done before {done_first}".encode() in \
            second.stderr

        files = wait_for(lambda: len(mail_files(srv)) >= COUNT and mail_files(srv),
                         timeout=120)
        assert len(files) == COUNT
        by_mailbox: dict[str, list[Path]] = {}
        for path in files:
            mailbox = f"{path.parent.parent.name}@{path.parent.parent.parent.name}"
            by_mailbox.setdefault(mailbox, []).append(path)
        assert sorted(by_mailbox) == sorted(r[0] for r in rows)
        assert all(len(v) == 1 for v in by_mailbox.values())
        for address, name, code in rows:
            data = by_mailbox[address][0].read_bytes()
            assert f"Subject: Your code, {name}\r\n".encode() in data
            assert f"Dear {name},\r\nyour code is {code}.\r\n".encode() in data
            assert f"\r\nTo: {name} <{address}>\r\n".encode() in data
            assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in data

        with report.open(newline="", encoding="utf-8") as f:
            lines = list(csv.reader(f))
        assert lines[0] == ["recipient", "status", "detail"]
        assert len(lines) == COUNT + 2
        statuses = [line[1] for line in lines[1:]]
        assert statuses.count("sent") == COUNT and statuses.count("invalid") == 1
        assert [line[0] for line in lines[1:COUNT + 1]] == [r[0] for r in rows]
        assert all(re.fullmatch(r"[0-9A-Z]{12}", line[2]) for line in lines[1:COUNT + 1])
    finally:
        srv.stop()
