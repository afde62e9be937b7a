"""Tests for the ``pigeon`` command frame: --version, ``config example|check``, ``serve``."""

from __future__ import annotations

import importlib.metadata
import logging
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from pigeon import config as config_module
from pigeon.cli.main import cli, main
from pigeon.config import Settings, example_config


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No config from the environment, a fixed machine name, and the root logger restored."""
    monkeypatch.delenv("PIGEON_CONFIG", raising=False)
    monkeypatch.setattr(config_module.socket, "getfqdn", lambda: "mx.example.net")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"pigeon, version {importlib.metadata.version('pigeon-mail')}\n"


def test_main_entry_point(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["pigeon", "--version"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0
    assert capsys.readouterr().out == (
        f"pigeon, version {importlib.metadata.version('pigeon-mail')}\n"
    )


def test_help_lists_commands(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    commands = result.stdout.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in commands] == [
        "bulk", "config", "domain", "mailbox", "queue", "send", "sendmail", "serve", "user"]


def test_config_example(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["config", "example"])
    assert result.exit_code == 0
    assert result.stdout == example_config()
    assert result.stderr == ""


def test_config_check_defaults(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["config", "check"])
    assert result.exit_code == 0
    assert result.stdout == (
        "config ok: (built-in defaults)\n"
        "hostname: mx.example.net\n"
        "local domains: mx.example.net, localhost\n"
        "data dir: pigeon-data\n"
        "listeners: 4\n"
        "  smtp         127.0.0.1:1025\n"
        "  submission   127.0.0.1:1587\n"
        "  submissions  127.0.0.1:1465\n"
        "  pop3         127.0.0.1:1110\n"
    )


def test_config_check_example_file(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path / "pigeon.toml", example_config())
    result = runner.invoke(cli, ["config", "check", "-c", str(path)])
    assert result.exit_code == 0
    assert result.stdout == (
        f"config ok: {path}\n"
        "hostname: mail.example.org\n"
        "local domains: example.org, mail.example.org\n"
        "data dir: /var/lib/pigeon\n"
        "listeners: 6\n"
        "  smtp         0.0.0.0:25\n"
        "  submission   0.0.0.0:587\n"
        "  submission   0.0.0.0:2525\n"
        "  submissions  0.0.0.0:465\n"
        "  pop3         0.0.0.0:110\n"
        "  pop3s        0.0.0.0:995\n"
    )


def test_config_check_from_env_var(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path / "env.toml", '[server]\nhostname = "env.example"\n[[listener]]\n'
                 'kind = "pop3s"\naddress = "[::1]:995"\n')
    result = runner.invoke(cli, ["config", "check"], env={"PIGEON_CONFIG": str(path)})
    assert result.exit_code == 0
    assert result.stdout == (
        f"config ok: {path}\n"
        "hostname: env.example\n"
        "local domains: env.example, localhost\n"
        "data dir: pigeon-data\n"
        "listeners: 1\n"
        "  pop3s  [::1]:995\n"
    )


def test_config_check_bad_file(runner: CliRunner, tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", '[limits]\nmax_recepients = 5\nmax_hops = "x"\n')
    result = runner.invoke(cli, ["config", "check", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"config error in {path}: limits.max_hops: Input should be a valid integer (got \"x\")\n"
        f"config error in {path}: unknown key 'limits.max_recepients' "
        "(did you mean 'limits.max_recipients'?)\n"
    )


def test_config_check_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    result = runner.invoke(cli, ["config", "check", "-c", str(path)])
    assert result.exit_code == 2
    assert result.stderr == f"config error in {path}: file not found\n"


def _fake_app(monkeypatch: pytest.MonkeyPatch, status: int) -> list[Settings]:
    calls: list[Settings] = []

    def run_server(settings: Settings) -> int:
        calls.append(settings)
        return status

    module = types.ModuleType("pigeon.app")
    module.run_server = run_server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pigeon.app", module)
    return calls


def test_serve_runs_the_server_with_the_settings(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_app(monkeypatch, status=3)
    path = write(tmp_path / "p.toml", '[log]\nlevel = "WARNING"\n')
    result = runner.invoke(cli, ["serve", "-c", str(path)])
    assert result.exit_code == 3
    assert len(calls) == 1
    assert calls[0].log.level == "WARNING"
    assert logging.getLogger().level == logging.WARNING


def test_serve_bad_config_exits_2_without_starting(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fake_app(monkeypatch, status=0)
    path = write(tmp_path / "p.toml", "[smtp]\nvrfy = true\n")
    result = runner.invoke(cli, ["serve", "-c", str(path)])
    assert result.exit_code == 2
    assert result.stderr == (
        f"config error in {path}: smtp.vrfy: Input should be 'ambiguous' or 'disabled' "
        "(got true)\n"
    )
    assert calls == []
