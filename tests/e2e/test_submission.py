"""End to end: mail submission with TLS and AUTH from real clients (RFC 6409, 3207, 4954, 8314)."""

from __future__ import annotations

import email
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import delivered, wait_for
from .server import PigeonServer
from .smtp_tls_client import ALICE, ALICE_PASSWORD, Client, insecure_context, plain

BOB_PASSWORD = "bob-secret-1"


@pytest.fixture(scope="module")
def msa(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PigeonServer]:
    srv = PigeonServer(
        tmp_path_factory.mktemp("msa"),
        listeners=["smtp", "submission", "submissions"],
        users={ALICE: ALICE_PASSWORD, "bob@example.com": BOB_PASSWORD},
        # Wrong passwords are tried on purpose below; keep this address from being blocked.
        sections={"auth": {"max_failures_per_ip": 1000, "failure_delay": "0s"}},
    )
    srv.start()
    done = srv.pigeon("user", "alias", "add", ALICE, "sales@example.com")
    assert done.returncode == 0, done.stderr
    yield srv
    srv.stop()


def _message(srv: PigeonServer, address: str, count: int) -> email.message.Message:
    files = delivered(srv, address, count)
    return email.message_from_bytes(files[-1].read_bytes())


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


# ---------------------------------------------------------------- real clients


def test_smtplib_starttls_login(msa: PigeonServer) -> None:
    before = len(msa.maildir_files("carol@example.com"))
    with smtplib.SMTP("127.0.0.1", msa.ports["submission"], timeout=30) as s:
        s.ehlo("client.example.net")
        assert s.has_extn("starttls") and not s.has_extn("auth")
        s.starttls(context=insecure_context())
        s.ehlo("client.example.net")
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert s.login(ALICE, ALICE_PASSWORD) == (235, b"2.7.0 Authentication successful")
        refused = s.sendmail(ALICE, ["carol@example.com"], b"Subject: smtplib\r\n\r\nhello\r\n")
        assert refused == {}
    msg = _message(msa, "carol@example.com", before + 1)
    received = msg.get_all("Received")[0]
    assert " with ESMTPSA (TLSv1.3 " in " ".join(received.split())
    # RFC 6409 §8: the MSA added what the MUA left out.
    assert msg["Message-ID"].endswith("@mx.example.com>")
    assert email.utils.parsedate_to_datetime(msg["Date"]) is not None
    assert msg.get_payload() == "hello\r\n"


def test_smtplib_ssl_login_on_submissions(msa: PigeonServer) -> None:
    before = len(msa.maildir_files("carol@example.com"))
    with smtplib.SMTP_SSL("127.0.0.1", msa.ports["submissions"], timeout=30,
                          context=insecure_context()) as s:
        s.ehlo("client.example.net")
        assert not s.has_extn("starttls")
        assert s.login(ALICE, ALICE_PASSWORD)[0] == 235
        content = (b"Date: Mon, 2 Nov 2026 10:00:00 +0000\r\nMessage-ID: <kept@example.com>\r\n"
                   b"Subject: ssl\r\n\r\nbody\r\n")
        s.sendmail(ALICE, ["carol@example.com"], content)
    msg = _message(msa, "carol@example.com", before + 1)
    assert msg["Message-ID"] == "<kept@example.com>"
    assert msg.get_all("Date") == ["Mon, 2 Nov 2026 10:00:00 +0000"]


def test_smtplib_wrong_password_is_535(msa: PigeonServer) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", msa.ports["submissions"], timeout=30,
                          context=insecure_context()) as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            s.login(ALICE, "wrong")
        assert info.value.smtp_code == 535
        assert info.value.smtp_error == b"5.7.8 Error: authentication failed: bad credentials"


def test_swaks_starttls_auth_plain(msa: PigeonServer) -> None:
    swaks = _need("swaks")
    before = len(msa.maildir_files("bob@example.com"))
    done = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(msa.ports["submission"]), "--tls",
         "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", ALICE_PASSWORD,
         "--from", ALICE, "--to", "bob@example.com", "--header", "Subject: swaks",
         "--body", "via swaks", "--helo", "client.example.net"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<~  235 2.7.0 Authentication successful" in done.stdout
    assert "~> AUTH PLAIN" in done.stdout  # sent inside TLS ("~" lines)
    assert _message(msa, "bob@example.com", before + 1)["Subject"] == "swaks"


def test_swaks_tls_on_connect(msa: PigeonServer) -> None:
    swaks = _need("swaks")
    before = len(msa.maildir_files("bob@example.com"))
    done = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(msa.ports["submissions"]),
         "--tls-on-connect", "--auth", "LOGIN", "--auth-user", ALICE, "--auth-password",
         ALICE_PASSWORD, "--from", ALICE, "--to", "bob@example.com",
         "--header", "Subject: swaks 465"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "235 2.7.0 Authentication successful" in done.stdout
    assert _message(msa, "bob@example.com", before + 1)["Subject"] == "swaks 465"


def test_swaks_wrong_password(msa: PigeonServer) -> None:
    swaks = _need("swaks")
    done = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(msa.ports["submission"]), "--tls",
         "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", "nope",
         "--from", ALICE, "--to", "bob@example.com"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "<~* 535 5.7.8 Error: authentication failed: bad credentials" in done.stdout


def test_openssl_s_client_starttls(msa: PigeonServer) -> None:
    openssl = _need("openssl")
    script = (f"EHLO client.example.net\nAUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}\n"
              "MAIL FROM:<alice@example.com>\nQUIT\n")
    done = subprocess.run(
        [openssl, "s_client", "-starttls", "smtp", "-connect",
         f"127.0.0.1:{msa.ports['submission']}", "-crlf", "-quiet", "-ign_eof"],
        input=script, capture_output=True, text=True, timeout=60,
    )
    replies = [line for line in done.stdout.splitlines() if line[:3].isdigit()]
    assert "235 2.7.0 Authentication successful" in replies
    assert "250 2.1.0 Ok" in replies
    assert replies[-1] == "221 2.0.0 mx.example.com Bye"


@pytest.mark.parametrize("scheme,kind", [("smtp", "submission"), ("smtps", "submissions")])
def test_curl(msa: PigeonServer, tmp_path: Path, scheme: str, kind: str) -> None:
    curl = _need("curl")
    before = len(msa.maildir_files("bob@example.com"))
    message = tmp_path / "msg.txt"
    message.write_bytes(f"From: {ALICE}\r\nSubject: curl {scheme}\r\n\r\nhi\r\n".encode())
    command = [curl, "-sS", "-k", f"{scheme}://127.0.0.1:{msa.ports[kind]}/client.example.net",
               "--mail-from", ALICE, "--mail-rcpt", "bob@example.com",
               "--user", f"{ALICE}:{ALICE_PASSWORD}", "--upload-file", str(message)]
    if scheme == "smtp":
        command.append("--ssl-reqd")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _message(msa, "bob@example.com", before + 1)["Subject"] == f"curl {scheme}"


def test_curl_wrong_password(msa: PigeonServer, tmp_path: Path) -> None:
    curl = _need("curl")
    message = tmp_path / "msg.txt"
    message.write_bytes(b"Subject: x\r\n\r\nhi\r\n")
    done = subprocess.run(
        [curl, "-sS", "-k", "--ssl-reqd", f"smtp://127.0.0.1:{msa.ports['submission']}",
         "--mail-from", ALICE, "--mail-rcpt", "bob@example.com", "--user", f"{ALICE}:bad",
         "--upload-file", str(message)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 67, done.stderr  # CURLE_LOGIN_DENIED


# ---------------------------------------------------------------- listener roles


def test_submission_before_tls(msa: PigeonServer) -> None:
    with Client(msa.ports["submission"]) as c:
        assert c.reply() == "220 mx.example.com ESMTP Pigeon"
        ehlo = c.cmd("EHLO client.example.net")
        assert "250-STARTTLS" in ehlo and "AUTH" not in ehlo
        assert c.cmd(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}") == (
            "538 5.7.11 Encryption required for requested authentication mechanism")
        assert c.cmd("MAIL FROM:<alice@example.com>") == "530 5.7.0 Authentication required"
        assert c.cmd("STARTTLS") == "220 2.0.0 Ready to start TLS"
        c.starttls()
        assert c.cmd("MAIL FROM:<alice@example.com>") == "503 5.5.1 Error: send HELO/EHLO first"
        ehlo = c.cmd("EHLO client.example.net")
        assert "250-AUTH PLAIN LOGIN" in ehlo and "STARTTLS" not in ehlo
        assert c.cmd("MAIL FROM:<alice@example.com>") == "530 5.7.0 Authentication required"
        assert c.cmd("STARTTLS") == "502 5.5.1 Error: STARTTLS not available"


def test_submissions_requires_auth(msa: PigeonServer) -> None:
    with Client(msa.ports["submissions"], implicit_tls=True) as c:
        assert c.reply().startswith("220 ")
        assert c.tls_version in ("TLSv1.2", "TLSv1.3")
        ehlo = c.cmd("EHLO client.example.net")
        assert "250-AUTH PLAIN LOGIN" in ehlo and "STARTTLS" not in ehlo
        assert c.cmd("MAIL FROM:<alice@example.com>") == "530 5.7.0 Authentication required"


def test_plaintext_client_on_submissions_gets_no_greeting(msa: PigeonServer) -> None:
    with Client(msa.ports["submissions"]) as c:
        c.send(b"EHLO client.example.net\r\n")
        assert c.reply() == "<closed>"


def test_smtp_listener_offers_starttls_but_not_auth(msa: PigeonServer) -> None:
    with Client(msa.ports["smtp"]) as c:
        assert c.reply().startswith("220")
        assert "250-STARTTLS" in c.cmd("EHLO client.example.net")
        assert c.cmd("STARTTLS").startswith("220")
        c.starttls()
        assert "AUTH" not in c.cmd("EHLO client.example.net")
        assert c.cmd(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD)}") == (
            "502 5.5.1 Error: authentication not enabled")
        # Inbound mail for local domains needs neither TLS nor AUTH; relaying is refused.
        assert c.cmd("MAIL FROM:<someone@example.org>").startswith("250")
        assert c.cmd("RCPT TO:<bob@example.com>").startswith("250")
        assert c.cmd("RCPT TO:<dave@example.net>") == (
            "554 5.7.1 <dave@example.net>: Relay access denied")


# ---------------------------------------------------------------- AUTH exchanges


def test_auth_login_with_challenges(msa: PigeonServer) -> None:
    with Client(msa.ports["submissions"], implicit_tls=True) as c:
        c.reply()
        c.cmd("EHLO client.example.net")
        assert c.cmd("AUTH LOGIN") == "334 VXNlcm5hbWU6"
        assert c.cmd("YWxpY2VAZXhhbXBsZS5jb20=") == "334 UGFzc3dvcmQ6"
        assert c.cmd("Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5") == "235 2.7.0 Authentication successful"
        assert c.cmd("AUTH LOGIN") == "503 5.5.1 Error: already authenticated"
        assert "AUTH" not in c.cmd("EHLO client.example.net")


def test_auth_errors_keep_the_session(msa: PigeonServer) -> None:
    with Client(msa.ports["submissions"], implicit_tls=True) as c:
        c.reply()
        assert c.cmd("AUTH PLAIN") == "503 5.5.1 Error: send HELO/EHLO first"
        c.cmd("EHLO client.example.net")
        assert c.cmd("AUTH PLAIN") == "334"
        assert c.cmd("*") == "501 5.7.0 Authentication cancelled"
        assert c.cmd("AUTH PLAIN !!!") == "501 5.5.2 Error: invalid base64 data"
        assert c.cmd("AUTH PLAIN =") == "501 5.5.2 Error: malformed authentication response"
        assert c.cmd("AUTH CRAM-MD5") == "504 5.5.4 Error: unrecognized authentication type"
        assert c.cmd(f"AUTH PLAIN {plain(ALICE, ALICE_PASSWORD, authzid='bob@example.com')}"
                     ) == "535 5.7.8 Error: authentication failed: bad credentials"
        assert c.cmd(f"AUTH PLAIN {plain('Alice@Example.COM', ALICE_PASSWORD)}") == (
            "235 2.7.0 Authentication successful")
        assert c.cmd("NOOP") == "250 2.0.0 Ok"


# ---------------------------------------------------------------- sender policy, aliases


def test_sender_must_be_owned(msa: PigeonServer) -> None:
    with Client(msa.ports["submission"]) as c:
        assert c.greet_tls_login().startswith("235")
        assert c.cmd("MAIL FROM:<bob@example.com>") == (
            "553 5.7.1 Sender address rejected: not owned by the authenticated user")
        assert c.cmd("MAIL FROM:<someone@example.org>").startswith("553 5.7.1")
        assert c.cmd("MAIL FROM:<alice+news@example.com>") == "250 2.1.0 Ok"
        assert c.cmd("RSET").startswith("250")
        assert c.cmd("MAIL FROM:<Sales@example.com>") == "250 2.1.0 Ok"  # alias
        assert c.cmd("RSET").startswith("250")
        assert c.cmd("MAIL FROM:<>") == "250 2.1.0 Ok"


def test_alias_receives_for_its_user(msa: PigeonServer) -> None:
    before = len(msa.maildir_files(ALICE))
    with smtplib.SMTP("127.0.0.1", msa.ports["smtp"], timeout=30) as s:
        s.sendmail("someone@example.org", ["sales@example.com"], b"Subject: to alias\r\n\r\nx\r\n")
    assert _message(msa, ALICE, before + 1)["Subject"] == "to alias"


def test_relay_after_auth_is_queued(msa: PigeonServer) -> None:
    with Client(msa.ports["submission"]) as c:
        assert c.greet_tls_login().startswith("235")
        assert c.cmd("MAIL FROM:<alice@example.com> AUTH=<>").startswith("250")
        assert c.cmd("RCPT TO:<dave@example.net>") == "250 2.1.5 Ok"
        assert c.cmd("DATA").startswith("354")
        reply = c.cmd("Subject: out\r\n\r\nto the world\r\n.")
        assert reply.startswith("250 2.0.0 Ok: queued as ")
    queue_id = reply.rsplit(" ", 1)[1]
    wait_for(lambda: f"{queue_id}: to=<dave@example.net> attempt=1" in msa.log())


# ---------------------------------------------------------------- smuggling inside TLS


def test_cr_lf_in_arguments_over_tls_with_pipelining_and_bdat(msa: PigeonServer) -> None:
    with Client(msa.ports["submission"]) as c:
        assert c.greet_tls_login().startswith("235")
        batch = (b"MAIL FROM:<alice@example.com>\r\n"
                 b"RCPT TO:<bob\rx@example.com>\r\n"
                 b"RCPT TO:<carol@example.com> NOTIFY=SUCCESS ORCPT=rfc822;c+0D+0AX-Evil:+20y\r\n"
                 b'RCPT TO:<"bob\rRCPT TO:<dave@example.net>"@example.com>\r\n'
                 b"RCPT TO:<bob@example.com>\r\n"
                 b"BDAT 9 LAST\r\nhi\r\nx\rb\r\n")
        c.send(batch)
        replies = [c.reply() for _ in range(6)]
        assert replies[0] == "250 2.1.0 Ok"
        assert replies[1] == "501 5.5.2 Error: bare <CR> received in command"
        assert replies[2].startswith("501 5.5.4 ")
        assert replies[3] == "501 5.5.2 Error: bare <CR> received in command"
        assert replies[4] == "250 2.1.5 Ok"
        assert replies[5].startswith("550 5.6.0 ")  # bare CR in BDAT content
        assert c.cmd("NOOP") == "250 2.0.0 Ok"  # in step: one reply per command


def test_bdat_submission_gets_the_fixups_across_chunks(msa: PigeonServer) -> None:
    before = len(msa.maildir_files("carol@example.com"))
    with Client(msa.ports["submission"]) as c:
        assert c.greet_tls_login().startswith("235")
        c.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<carol@example.com>\r\n"
               b"BDAT 12\r\nSubject: bdaBDAT 13 LAST\r\nt\r\n\r\nbody\r\n\r\n")
        replies = [c.reply() for _ in range(4)]
        assert replies[:3] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 12 octets received"]
        assert replies[3].startswith("250 2.0.0 Ok: queued as ")
    msg = _message(msa, "carol@example.com", before + 1)
    assert msg["Subject"] == "bdat"
    assert msg["Message-ID"] and msg["Date"]
    assert msg.get_payload() == "body\r\n\r\n"
