"""A private Postfix instance under a temporary directory, for interoperability tests.

The instance has its own configuration, queue and data directories, listens with
``smtpd`` on one loopback address and port (never port 25), logs to a file in its
directory, and either stores mail for ``domain`` into one Maildir (``virtual(8)``) or
relays everything to ``relayhost``. It is started with ``postfix -c DIR start`` and
stopped with ``postfix -c DIR stop``; nothing of the system's Postfix is touched.
Starting needs root (Postfix's master drops privileges to the ``postfix`` user).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def instance_dir() -> Path:
    """A new world-traversable directory under the system temp directory."""
    path = Path(tempfile.mkdtemp(prefix="pigeon-postfix-"))
    path.chmod(0o755)
    return path


def postfix_available() -> bool:
    """True when a private instance can run: Postfix installed, running as root."""
    return (shutil.which("postfix") is not None and os.geteuid() == 0
            and Path("/usr/lib/postfix/sbin/master").exists())


class PostfixInstance:
    """A private Postfix (see the module docstring).

    Args:
        root: an empty directory for the instance; the ``postfix`` user must be able to
            reach it (use :func:`instance_dir`, not pytest's private ``tmp_path``).
        address: the loopback address smtpd listens on.
        port: the smtpd port.
        domain: mail for this domain is stored in :attr:`maildir` (when not relaying).
        relayhost: ``[host]:port`` to relay all mail to, or None.
        concurrency: connections Postfix opens at once to one destination.
    """

    def __init__(self, root: Path, address: str, port: int, *, domain: str = "example.org",
                 relayhost: str | None = None, concurrency: int = 20,
                 hostname: str = "postfix.example.org") -> None:
        self.root = root
        self.address = address
        self.port = port
        self.domain = domain
        self.relayhost = relayhost
        self.concurrency = concurrency
        self.hostname = hostname

    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / "box"

    def write_config(self) -> None:
        owner = pwd.getpwnam("postfix")
        for sub in ("etc", "spool", "data", "mail"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("data", "mail"):
            os.chown(self.root / sub, owner.pw_uid, owner.pw_gid)
        self.root.chmod(0o755)
        master = f"{self.address}:{self.port} inet n - n - - smtpd\n" + _SERVICES
        (self.config_dir / "master.cf").write_text(master, encoding="ascii")
        lines = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.root / 'spool'}",
            f"data_directory = {self.root / 'data'}",
            f"myhostname = {self.hostname}",
            "mydestination =",
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            f"maillog_file = {self.root / 'postfix.log'}",
            f"maillog_file_prefixes = {self.root}",
            "alias_maps =",
            "alias_database =",
            "biff = no",
            "smtpd_relay_restrictions = permit_mynetworks reject_unauth_destination",
            f"default_destination_concurrency_limit = {self.concurrency}",
            f"smtp_destination_concurrency_limit = {self.concurrency}",
            "smtp_tls_security_level = none",
            "smtp_host_lookup = native",
            "disable_dns_lookups = yes",
            # Take mail as it comes: no headers added, no addresses rewritten.
            "local_header_rewrite_clients =",
            "always_add_missing_headers = no",
            "queue_run_delay = 10s",
            "minimal_backoff_time = 10s",
        ]
        if self.relayhost:
            lines += [f"relayhost = {self.relayhost}", f"relay_domains = {self.domain}"]
        else:
            lines += [
                f"virtual_mailbox_domains = {self.domain}",
                f"virtual_mailbox_base = {self.root / 'mail'}",
                "virtual_mailbox_maps = static:box/",
                f"virtual_uid_maps = static:{owner.pw_uid}",
                f"virtual_gid_maps = static:{owner.pw_gid}",
                "virtual_minimum_uid = 1",
            ]
        (self.config_dir / "main.cf").write_text("\n".join(lines) + "\n", encoding="ascii")

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["postfix", "-c", str(self.config_dir), *args],
                              capture_output=True, text=True, timeout=60)

    def start(self, timeout: float = 30.0) -> PostfixInstance:
        """Write the configuration, start the instance, wait until smtpd accepts."""
        self.write_config()
        result = self._postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed ({result.returncode}): "
                               f"{result.stdout}{result.stderr}")
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.address, self.port), timeout=2):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("postfix did not start listening")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the instance (master and all its children)."""
        self._postfix("stop")
        pid_file = self.root / "spool" / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_file.exists():
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def mailbox_files(self) -> list[Path]:
        """Messages stored in the Maildir (``new`` and ``cur``)."""
        files: list[Path] = []
        for sub in ("new", "cur"):
            d = self.maildir / sub
            if d.is_dir():
                files += sorted(d.iterdir())
        return files

    def log(self) -> str:
        path = self.root / "postfix.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
