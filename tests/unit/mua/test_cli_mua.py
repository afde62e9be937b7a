"""The send, sendmail and bulk commands: option errors, dry runs, the local queue."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pigeon.cli.main import cli
from pigeon.cli.sendmail import run_sendmail


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PIGEON_CONFIG", raising=False)
    monkeypatch.delenv("PIGEON_PASSWORD", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def invoke(*args: str, input: bytes | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), input=input)


@pytest.mark.parametrize(("args", "message"), [
    (["send", "--to", "b@example.com"], "--from is required"),
    (["send", "--from", "a@example.com", "--to", "b@example.com"], "say where to send"),
    (["send", "--from", "a@example.com", "--to", "b@example.com", "--direct", "--queue"],
     "exclude each other"),
    (["send", "--from", "a@example.com"], "no recipients"),
    (["send", "--from", "nope", "--to", "b@example.com", "--dry-run"], "--from"),
    (["send", "--from", "a@example.com", "--to", "b@", "--dry-run"], "--to"),
    (["send", "--from", "a@example.com", "--to", "b@example.com", "--header", "Bcc: x",
      "--dry-run"], "use the option"),
    (["send", "--from", "a@example.com", "--to", "b@example.com", "--body", "x",
      "--body-file", "-"], "not both"),
    (["send", "--from", "a@example.com", "--to", "b@example.com", "--server", "h:99999"],
     "port"),
    (["send", "--from", "a@example.com", "--to", "b@example.com", "--server", "h",
      "--user", "u"], "no password"),
    (["send", "--profile", "x", "--to", "b@example.com"], "no profile 'x' (profiles: none)"),
])
def test_send_usage_errors(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_send_dry_run_prints_envelope_and_message() -> None:
    result = invoke("send", "--dry-run", "--from", "Alice <alice@example.com>",
                    "--to", "bob@example.com", "--bcc", "carol@example.com",
                    "--subject", "Grüße", "--body", "hi")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:3] == ["MAIL FROM:<alice@example.com>", "RCPT TO:<bob@example.com>",
                         "RCPT TO:<carol@example.com>"]
    assert "Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=" in lines
    assert not any("carol" in line for line in lines[4:])


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "pigeon.toml"
    path.write_text('[server]\nhostname = "mx.example.com"\ndata_dir = "data"\n'
                    '[domains]\nlocal = ["example.com"]\n'
                    '[[mailbox]]\naddress = "bob@example.com"\n', encoding="utf-8")
    return path


def test_send_queue_and_sendmail_into_the_local_queue(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = invoke("send", "--queue", "-c", str(config), "--from", "a@example.com",
                    "--to", "bob@example.com", "--body", "x")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("sent to 1 recipient (queued as ")
    result = invoke("send", "--queue", "-c", str(config), "--from", "a@example.com",
                    "--to", "nobody@example.com", "--body", "x")
    assert result.exit_code == 67
    assert "nobody@example.com: FAILED: 550 5.1.1" in result.output
    assert run_sendmail(["-C", str(config), "-t", "-i"],
                        stdin=b"To: bob@example.com\nSubject: s\n\nx\n") == 0
    assert run_sendmail(["-C", str(config), "nobody@example.com"], stdin=b"x\n") == 67
    assert run_sendmail(["-C", str(tmp_path / "missing.toml"), "bob@example.com"],
                        stdin=b"x\n") == 78
    assert run_sendmail(["-bs"], stdin=b"") == 64
    queue = sorted((tmp_path / "data" / "spool" / "queue").iterdir())
    assert len(queue) == 2


def test_pigeon_sendmail_passes_options_through(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = invoke("sendmail", "-C", str(config), "-oi", "-f", "<>", "bob@example.com",
                    input=b"Subject: bounce-like\n\n.\nbody\n")
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "data" / "spool" / "queue").iterdir()
    assert path.read_bytes().endswith(b"\r\n\r\n.\r\nbody\r\n")


def test_bulk_errors_and_dry_run(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("email,name\nbob@example.com,Bob\nbad,Bad\n")
    (tmp_path / "noemail.csv").write_text("name\nBob\n")
    (tmp_path / "t.j2").write_text("Hello {{ name }}\n")
    (tmp_path / "broken.j2").write_text("Hello {{ nosuch }}\n")
    base = ["bulk", "--recipients", str(tmp_path / "list.csv"), "--from", "n@example.com",
            "--subject", "Hi {{ name }}", "--text", str(tmp_path / "t.j2")]
    result = invoke(*base, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "row 2: 'bad' skipped (invalid" in result.output
    assert "RCPT TO:<bob@example.com>" in result.output and "Subject: Hi Bob" in result.output
    result = invoke(*base)
    assert result.exit_code == 2 and "say where to send" in result.output
    result = invoke("bulk", "--recipients", str(tmp_path / "noemail.csv"), "--from",
                    "n@example.com", "--text", str(tmp_path / "t.j2"), "--dry-run")
    assert result.exit_code == 2 and "'email' column" in result.output
    result = invoke("bulk", "--recipients", str(tmp_path / "list.csv"), "--from",
                    "n@example.com", "--text", str(tmp_path / "broken.j2"), "--dry-run")
    assert result.exit_code == 2 and "row 1: text template: 'nosuch' is undefined" in \
        result.output
    result = invoke("bulk", "--recipients", str(tmp_path / "list.csv"),
                    "--text", str(tmp_path / "t.j2"))
    assert result.exit_code == 2 and "--from is required" in result.output
