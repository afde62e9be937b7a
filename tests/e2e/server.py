"""Run a real ``pigeon serve`` process on loopback for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_LISTEN_RE = re.compile(r"listening\s+(\S+)\s+(\S+):(\d+)")

DEFAULT_MAILBOXES = [
    "alice@example.com",
    "bob@example.com",
    "carol@example.com",
    "postmaster@example.com",
]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


@dataclass
class PigeonServer:
    """A ``pigeon serve`` subprocess with its own data directory and config file.

    Args:
        root: a fresh directory for the config and data.
        sections: extra config as ``{"limits": {"max_message_size": 10240}, ...}``.
        mailboxes: mailbox addresses to configure.
        listeners: listener kinds to bind on 127.0.0.1 port 0.
        users: ``{address: password}``: users (mailboxes with a password) created in
            the account store before the server starts.
        listen_host: the address every listener binds (e.g. 127.0.0.2 for a second host).
        listen_ports: fixed ports by listener kind (others get port 0).
    """

    root: Path
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    mailboxes: list[str] = field(default_factory=lambda: list(DEFAULT_MAILBOXES))
    listeners: list[str] = field(default_factory=lambda: ["smtp"])
    hostname: str = "mx.example.com"
    local_domains: list[str] = field(default_factory=lambda: ["example.com"])
    proc: subprocess.Popen[str] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)
    users: dict[str, str] = field(default_factory=dict)
    listen_host: str = "127.0.0.1"
    listen_ports: dict[str, int] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "pigeon.toml"

    @property
    def port(self) -> int:
        return self.ports["smtp"]

    def write_config(self) -> Path:
        lines = [
            "[server]",
            f"hostname = {_toml_value(self.hostname)}",
            f"data_dir = {_toml_value(str(self.data_dir))}",
            "",
            "[domains]",
            f"local = {_toml_value(self.local_domains)}",
            "",
        ]
        for kind in self.listeners:
            address = f"{self.listen_host}:{self.listen_ports.get(kind, 0)}"
            lines += ["[[listener]]", f'kind = "{kind}"', f'address = "{address}"', ""]
        for address in self.mailboxes:
            lines += ["[[mailbox]]", f"address = {_toml_value(address)}", ""]
        for name, values in self.sections.items():
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
            lines.append("")
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(lines), encoding="utf-8")
        return self.config_path

    def create_users(self) -> None:
        """Create :attr:`users` in the account store (the server need not run)."""
        if not self.users:
            return
        from pigeon.auth.passwords import hash_password
        from pigeon.storage.sqlite.accounts import AccountStore

        store = AccountStore(self.data_dir / "accounts.db")
        try:
            for address, password in self.users.items():
                if store.get_mailbox(address) is None:
                    store.add_mailbox(address)
                store.set_password_hash(address, hash_password(password))
        finally:
            store.close()

    def start(self, timeout: float = 30.0) -> PigeonServer:
        """Start the server and wait until it prints its listeners."""
        self.write_config()
        self.create_users()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.ports = {}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pigeon", "serve", "-c", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=open(self.root / "server.log", "a", encoding="utf-8"),  # noqa: SIM115
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"pigeon serve exited early:\n{self.log()}")
            self.output.append(line)
            m = _LISTEN_RE.search(line)
            if m:
                self.ports[m.group(1)] = int(m.group(3))
            if "local domains:" in line:
                return self
        raise RuntimeError(f"pigeon serve did not start:\n{self.log()}")

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Stop the server; return its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        """SIGKILL the server (crash tests)."""
        self.stop(signal.SIGKILL)

    def pigeon(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a ``pigeon`` CLI command against this server's config."""
        return subprocess.run(
            [sys.executable, "-m", "pigeon", *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
        )

    def maildir_files(self, address: str) -> list[Path]:
        """Files in the ``new`` and ``cur`` folders of a mailbox, sorted by name."""
        local, _, domain = address.partition("@")
        base = self.data_dir / "mail" / domain / local
        files: list[Path] = []
        for sub in ("new", "cur"):
            d = base / sub
            if d.is_dir():
                files += d.iterdir()
        # Oldest first. Maildir names do not sort by time (the microsecond field is not
        # zero-padded), so order by modification time, then name.
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def rss_bytes(self) -> int:
        """Resident memory of the server process, from /proc."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")
