"""End to end: ``pigeon send``, ``pigeon sendmail`` and ``sendmail`` against a running Pigeon.

The submission tests use a trustme CA: Pigeon serves a certificate for 127.0.0.1 and the
client verifies it with ``--ca-file``.
"""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
import trustme

from .conftest import delivered
from .dns_server import ZoneServer
from .server import PigeonServer

ALICE = "alice@example.com"
ALICE_PASSWORD = "alice-secret-1"
SUBJECT = "Grüße aus Köln — 東京 ✉"
TEXT = "Hällo Bob,\n\nthe two files are attached.\n"
HTML = "<p>Hällo <b>Bob</b>,</p><p>the two files are attached.</p>\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "mx.example.com")
    paths = {"ca": root / "ca.pem", "cert": root / "cert.pem", "key": root / "key.pem"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    for blob in cert.cert_chain_pems:
        blob.write_to_path(str(paths["cert"]), append=True)
    return paths


@pytest.fixture(scope="module")
def msa(tmp_path_factory: pytest.TempPathFactory, certs: dict[str, Path]
        ) -> Iterator[PigeonServer]:
    srv = PigeonServer(
        tmp_path_factory.mktemp("mua"),
        listeners=["smtp", "submission"],
        users={ALICE: ALICE_PASSWORD},
        sections={"tls": {"cert": str(certs["cert"]), "key": str(certs["key"])}},
    )
    srv.start()
    yield srv
    srv.stop()


def run(args: list[str], *, env: dict[str, str] | None = None, stdin: bytes | None = None,
        home: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    environ = dict(os.environ, **(env or {}))
    environ.pop("PIGEON_CONFIG", None)
    environ.pop("PIGEON_PASSWORD", None)
    environ.update(env or {})
    if home is not None:
        environ["XDG_CONFIG_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "pigeon", *args], input=stdin,
                          capture_output=True, timeout=120, env=environ)


def as_sent(path: Path) -> tuple[bytes, EmailMessage]:
    """The message as the client sent it: without the MDA's and Pigeon's trace lines."""
    data = path.read_bytes()
    head, _, _ = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    # Return-Path, Delivered-To, then Received with its continuation lines.
    assert lines[0].startswith(b"Return-Path:") and lines[1].startswith(b"Delivered-To:")
    assert lines[2].startswith(b"Received:")
    index = 3
    while lines[index][:1] in (b" ", b"\t"):
        index += 1
    sent = b"\r\n".join(lines[index:]) + data[len(head):]
    msg = email.message_from_bytes(sent, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return sent, msg


def test_send_text_html_attachments_over_starttls_and_auth(
    msa: PigeonServer, certs: dict[str, Path], tmp_path: Path
) -> None:
    blob1 = os.urandom(70_000) + bytes(range(256))
    blob2 = b"\x00\r\n.\r\n\xff\x1b" * 3000
    (tmp_path / "report.pdf").write_bytes(blob1)
    (tmp_path / "raw.bin").write_bytes(blob2)
    (tmp_path / "body.html").write_text(HTML, encoding="utf-8")
    before = {a: len(msa.maildir_files(a)) for a in ("bob@example.com", "carol@example.com")}
    done = run([
        "send", "--server", f"127.0.0.1:{msa.ports['submission']}", "--starttls",
        "--ca-file", str(certs["ca"]), "--user", ALICE,
        "--from", f"Alice Ünïcode <{ALICE}>", "--to", "Bob <bob@example.com>",
        "--bcc", "carol@example.com", "--subject", SUBJECT, "--body", TEXT,
        "--html-file", str(tmp_path / "body.html"),
        "--attach", str(tmp_path / "report.pdf"), "--attach", str(tmp_path / "raw.bin"),
        "--header", "X-Mailer: pigeon-test",
    ], env={"PIGEON_PASSWORD": ALICE_PASSWORD})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"sent to 2 recipients (queued as ")
    bob = delivered(msa, "bob@example.com", before["bob@example.com"] + 1)[-1]
    carol = delivered(msa, "carol@example.com", before["carol@example.com"] + 1)[-1]
    assert b" with ESMTPSA (TLSv1." in bob.read_bytes()
    for path in (bob, carol):
        sent, msg = as_sent(path)
        head = sent.partition(b"\r\n\r\n")[0]
        assert b"carol" not in head.lower() and b"bcc" not in head.lower()
        assert msg["Subject"] == SUBJECT
        assert msg["X-Mailer"] == "pigeon-test"
        assert str(msg["From"]) == f"Alice Ünïcode <{ALICE}>"
        text, html = msg.get_body(("plain",)), msg.get_body(("html",))
        assert text is not None and html is not None
        assert text.get_content().replace("\r\n", "\n") == TEXT
        assert html.get_content().replace("\r\n", "\n") == HTML
        attachments = list(msg.iter_attachments())
        assert [a.get_filename() for a in attachments] == ["report.pdf", "raw.bin"]
        assert [a.get_content_type() for a in attachments] == [
            "application/pdf", "application/octet-stream"]
        assert [a.get_content() for a in attachments] == [blob1, blob2]
    assert as_sent(bob)[0] == as_sent(carol)[0]


def test_send_refusals_and_exit_codes(msa: PigeonServer, certs: dict[str, Path]) -> None:
    common = ["send", "--server", f"127.0.0.1:{msa.ports['submission']}",
              "--ca-file", str(certs["ca"]), "--user", ALICE, "--from", ALICE,
              "--subject", "x", "--body", "y"]
    env = {"PIGEON_PASSWORD": ALICE_PASSWORD}
    done = run([*common, "--to", "bob@example.com", "--to", "nobody@example.com"], env=env)
    assert done.returncode == 67
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("bob@example.com: ok: 250 2.0.0 Ok: queued as ")
    assert lines[1] == ("nobody@example.com: FAILED: 550 5.1.1 <nobody@example.com>: "
                        "Recipient address rejected: User unknown")
    done = run([*common, "--to", "bob@example.com"], env={"PIGEON_PASSWORD": "wrong"})
    assert done.returncode == 69 and b"535 5.7.8" in done.stderr
    # Without --ca-file the test CA is unknown: the certificate check fails, nothing is sent.
    done = run([c for c in common if c not in ("--ca-file", str(certs["ca"]))]
               + ["--to", "bob@example.com"], env=env)
    assert done.returncode == 75 and b"421 4.7.5" in done.stderr
    done = run(["send", "--server", "127.0.0.1:1", "--plain", "--from", ALICE,
                "--to", "bob@example.com", "--body", "x"])
    assert done.returncode == 75 and b"421 4.4.1" in done.stderr


def test_send_profile_and_dry_run(msa: PigeonServer, certs: dict[str, Path],
                                  tmp_path: Path) -> None:
    config = tmp_path / "pigeon"
    config.mkdir()
    (config / "alice.pass").write_text(ALICE_PASSWORD + "\n")
    (config / "client.toml").write_text(
        f'default = "work"\n[profile.work]\nserver = "127.0.0.1:{msa.ports["submission"]}"\n'
        f'user = "{ALICE}"\npassword_file = "alice.pass"\nfrom = "Alice <{ALICE}>"\n'
        f'ca_file = "{certs["ca"]}"\n', encoding="utf-8")
    before = len(msa.maildir_files("bob@example.com"))
    done = run(["send", "--to", "bob@example.com", "--subject", "profile", "--body", "p"],
               home=tmp_path)
    assert done.returncode == 0, done.stderr
    _, msg = as_sent(delivered(msa, "bob@example.com", before + 1)[-1])
    assert msg["Subject"] == "profile" and str(msg["From"]) == f"Alice <{ALICE}>"
    done = run(["send", "--dry-run", "--to", "bob@example.com", "--bcc", "carol@example.com",
                "--subject", "dry"], home=tmp_path)
    assert done.returncode == 0
    lines = done.stdout.decode().splitlines()
    assert lines[:3] == [f"MAIL FROM:<{ALICE}>", "RCPT TO:<bob@example.com>",
                         "RCPT TO:<carol@example.com>"]
    assert "Subject: dry" in lines and not any(line.startswith("Bcc") for line in lines)
    assert len(msa.maildir_files("bob@example.com")) == before + 1


def test_sendmail_t_i_delivers_through_the_local_queue(msa: PigeonServer) -> None:
    before = {a: len(msa.maildir_files(a)) for a in ("bob@example.com", "carol@example.com")}
    message = (b"From: Cron Daemon <root@example.com>\nTo: bob@example.com\n"
               b"Bcc: carol@example.com\nSubject: cron output\n\nline one\n.\nafter a dot\n")
    done = run(["sendmail", "-C", str(msa.config_path), "-t", "-i"], stdin=message)
    assert done.returncode == 0, done.stderr
    bob = delivered(msa, "bob@example.com", before["bob@example.com"] + 1)[-1]
    delivered(msa, "carol@example.com", before["carol@example.com"] + 1)
    sent, msg = as_sent(bob)
    assert msg["Subject"] == "cron output" and msg["Bcc"] is None and b"carol" not in sent
    assert msg["Date"] and msg["Message-ID"]
    assert msg.get_content() == "line one\r\n.\r\nafter a dot\r\n"
    assert b"Received: by mx.example.com (Pigeon) with local" in bob.read_bytes()


def test_sendmail_entry_point_and_exit_codes(msa: PigeonServer, tmp_path: Path) -> None:
    before = len(msa.maildir_files("bob@example.com"))
    script = [sys.executable, "-c", "from pigeon.cli.sendmail import main; main()"]
    done = subprocess.run([*script, "-C", str(msa.config_path), "-f", ALICE, "-F", "Alice",
                           "bob@example.com"], input=b"Subject: direct\n\nhi\n.\nnot sent\n",
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    _, msg = as_sent(delivered(msa, "bob@example.com", before + 1)[-1])
    assert str(msg["From"]) == f"Alice <{ALICE}>"
    assert msg.get_content() == "hi\r\n"
    # EX_NOUSER for an unknown local user.
    done = run(["sendmail", "-C", str(msa.config_path), "nobody@example.com"],
               stdin=b"Subject: x\n\ny\n")
    assert done.returncode == 67
    assert b"550 5.1.1 <nobody@example.com>" in done.stderr
    # EX_USAGE without recipients, EX_DATAERR for a broken address.
    assert run(["sendmail", "-C", str(msa.config_path)], stdin=b"x\n").returncode == 64
    assert run(["sendmail", "-C", str(msa.config_path), "-t"],
               stdin=b"To: bob@\n\nx\n").returncode == 65
    # EX_TEMPFAIL when the configured submission server cannot be reached.
    config = tmp_path / "pigeon"
    config.mkdir()
    (config / "client.toml").write_text(
        '[profile.relay]\nserver = "127.0.0.1:1"\nsecurity = "plain"\n'
        '[sendmail]\nprofile = "relay"\n', encoding="utf-8")
    done = run(["sendmail", "bob@example.com"], stdin=b"Subject: x\n\ny\n", home=tmp_path)
    assert done.returncode == 75
    assert b"421 4.4.1" in done.stderr


def test_send_queue_and_direct(msa: PigeonServer, tmp_path: Path) -> None:
    before = len(msa.maildir_files("bob@example.com"))
    done = run(["send", "--queue", "-c", str(msa.config_path), "--from", ALICE,
                "--to", "bob@example.com", "--subject", "queued", "--body", "q"])
    assert done.returncode == 0, done.stderr
    _, msg = as_sent(delivered(msa, "bob@example.com", before + 1)[-1])
    assert msg["Subject"] == "queued"
    zone = ZoneServer().start()
    try:
        zone.add("example.com", "MX", "10 mx.example.com")
        zone.add("mx.example.com", "A", "127.0.0.1")
        done = run(["send", "--direct", "--dns-server", zone.nameserver,
                    "--mx-port", str(msa.port), "--from", "someone@example.net",
                    "--to", "bob@example.com", "--to", "nobody@example.com",
                    "--subject", "direct", "--body", "d"])
    finally:
        zone.stop()
    assert done.returncode == 67, done.stderr
    assert b"nobody@example.com: FAILED: 550 5.1.1" in done.stderr
    _, msg = as_sent(delivered(msa, "bob@example.com", before + 2)[-1])
    assert msg["Subject"] == "direct"
